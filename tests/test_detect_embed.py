"""Detect -> align -> embed against the landmarks path on the same photos.

The model is the server tests' tiny iResNet (random weights: no trained face model exists
offline), so the cosines measure how much the detector's landmarks change the network input
compared with hand-checked ones, not identity accuracy. Measured: astronaut 0.978, Grace Hopper
0.945, while the two different people score 0.85 on the same model.
"""

from __future__ import annotations

import numpy as np
from detect_support import ASTRONAUT_POINTS, GRACE_POINTS, astronaut, grace_hopper
from serve_support import serve_models, torch_embeddings, unit

from facevib.align import norm_crop
from facevib.detect import load_detector


def test_detected_landmarks_embed_like_hand_checked_ones():
    detector = load_detector()
    crops = []
    for photo, points in ((astronaut(), ASTRONAUT_POINTS), (grace_hopper(), GRACE_POINTS)):
        face = detector.detect(photo)[0]
        crops += [norm_crop(photo, face.landmarks), norm_crop(photo, points)]
    emb = unit(torch_embeddings(serve_models().model, np.stack(crops)))
    same_astronaut, same_grace = float(emb[0] @ emb[1]), float(emb[2] @ emb[3])
    different = float(emb[1] @ emb[3])
    assert same_astronaut > 0.95 and same_grace > 0.92, (same_astronaut, same_grace)
    assert min(same_astronaut, same_grace) > different + 0.05, (same_astronaut, same_grace, different)
