"""facevib.align against an independent reference: skimage's SimilarityTransform + cv2.warpAffine."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from skimage.transform import SimilarityTransform

from facevib.align import (
    ARCFACE_TEMPLATE,
    ARCFACE_TEMPLATE_3,
    arcface_template,
    estimate_norm,
    estimate_norm_batch,
    norm_crop,
    norm_crop_batch,
    three_point_landmarks,
)

# Located by hand on skimage.data.astronaut() (512x512): pupils, nose tip, mouth corners.
ASTRONAUT_LANDMARKS = np.array(
    [[203.0, 101.0], [246.5, 102.0], [225.0, 127.0], [203.5, 143.0], [245.0, 141.0]], dtype=np.float32
)


def _skimage_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    if hasattr(SimilarityTransform, "from_estimate"):  # skimage >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
    else:
        tform = SimilarityTransform()
        assert tform.estimate(src, dst)
    return tform.params[:2]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def test_template_is_the_arcface_one():
    assert ARCFACE_TEMPLATE.shape == (5, 2) and ARCFACE_TEMPLATE.dtype == np.float32
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963])
    np.testing.assert_allclose(ARCFACE_TEMPLATE[4], [70.7299, 92.2041])
    np.testing.assert_allclose(ARCFACE_TEMPLATE_3[2], (ARCFACE_TEMPLATE[3] + ARCFACE_TEMPLATE[4]) / 2)


def test_template_sizes_follow_arcface():
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE * 2, rtol=1e-6)
    # 128: the 112 template with an 8-pixel margin left and right (arcface_torch's convention).
    expected = ARCFACE_TEMPLATE.astype(np.float64) + np.array([8.0, 0.0])
    np.testing.assert_allclose(arcface_template(128), expected, rtol=1e-6)
    np.testing.assert_allclose(arcface_template(256), expected * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="100"):
        arcface_template(100)


def test_norm_crop_matches_skimage_reference_on_a_real_photo(astronaut):
    ours = norm_crop(astronaut, ASTRONAUT_LANDMARKS)
    matrix = _skimage_matrix(ASTRONAUT_LANDMARKS, ARCFACE_TEMPLATE)
    reference = cv2.warpAffine(astronaut, matrix, (112, 112), borderValue=0.0)
    assert ours.shape == (112, 112, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1
    # A real face crop, not a black or constant image.
    assert ours.std() > 20


@pytest.mark.parametrize("size", [112, 224, 128])
def test_estimate_norm_matches_skimage_for_other_sizes(astronaut, size):
    matrix = estimate_norm(ASTRONAUT_LANDMARKS, size)
    reference = _skimage_matrix(ASTRONAUT_LANDMARKS, arcface_template(size))
    np.testing.assert_allclose(matrix, reference, atol=1e-4)
    ours = norm_crop(astronaut, ASTRONAUT_LANDMARKS, size=size)
    assert ours.shape == (size, size, 3)


def test_exact_for_a_synthetic_similarity():
    # Landmarks made by a known similarity of the template: the estimate must undo it exactly.
    angle, scale, shift = np.radians(23.0), 2.7, np.array([140.0, 61.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE.astype(np.float64) @ rot.T * scale + shift
    matrix = estimate_norm(landmarks)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE, atol=1e-4)
    # The matrix is the inverse similarity: rotation by -angle, scale 1/scale.
    np.testing.assert_allclose(np.hypot(*matrix[0, :2]), 1.0 / scale, rtol=1e-6)
    np.testing.assert_allclose(np.arctan2(matrix[1, 0], matrix[0, 0]), -angle, atol=1e-6)


def test_least_squares_on_noisy_landmarks_matches_skimage():
    rng = np.random.default_rng(0)
    for _ in range(20):
        landmarks = ARCFACE_TEMPLATE * rng.uniform(0.5, 3) + rng.normal(0, 4, (5, 2)) + rng.uniform(0, 300, 2)
        np.testing.assert_allclose(estimate_norm(landmarks), _skimage_matrix(landmarks, ARCFACE_TEMPLATE), atol=1e-4)


def test_three_point_variant_uses_eyes_and_mouth_centre(astronaut):
    three = three_point_landmarks(ASTRONAUT_LANDMARKS)
    np.testing.assert_allclose(three[2], (ASTRONAUT_LANDMARKS[3] + ASTRONAUT_LANDMARKS[4]) / 2)
    matrix = estimate_norm(three)
    np.testing.assert_allclose(matrix, _skimage_matrix(three, ARCFACE_TEMPLATE_3), atol=1e-4)
    # On these landmarks the 3- and 5-point crops are close but not the same transform.
    assert not np.allclose(matrix, estimate_norm(ASTRONAUT_LANDMARKS))
    diff = np.abs(norm_crop(astronaut, three).astype(int) - norm_crop(astronaut, ASTRONAUT_LANDMARKS).astype(int))
    assert diff.mean() < 20


def test_border_is_zero():
    image = np.full((60, 60, 3), 200, np.uint8)
    # A small face at the top-left corner: the crop's top-left falls outside the image
    # (crop pixel (0, 0) is image pixel (-5, -5)), its bottom-right inside.
    landmarks = ARCFACE_TEMPLATE * 0.2 + np.array([-5.0, -5.0])
    crop = norm_crop(image, landmarks)
    assert (crop[:20, :20] == 0).all() and (crop[-20:, -20:] == 200).all()


def test_batch_equals_single(astronaut):
    rng = np.random.default_rng(1)
    images = [astronaut, astronaut[::2, ::2].copy(), np.ascontiguousarray(astronaut[:, ::-1])]
    landmarks = np.stack(
        [
            ASTRONAUT_LANDMARKS,
            ASTRONAUT_LANDMARKS / 2 + rng.normal(0, 0.5, (5, 2)),
            np.column_stack([511 - ASTRONAUT_LANDMARKS[:, 0], ASTRONAUT_LANDMARKS[:, 1]])[[1, 0, 2, 4, 3]],
        ]
    )
    batch = norm_crop_batch(images, landmarks)
    assert batch.shape == (3, 112, 112, 3)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], norm_crop(images[i], landmarks[i]))
    np.testing.assert_allclose(estimate_norm_batch(landmarks)[1], estimate_norm(landmarks[1]))
    out = np.zeros((3, 112, 112, 3), np.uint8)
    assert norm_crop_batch(images, landmarks, out=out) is out and np.array_equal(out, batch)


@pytest.mark.parametrize("shape", [(4, 2), (5, 3), (10,), (2, 5, 2)])
def test_bad_landmark_shapes_raise_naming_the_shape(shape):
    with pytest.raises(ValueError, match=r"\(" + ", ".join(str(s) for s in shape)):
        estimate_norm(np.zeros(shape))


def test_bad_inputs_raise():
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="coincide"):
        estimate_norm(np.full((5, 2), 7.0))
    with pytest.raises(ValueError, match="NaN"):
        estimate_norm(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match=r"\(50, 50, 2\)"):
        norm_crop(np.zeros((50, 50, 2), np.uint8), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="2 images but landmarks for 1"):
        norm_crop_batch([image, image], ARCFACE_TEMPLATE[None])
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        norm_crop_batch([image], ARCFACE_TEMPLATE)
