"""Verification ``.bin`` files (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW) in insightface's format.

A ``.bin`` file is a pickle of ``(bins, issame_list)``: ``bins`` holds ``2 * N`` encoded
images (JPEG or PNG bytes, the two images of pair ``i`` at positions ``2i`` and ``2i + 1``)
and ``issame_list`` holds ``N`` booleans. The widely distributed files were pickled by
Python 2, so they are read with ``encoding="bytes"`` (what insightface's ``load_bin``
does) and an image may come back as ``bytes`` or as a uint8 numpy array.

Unpickling runs code named by the file, so the reader only resolves the few globals these
files need (numpy's array reconstruction); anything else is refused with an error naming
the file.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facevib.data.imagecodec import decode_bgr

__all__ = ["VerificationBin", "read_bin", "write_bin", "encode_jpeg", "BinFormatError"]

IMAGE_SIZE = 112


class BinFormatError(ValueError):
    """A ``.bin`` file is not a verification set; the message names the file (and image index)."""


@dataclass
class VerificationBin:
    """A decoded verification set.

    ``images`` is ``(2N, H, W, 3)`` uint8 RGB with the pair ``i`` at rows ``2i`` and ``2i + 1``;
    ``issame`` is ``(N,)`` bool.
    """

    name: str
    images: np.ndarray
    issame: np.ndarray
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.issame.shape[0])


# Globals a verification pickle may reference: numpy arrays (py2 files store some images as
# uint8 arrays), numpy bool scalars (some issame lists), and _codecs.encode, which Python 3
# uses to pickle bytes at protocols < 3. numpy 2 moved numpy.core to numpy._core; old
# pickles name the old module.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy", "bool_"),
    ("builtins", "bool"),
    ("__builtin__", "bool"),
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, handle, path: Path):
        super().__init__(handle, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise BinFormatError(
                f"{self._path}: refusing to unpickle global {module}.{name}; "
                "a verification .bin only holds image bytes and booleans"
            )
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :] if hasattr(np, "_core") else module
        elif module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)


def _load_pickle(path: Path) -> object:
    data = path.read_bytes()
    try:
        return _SafeUnpickler(io.BytesIO(data), path).load()
    except BinFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        # Everything a non-pickle or truncated pickle raises; never a bare except.
        raise BinFormatError(f"{path}: not a pickled verification set ({type(err).__name__}: {err})") from err


def _as_buffer(item: object, index: int, path: Path) -> np.ndarray:
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 1:
            raise BinFormatError(
                f"{path}: image {index} is a numpy array of shape {item.shape} dtype {item.dtype}; "
                "expected 1-D uint8 encoded bytes"
            )
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return np.frombuffer(item, dtype=np.uint8)
    raise BinFormatError(f"{path}: image {index} is a {type(item).__name__}, expected encoded image bytes")


def _validate(obj: object, path: Path) -> tuple[list, np.ndarray]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        kind = type(obj).__name__ + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else "")
        raise BinFormatError(f"{path}: expected a pickled (images, issame) pair, got a {kind}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise BinFormatError(f"{path}: the image list is a {type(bins).__name__}, expected a list of encoded images")
    try:
        flags = np.asarray(issame)
    except (TypeError, ValueError) as err:
        raise BinFormatError(f"{path}: issame is not a sequence of booleans ({err})") from err
    if flags.size == 0:
        flags = flags.astype(bool).reshape(0)
    if flags.ndim != 1 or not (flags.dtype == np.bool_ or np.issubdtype(flags.dtype, np.integer)):
        raise BinFormatError(
            f"{path}: issame must be a flat list of booleans, got shape {flags.shape} dtype {flags.dtype}"
        )
    if flags.dtype != np.bool_ and not np.isin(flags, (0, 1)).all():
        raise BinFormatError(f"{path}: issame holds values other than 0/1: {sorted(set(flags.tolist()))[:5]}")
    if len(flags) == 0 and len(bins) == 0:
        raise BinFormatError(f"{path}: no pairs")
    if len(bins) % 2:
        raise BinFormatError(f"{path}: odd number of images ({len(bins)}); pairs need 2 images each")
    if len(bins) != 2 * len(flags):
        raise BinFormatError(
            f"{path}: {len(bins)} images but {len(flags)} issame flags; expected 2 images per flag "
            f"({2 * len(flags)} images)"
        )
    return list(bins), flags.astype(bool)


def _decode_into(out: np.ndarray, bins: list, start: int, stop: int, path: Path, resize: bool) -> None:
    size = out.shape[1:3]
    for i in range(start, stop):
        buf = _as_buffer(bins[i], i, path)
        try:
            bgr = decode_bgr(buf)
        except ValueError as err:
            raise BinFormatError(f"{path}: image {i} ({buf.size} bytes) does not decode as an image: {err}") from err
        if bgr.shape[:2] != size:
            if not resize:
                raise BinFormatError(
                    f"{path}: image {i} is {bgr.shape[1]}x{bgr.shape[0]}, expected {size[1]}x{size[0]} "
                    "(pass resize=True to resize)"
                )
            bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out[i])


def read_bin(
    path: str | os.PathLike,
    *,
    image_size: int = IMAGE_SIZE,
    resize: bool = False,
    num_threads: int | None = None,
) -> VerificationBin:
    """Read and decode a verification ``.bin`` file.

    Images are decoded with ``cv2.imdecode`` to RGB uint8 ``(image_size, image_size, 3)``.
    An image of another size raises ``BinFormatError`` unless ``resize=True``, which resizes
    it with area interpolation (a convenience for sets aligned at other sizes; the standard
    sets are all 112x112). Decoding uses ``num_threads`` threads (cv2 releases the GIL;
    default: up to 4, one per CPU).

    Raises ``FileNotFoundError`` when the file is missing and ``BinFormatError`` (a
    ``ValueError``) naming the file for a non-pickle, a wrong structure, an odd image count,
    a count that is not twice the number of flags, or an image that does not decode (with
    its index).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set not found: {path}")
    bins, issame = _validate(_load_pickle(path), path)
    images = np.empty((len(bins), image_size, image_size, 3), dtype=np.uint8)
    threads = num_threads if num_threads is not None else min(4, os.cpu_count() or 1)
    chunk = 512
    if threads <= 1 or len(bins) <= chunk:
        _decode_into(images, bins, 0, len(bins), path, resize)
    else:
        starts = range(0, len(bins), chunk)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            jobs = [pool.submit(_decode_into, images, bins, s, min(s + chunk, len(bins)), path, resize) for s in starts]
            for job in jobs:  # in order, so the first failing index is the one reported
                job.result()
    return VerificationBin(name=path.stem, images=images, issame=issame, path=path)


