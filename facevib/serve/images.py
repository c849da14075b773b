"""From the bytes of one request image to aligned crops and network input.

Three modes per image (chosen by :func:`resolve_mode`):

* ``aligned``: the image is already an ``S x S`` aligned crop and is used as is.
* ``landmarks``: any photo plus 5 points (ArcFace order: eyes, nose tip, mouth corners), warped
  by :func:`facevib.align.norm_crop`, exactly as evaluation aligns IJB crops.
* ``detect``: a photo without landmarks goes to the face detector in the app's ``detector``
  slot; without one the image fails with ``no_landmarks``.

Images without ``aligned`` or landmarks whose size is exactly ``S x S`` count as aligned crops
(what a 112x112 file almost always is). Decoding is :func:`facevib.data.imagecodec.decode_rgb`,
the decoder training and evaluation use, after Pillow's lazy ``Image.open`` (which reads only
the header) has checked the format and the pixel count without decoding. Everything here raises
:class:`~facevib.serve.errors.ServeError` naming the field, and runs in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from facevib.align import norm_crop
from facevib.data.imagecodec import decode_rgb
from facevib.detect.base import Detector
from facevib.serve.errors import ServeError

__all__ = [
    "DetectOptions",
    "Detector",
    "FaceCrop",
    "ImageSpec",
    "decode_base64",
    "load_image",
    "normalise",
    "prepare_faces",
    "resolve_mode",
]

# The formats the server accepts; Pillow identifies no other, so anything else is refused
# before it reaches a decoder.
_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class DetectOptions:
    """Per-request options of the detection mode (``None``: the detector's defaults)."""

    max_faces: int | None = None
    min_face_size: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ImageSpec:
    """One image of a request, before decoding.

    Attributes:
        data: the encoded file's bytes (base64 already decoded).
        landmarks: ``(5, 2)`` pixel coordinates, or None.
        aligned: True: an aligned crop; False: a photo (landmarks or detection); None: decide
            by size (see the module docstring).
        field: where the image sits in the request (``images[2]``), for error messages.
    """

    data: bytes
    landmarks: np.ndarray | None
    aligned: bool | None
    field: str


@dataclass(frozen=True)
class FaceCrop:
    """One aligned face and where it came from (``None`` where the mode does not know)."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB
    bbox: list[float] | None
    landmarks: list[list[float]] | None
    det_score: float | None


def decode_base64(text: str, field: str) -> bytes:
    """Standard base64 (a ``data:image/...;base64,`` prefix and line breaks are allowed) -> bytes."""
    body = _DATA_URI.sub("", text.strip(), count=1)
    body = "".join(body.split())  # MIME-style line breaks
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ServeError("invalid_base64", f"not valid base64 ({err})", field) from None
    if not data:
        raise ServeError("invalid_base64", "empty image data", field)
    return data


def load_image(data: bytes, *, max_pixels: int, field: str) -> np.ndarray:
    """Check the header (format, pixel limit), then decode to ``HxWx3`` uint8 RGB.

    The pixel limit is checked before decoding: a 50 KB PNG can claim 50,000 x 50,000 pixels (a
    decompression bomb) and would need 7.5 GB once decoded.
    """
    try:
        # Lazy: Image.open reads the header only; the pixels are decoded below, by OpenCV.
        with Image.open(io.BytesIO(data), formats=_FORMATS) as image:
            kind, (width, height) = image.format.lower(), image.size
    except Image.DecompressionBombError as err:  # Pillow's own, far larger limit: still ours to report
        raise ServeError("image_too_large", f"{err}; the limit is {max_pixels} pixels", field) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ServeError(
            "unsupported_image_format",
            f"not a JPEG, PNG, WebP or BMP file, or its header is cut short ({len(data)} bytes, first bytes "
            f"{data[:8].hex() or 'none'}); send a JPEG, PNG, WebP or BMP file",
            field,
        ) from None
    if width * height > max_pixels:
        raise ServeError(
            "image_too_large",
            f"{kind} of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            field,
        )
    if width == 0 or height == 0:
        raise ServeError("invalid_image", f"{kind} with size {width}x{height}", field)
    try:
        return decode_rgb(data)
    except ValueError as err:
        raise ServeError("invalid_image", str(err), field) from None


def resolve_mode(spec: ImageSpec, image_shape: Sequence[int], input_size: int) -> str:
    """``"aligned"``, ``"landmarks"`` or ``"detect"`` for ``spec`` (see the module docstring)."""
    if spec.aligned and spec.landmarks is not None:
        raise ServeError("validation_error", "give landmarks or aligned=true, not both", f"{spec.field}.aligned")
    if spec.landmarks is not None:
        return "landmarks"
    if spec.aligned:
        return "aligned"
    square = tuple(image_shape[:2]) == (input_size, input_size)
    return "aligned" if spec.aligned is None and square else "detect"


def prepare_faces(
    spec: ImageSpec,
    *,
    input_size: int,
    max_pixels: int,
    detector: Detector | None,
    options: DetectOptions | None = None,
) -> tuple[str, list[FaceCrop]]:
    """Decode ``spec`` and return its mode and its aligned faces (one, or per detected face)."""
    image = load_image(spec.data, max_pixels=max_pixels, field=f"{spec.field}.data")
    mode = resolve_mode(spec, image.shape, input_size)
    if mode == "aligned":
        if image.shape[:2] != (input_size, input_size):
            raise ServeError(
                "wrong_crop_size",
                f"an aligned crop must be {input_size}x{input_size}, got {image.shape[1]}x{image.shape[0]} "
                "(send 5 landmarks to have the server align a photo)",
                f"{spec.field}.data",
            )
        return mode, [FaceCrop(image, None, None, None)]
    if mode == "landmarks":
        assert spec.landmarks is not None
        return mode, [
            FaceCrop(_align(image, spec.landmarks, input_size, spec.field), None, _points(spec.landmarks), None)
        ]
    if detector is None:
        raise ServeError(
            "no_landmarks",
            f"no face detector is loaded: send a {input_size}x{input_size} aligned crop (aligned=true) or the "
            "photo with its 5 landmarks",
            f"{spec.field}.landmarks",
        )
    options = options or DetectOptions()
    faces = detector.detect(
        image, min_face_size=options.min_face_size, threshold=options.threshold, max_faces=options.max_faces
    )
    if not faces:
        raise ServeError("no_face", "the detector found no face in this image", f"{spec.field}.data")
    crops = []
    for face in faces:
        landmarks = np.asarray(face.landmarks, dtype=np.float64)
        crop = _align(image, landmarks, input_size, spec.field)
        bbox = [float(v) for v in np.asarray(face.bbox, dtype=np.float64).reshape(4)]
        crops.append(FaceCrop(crop, bbox, _points(landmarks), float(face.score)))
    return mode, crops


def _points(landmarks: np.ndarray) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in np.asarray(landmarks, dtype=np.float64)]


def _align(image: np.ndarray, landmarks: np.ndarray, size: int, field: str) -> np.ndarray:
    try:
        return norm_crop(image, landmarks, size)
    except ValueError as err:  # e.g. all points coincide: no similarity transform exists
        raise ServeError("invalid_landmarks", str(err), f"{field}.landmarks") from None


def normalise(crops: np.ndarray, mean: Sequence[float], std: Sequence[float], *, bgr: bool = False) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 RGB -> ``(N, 3, S, S)`` float32 ``(pixel - mean) / std`` per channel.

    ``mean`` and ``std`` are on the 0-255 scale, in the model's channel order (the model
    metadata's ``preprocess``); ``bgr`` feeds the channels reversed.
    """
    if bgr:
        crops = crops[..., ::-1]
    inv_std = (1.0 / np.asarray(std, dtype=np.float32)).reshape(1, 3, 1, 1)
    shift = (np.asarray(mean, dtype=np.float32) * inv_std.reshape(3)).reshape(1, 3, 1, 1)
    out = crops.transpose(0, 3, 1, 2).astype(np.float32)
    out *= inv_std
    out -= shift
    return out
