"""MNIST from its IDX files (LeCun's format), gzipped or not.

IDX: two zero bytes, a type code, the number of dimensions n, then n big-endian uint32
sizes and the data, big-endian, in C order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["MNIST_FILES", "load_mnist", "read_idx"]

# Type code -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip detected from its first bytes), native byte order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad magic, unknown type code, or a size that disagrees with the header
            (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: truncated or corrupt gzip stream ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (first bytes {raw[:4].hex()}, expected 0000<type><ndim>)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: header declares {ndim} dimensions but the file has {len(raw)} bytes")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header shape {shape} needs {expected} data bytes, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of the MNIST ``split``.

    Args:
        root: folder holding the IDX files (``<name>`` or ``<name>.gz``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Raises:
        FileNotFoundError: a file is missing (the message lists the expected names).
        ValueError: unknown split, or images and labels that disagree.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    found = [_find(root, stem) for stem in MNIST_FILES[split]]
    missing = [stem for stem, path in zip(MNIST_FILES[split], found, strict=True) if path is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST {split}: {root} lacks {', '.join(missing)} (each may also be gzipped, '<name>.gz'); "
            "the files are not shipped or downloaded"
        )
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST {split}: {found[0]} holds shape {images.shape} and {found[1]} holds {labels.shape}; "
            "expected (N, H, W) images and N labels"
        )
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)
