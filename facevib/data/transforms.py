"""Decoding and the training transform for aligned face crops.

The network input is RGB, ``(x / 255 - 0.5) / 0.5`` (= ``x / 127.5 - 1``), NCHW float32
(BRIEF §3). OpenCV decodes to BGR; rather than converting to RGB, flipping, transposing
and scaling in four passes, the per-sample fast path hands the BGR image to
``cv2.dnn.blobFromImage``, which swaps channels, subtracts the mean, scales and writes
CHW float32 in one pass. Measured on the project's 2-core machines, 112x112 JPEG q95, one
thread: decode 120-150 us; then blobFromImage 35-45 us, against ~105 us for cvtColor +
numpy flip + torch permute/float/normalise; writing into a preallocated float tensor with
numpy or per-channel cv2 calls took 45-55 us, so it is not used per sample.

In a DataLoader worker, collating float32 samples into shared memory costs another ~130 us
of CPU per image, against ~36 us for uint8 samples (a quarter of the bytes). Loaders that
can normalise on the GPU should take ``normalize=False`` samples and ``normalize_images``
the batch there. For host-side batches of decoded images, ``images_to_tensor`` writes into
one (optionally preallocated) tensor with torch, which uses all intra-op threads.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

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

IMAGE_SIZE = (112, 112)  # (height, width) of the standard ArcFace aligned crop
_SCALE = 1.0 / 127.5  # (x / 255 - 0.5) / 0.5 == x / 127.5 - 1
_MEAN = (127.5, 127.5, 127.5)
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def decode_bgr(buf: bytes | memoryview, *, where: str = "") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to an ``HxWx3`` uint8 BGR array.

    Raises ``ValueError`` naming ``where`` (e.g. file, record key and byte offset) when the
    bytes are empty, are not an image, or are a JPEG cut short.
    """
    data = np.frombuffer(buf, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"{_at(where)}empty image data")
    # libjpeg decodes a truncated JPEG without an error (the missing rows come out grey), so
    # a JPEG must still end with its end-of-image marker; encoders may append a few bytes.
    if data[:2].tobytes() == _JPEG_SOI and _JPEG_EOI not in data[-16:].tobytes():
        raise ValueError(f"{_at(where)}truncated JPEG: no end-of-image marker in the last 16 of {data.size} bytes")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        head = data[:8].tobytes().hex()
        raise ValueError(f"{_at(where)}cannot decode {data.size} bytes as an image (first bytes {head})")
    return image


def decode_rgb(buf: bytes | memoryview, *, where: str = "") -> np.ndarray:
    """Decode an encoded image to an ``HxWx3`` uint8 RGB array (what ``mx.image.imdecode`` returns).

    Raises ``ValueError`` naming ``where`` when the bytes do not decode.
    """
    image = decode_bgr(buf, where=where)
    # In place: BGR->RGB swaps within each pixel, so no second buffer is needed.
    cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return image


def check_image_size(image: np.ndarray, size: tuple[int, int] = IMAGE_SIZE, *, where: str = "") -> None:
    """Raise ``ValueError`` naming ``where`` and the shape unless ``image`` is ``size`` (h, w) x 3.

    Training sets hold aligned crops of one size; resizing a crop of another size would
    silently change the face's scale against the alignment template, so it is an error.
    """
    if image.shape[:2] != tuple(size) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{_at(where)}image of shape {tuple(image.shape)} (h, w, c); expected {size[0]}x{size[1]}x3 "
            "aligned crops (re-align or re-pack the data at this size)"
        )


def bgr_to_tensor(image: np.ndarray, *, flip: bool = False) -> torch.Tensor:
    """``HxWx3`` uint8 BGR -> ``(3, H, W)`` float32 RGB tensor, ``x / 127.5 - 1``; ``flip`` mirrors it.

    One ``blobFromImage`` call does the channel swap, normalisation and HWC->CHW transpose.
    """
    if flip:
        image = cv2.flip(image, 1)
    blob = cv2.dnn.blobFromImage(image, _SCALE, None, _MEAN, swapRB=True, crop=False)
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
    return images.float().mul_(_SCALE).sub_(1.0)


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
    return out.mul_(_SCALE).sub_(1.0)


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
