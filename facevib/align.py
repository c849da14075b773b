"""Face alignment: similarity transform of 5 (or 3) landmarks onto the ArcFace template.

The convention is insightface's (``utils/face_align.py``): the least-squares similarity
transform of Umeyama (1991) maps the detected landmarks onto a fixed template, and
``cv2.warpAffine`` with bilinear interpolation and border value 0 produces the crop. The
template and its size rule are the face contract's (:func:`facevib.contract.arcface_template`).

The three-point variant (cellVIB paper, §4.4: crops "warped from eye and mouth
landmarks") uses both eye centres and the midpoint of the mouth corners; it is selected
whenever ``landmarks`` has 3 rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from facevib import contract

__all__ = [
    "ARCFACE_TEMPLATE",
    "ARCFACE_TEMPLATE_3",
    "arcface_template",
    "three_point_landmarks",
    "estimate_norm",
    "estimate_norm_batch",
    "norm_crop",
    "norm_crop_batch",
]

# The contract's 112x112 template as a read-only float32 array (for callers that add offsets).
ARCFACE_TEMPLATE = np.array(contract.ARCFACE_TEMPLATE_112, dtype=np.float32)
ARCFACE_TEMPLATE.flags.writeable = False


def three_point_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Reduce 5-point landmarks ``(..., 5, 2)`` to (left eye, right eye, mouth-corner midpoint)."""
    points = np.asarray(landmarks)
    if points.ndim < 2 or points.shape[-2:] != (5, 2):
        raise ValueError(f"three_point_landmarks expects landmarks of shape (..., 5, 2), got {points.shape}")
    mouth = 0.5 * (points[..., 3, :] + points[..., 4, :])
    return np.stack([points[..., 0, :], points[..., 1, :], mouth], axis=-2)


ARCFACE_TEMPLATE_3 = three_point_landmarks(ARCFACE_TEMPLATE).astype(np.float32)
ARCFACE_TEMPLATE_3.flags.writeable = False


def arcface_template(size: int = 112, num_points: int = 5) -> np.ndarray:
    """The template for a ``size`` x ``size`` crop with 5 or 3 points, as float64 ``(num_points, 2)``.

    Raises ``ValueError`` for sizes that are neither a multiple of 112 nor of 128 (the
    only sizes the arcface convention defines) and for point counts other than 3 or 5.
    """
    if num_points not in (3, 5):
        raise ValueError(f"num_points must be 3 or 5, got {num_points}")
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    points = np.array(contract.arcface_template(int(size)), dtype=np.float64)
    return points if num_points == 5 else three_point_landmarks(points)


def _check_landmarks(landmarks: np.ndarray, batched: bool) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    want = "(N, 5, 2) or (N, 3, 2)" if batched else "(5, 2) or (3, 2)"
    ndim = 3 if batched else 2
    if points.ndim != ndim or points.shape[-1] != 2 or points.shape[-2] not in (3, 5):
        raise ValueError(f"landmarks must have shape {want}, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or infinite values")
    return points


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms mapping each ``src[i]`` onto ``dst``.

    ``src`` is ``(N, K, 2)``, ``dst`` is ``(K, 2)``; returns ``(N, 2, 3)`` matrices. This is
    Umeyama's closed form (IEEE TPAMI 13(4), 1991, eqs. 40-42), batched over N with numpy's
    stacked SVD.
    """
    src_mean = src.mean(axis=1, keepdims=True)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    count = src.shape[1]
    # Cross-covariance dst^T src / K (eq. 38) and the source variance (eq. 36).
    cov = np.einsum("ki,nkj->nij", dst_c, src_c) / count
    var_src = (src_c**2).sum(axis=(1, 2)) / count
    degenerate = var_src <= 1e-12 * max(1.0, float(np.abs(dst).max()))
    if degenerate.any():
        bad = int(np.flatnonzero(degenerate)[0])
        raise ValueError(f"landmarks of face {bad} all coincide; no similarity transform maps them onto the template")
    u, sing, vt = np.linalg.svd(cov)
    # Reflection guard (eq. 39): flip the last axis when the best orthogonal map is a reflection.
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sign[sign == 0] = 1.0
    d = np.ones((src.shape[0], 2))
    d[:, 1] = sign
    rot = np.einsum("nij,nj,njk->nik", u, d, vt)
    scale = (sing * d).sum(axis=1) / var_src
    trans = dst_mean - scale[:, None] * np.einsum("nij,nj->ni", rot, src_mean[:, 0, :])
    out = np.empty((src.shape[0], 2, 3))
    out[:, :, :2] = scale[:, None, None] * rot
    out[:, :, 2] = trans
    return out


def estimate_norm_batch(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Similarity transforms for many faces at once: ``(N, 5|3, 2)`` -> ``(N, 2, 3)`` float64."""
    points = _check_landmarks(landmarks, batched=True)
    return _umeyama(points, arcface_template(size, points.shape[1]))


