"""Detect -> align on real photos, checked by geometry against hand-placed landmarks.

No trained face model exists offline, so embeddings of a random-weight network say little
about identity. What the detector must deliver to the embedder is an aligned crop: the crop
made from its landmarks must put the face's features where the crop made from hand-placed
landmarks puts them. Both alignments are estimated here with scikit-image (not facevib's
Umeyama) onto the template as insightface publishes it; the bound is the usual landmark
failure criterion, not a measurement: within 10% of the template's inter-ocular distance
(3.5 px of 112) at every hand-placed point.
"""

from __future__ import annotations

import numpy as np
import pytest
from detect_support import ASTRONAUT_POINTS, GRACE_POINTS, astronaut, grace_hopper
from skimage.transform import SimilarityTransform

from facevib.align import estimate_norm
from facevib.detect import load_detector

# insightface.utils.face_align.arcface_dst, 112 x 112.
INSIGHTFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
INTEROCULAR = float(np.linalg.norm(INSIGHTFACE_TEMPLATE[1] - INSIGHTFACE_TEMPLATE[0]))


@pytest.mark.parametrize(("photo", "points"), [(astronaut, ASTRONAUT_POINTS), (grace_hopper, GRACE_POINTS)])
def test_detected_landmarks_align_hand_placed_points_onto_the_template(photo, points):
    faces = load_detector().detect(photo())
    assert faces, "no face found"
    detected = np.asarray(faces[0].landmarks, dtype=np.float64)
    reference = SimilarityTransform.from_estimate(detected, INSIGHTFACE_TEMPLATE)
    by_hand = SimilarityTransform.from_estimate(points, INSIGHTFACE_TEMPLATE)
    error = np.linalg.norm(reference(points) - by_hand(points), axis=1)  # in crop pixels
    assert error.max() < 0.1 * INTEROCULAR, error

    # facevib's own alignment matrix for the detected points is the same transform.
    matrix = estimate_norm(detected.astype(np.float32))
    np.testing.assert_allclose(matrix, reference.params[:2], rtol=0, atol=1e-3 * np.abs(reference.params[:2]).max())
