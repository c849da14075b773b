"""Decoding encoded face images to uint8 arrays, with errors that say where.

Kept free of torch so that processes that only read or write files (synthetic-set
workers, ``.bin`` readers, packing) start without importing it.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["IMAGE_SIZE", "check_image_size", "decode_bgr", "decode_rgb"]

IMAGE_SIZE = (112, 112)  # (height, width) of the standard ArcFace aligned crop

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
