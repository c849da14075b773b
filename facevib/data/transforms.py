"""The training transform for aligned face crops (decoding itself is in ``imagecodec``).

The network input is the face contract's (:mod:`facevib.contract`): RGB, ``(x - MEAN) / STD``
with 127.5 for both (= ``x / 127.5 - 1``), NCHW float32. OpenCV decodes to BGR; rather than converting to RGB, flipping, transposing
and scaling in four passes, the per-sample fast path hands the BGR image to
``cv2.dnn.blobFromImage``, which swaps channels, subtracts the mean, scales and writes
CHW float32 in one pass, about a third of the time of the four separate passes or of writing
into a preallocated tensor (times in ``docs/results.md``, "per-sample training transform").

In a DataLoader worker, collating float32 samples into shared memory costs several times
more CPU than collating uint8 samples (a quarter of the bytes). Loaders that
can normalise on the GPU should take ``normalize=False`` samples and ``normalize_images``
the batch there. For host-side batches of decoded images, ``images_to_tensor`` writes into
one (optionally preallocated) tensor with torch, which uses all intra-op threads.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from facevib.contract import MEAN, STD
from facevib.data.imagecodec import IMAGE_SIZE, check_image_size, decode_bgr, decode_rgb

__all__ = [
    "IMAGE_SIZE",
    "FaceTransform",
    "bgr_to_tensor",
    "bgr_to_uint8_tensor",
    "check_image_size",
    "decode_bgr",
    "decode_rgb",
    "draw_flip",
    "images_to_tensor",
    "normalize_images",
]

# The contract uses one mean and one std for all channels, so a scalar scale and shift do.
_SCALE = 1.0 / STD[0]
_SHIFT = MEAN[0] / STD[0]


def bgr_to_tensor(image: np.ndarray, *, flip: bool = False) -> torch.Tensor:
    """``HxWx3`` uint8 BGR -> ``(3, H, W)`` float32 RGB tensor, ``x / 127.5 - 1``; ``flip`` mirrors it.

    One ``blobFromImage`` call does the channel swap, normalisation and HWC->CHW transpose.
    """
    if flip:
        image = cv2.flip(image, 1)
    blob = cv2.dnn.blobFromImage(image, _SCALE, None, MEAN, swapRB=True, crop=False)
    return torch.from_numpy(blob[0])


def bgr_to_uint8_tensor(image: np.ndarray, *, flip: bool = False) -> torch.Tensor:
    """``HxWx3`` uint8 BGR -> ``(3, H, W)`` uint8 RGB tensor (mirrored when ``flip``), not normalised.

    A quarter of the float32 sample's bytes to collate and pass between DataLoader
    processes; ``normalize_images`` finishes the job on the batch, on the GPU if there.
    One strided numpy copy does the channel reversal, flip and transpose.
    """
    chw = image.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(chw[::-1, :, ::-1] if flip else chw[::-1]))


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` uint8 RGB tensor (any device) -> float32 ``(x / 255 - 0.5) / 0.5``."""
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be a uint8 tensor, got {images.dtype}")
    return images.float().mul_(_SCALE).sub_(_SHIFT)


def images_to_tensor(images: np.ndarray, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, H, W)`` float32, ``(x / 255 - 0.5) / 0.5``.

    ``out`` may be a preallocated float32 tensor of the result's shape (e.g. pinned memory
    reused across batches); it is written in place and returned.
    """
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be an (N, H, W, 3) uint8 array, got {images.dtype} {tuple(images.shape)}")
    n, h, w, _ = images.shape
    if out is None:
        out = torch.empty((n, 3, h, w), dtype=torch.float32)
    elif out.shape != (n, 3, h, w) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 of shape {(n, 3, h, w)}, got {out.dtype} {tuple(out.shape)}")
    out.copy_(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    return out.mul_(_SCALE).sub_(_SHIFT)


def draw_flip(p: float = 0.5, generator: torch.Generator | None = None) -> bool:
    """True with probability ``p``, drawn from ``generator`` or torch's default generator.

    The default generator is what DataLoader seeds differently in every worker (from the
    loader's own generator), so flips are reproducible under ``torch.manual_seed`` and
    differ between workers. A generator passed in would be copied into every worker.
    """
    return torch.rand((), generator=generator).item() < p  # .item(): a tensor comparison costs 3x more


class FaceTransform:
    """Encoded image bytes -> normalised ``(3, H, W)`` float32 RGB tensor.

    ``train=True`` mirrors the face left-right with probability ``flip_p`` (the only
    augmentation the ArcFace recipe uses); ``train=False`` is deterministic. Images whose
    size is not ``size`` raise ``ValueError`` naming ``where`` and the shape.
    ``normalize=False`` returns the ``(3, H, W)`` uint8 RGB tensor instead, for loaders that
    normalise whole batches with ``normalize_images`` (less to copy between processes).
    """

    def __init__(
        self, train: bool = True, size: tuple[int, int] = IMAGE_SIZE, flip_p: float = 0.5, normalize: bool = True
    ):
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.train = train
        self.size = (int(size[0]), int(size[1]))
        self.flip_p = flip_p
        self.normalize = normalize

    def __call__(self, buf: bytes | memoryview, *, where: str = "") -> torch.Tensor:
        image = decode_bgr(buf, where=where)
        check_image_size(image, self.size, where=where)
        flip = self.train and self.flip_p > 0 and draw_flip(self.flip_p)
        return bgr_to_tensor(image, flip=flip) if self.normalize else bgr_to_uint8_tensor(image, flip=flip)

    def __repr__(self) -> str:
        return f"FaceTransform(train={self.train}, size={self.size}, flip_p={self.flip_p}, normalize={self.normalize})"