def estimate_norm(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The ``(2, 3)`` affine matrix mapping image coordinates onto the aligned crop.

    ``landmarks`` is ``(5, 2)`` (ArcFace order: left eye, right eye, nose, left and right
    mouth corners) or ``(3, 2)`` (left eye, right eye, mouth-corner midpoint), in pixels
    (x, y). The result is the least-squares similarity transform onto the template for a
    ``size`` x ``size`` crop, usable directly with ``cv2.warpAffine``.
    """
    points = _check_landmarks(landmarks, batched=False)
    return _umeyama(points[None], arcface_template(size, points.shape[0]))[0]


def _check_image(image: np.ndarray, where: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: image must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{where}: image must have shape (H, W) or (H, W, 1|3|4), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}: image is empty, shape {image.shape}")
    return image


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    # Bilinear interpolation and a constant 0 border are the insightface convention: crops
    # of faces near the image edge get black borders, never replicated pixels.
    out = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        out = out[:, :, None]
    return out


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` so that ``landmarks`` land on the ArcFace template; ``(size, size, C)``.

    Channel order is preserved (RGB in, RGB out). Pixels outside the source image are 0.
    """
    image = _check_image(image, "norm_crop")
    return _warp(image, estimate_norm(landmarks, size), size)


def norm_crop_batch(
    images: Sequence[np.ndarray] | np.ndarray,
    landmarks: np.ndarray,
    size: int = 112,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Align many faces: ``images`` (a list of HxWxC arrays of any sizes, or one ``(N, H, W, C)``
    array) with ``landmarks`` ``(N, 5|3, 2)`` -> ``(N, size, size, C)``.

    The transforms are estimated in one vectorised Umeyama solve. ``out``, when given, is a
    preallocated ``(N, size, size, C)`` array of the images' dtype that is filled and returned
    (so a loader can warp straight into its batch buffer).
    """
    points = _check_landmarks(landmarks, batched=True)
    count = len(images)
    if points.shape[0] != count:
        raise ValueError(f"norm_crop_batch: {count} images but landmarks for {points.shape[0]} faces")
    matrices = _umeyama(points, arcface_template(size, points.shape[1]))
    if count == 0:
        if out is not None:
            return out
        raise ValueError("norm_crop_batch: no images (pass `out` to get an empty batch back)")
    first = _check_image(images[0], "norm_crop_batch image 0")
    channels = 1 if first.ndim == 2 else first.shape[2]
    shape = (count, size, size, channels) if first.ndim == 3 else (count, size, size)
    if out is None:
        out = np.empty(shape, dtype=first.dtype)
    elif out.shape != shape or out.dtype != first.dtype:
        raise ValueError(f"norm_crop_batch: out has shape {out.shape} {out.dtype}, expected {shape} {first.dtype}")
    for i in range(count):
        image = _check_image(images[i], f"norm_crop_batch image {i}")
        if image.ndim != first.ndim or image.shape[2:] != first.shape[2:] or image.dtype != first.dtype:
            raise ValueError(
                f"norm_crop_batch: image {i} has shape {image.shape} {image.dtype}, "
                f"but image 0 has {first.shape} {first.dtype}; all images need the same channels and dtype"
            )
        out[i] = _warp(image, matrices[i], size)
    return out