def write_bin(
    path: str | os.PathLike, encoded_images: Sequence[bytes], issame: Sequence[bool], *, protocol: int = 4
) -> None:
    """Write ``(encoded_images, issame)`` as insightface's ``.bin`` pickle.

    ``encoded_images`` holds ``2 * len(issame)`` JPEG/PNG byte strings, pair ``i`` at
    ``2i, 2i + 1``. The file is written to a temporary name and renamed, so a reader never
    sees half a file. Protocol 4 loads in every Python 3 (insightface reads it with
    ``pickle.load(f, encoding="bytes")``).
    """
    path = Path(path)
    images = [bytes(item) for item in encoded_images]
    flags = [bool(flag) for flag in issame]
    if len(images) != 2 * len(flags):
        raise ValueError(f"{path}: {len(images)} images for {len(flags)} pairs; need exactly 2 per pair")
    if not flags:
        raise ValueError(f"{path}: no pairs to write")
    empty = [i for i, item in enumerate(images) if not item]
    if empty:
        raise ValueError(f"{path}: image {empty[0]} is empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump((images, flags), handle, protocol=protocol)
    os.replace(tmp, path)


def encode_jpeg(image_rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image as JPEG bytes (what mxnet's ``pack_img`` and the .bin sets hold)."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"encode_jpeg expects an (H, W, 3) uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [0, 100], got {quality}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cv2 could not JPEG-encode an image of shape {image_rgb.shape}")
    return buf.tobytes()
