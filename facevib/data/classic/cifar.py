"""CIFAR-10 from its python pickle batches and CIFAR-10-C from its ``.npy`` files.

CIFAR-10 (``cifar-10-python.tar.gz`` extracted): ``data_batch_1`` .. ``data_batch_5`` and
``test_batch``, each a pickle (latin-1 / bytes keys) of ``{b"data": uint8 (10000, 3072),
b"labels": [int]}``, rows stored channel-planar (1024 R, 1024 G, 1024 B values).
CIFAR-10-C (Hendrycks & Dietterich): ``<corruption>.npy`` uint8 (5 * 10000, 32, 32, 3),
severities 1..5 in consecutive blocks, and one shared ``labels.npy``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

__all__ = ["CIFAR10C_CORRUPTIONS", "CIFAR10_FILES", "load_cifar10", "load_cifar10c"]

CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10C_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
_SEVERITIES = 5
_SIDE = 32


def _batch_dir(root: Path) -> Path:
    """``root`` itself or its ``cifar-10-batches-py`` subfolder, whichever holds the batches."""
    nested = root / "cifar-10-batches-py"
    return nested if nested.is_dir() else root


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 pickle batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE or len(data) != len(labels):
        raise ValueError(f"{path}: data of shape {data.shape} with {len(labels)} labels; expected (N, 3072) and N")
    return data.reshape(-1, 3, _SIDE, _SIDE), labels


def load_cifar10(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32) RGB, labels int64 (N,))`` of the CIFAR-10 ``split``.

    Args:
        root: the extracted ``cifar-10-batches-py`` folder or its parent.
        split: ``"train"`` (5 batches, 50,000 images) or ``"test"`` (10,000).

    Raises:
        FileNotFoundError: a batch file is missing (the message lists the expected names).
        ValueError: unknown split or a malformed batch (the message names the file).
    """
    if split not in CIFAR10_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _batch_dir(Path(root))
    missing = [name for name in CIFAR10_FILES[split] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 {split}: {folder} lacks {', '.join(missing)} (the python version, "
            "cifar-10-python.tar.gz extracted); the files are not shipped or downloaded"
        )
    parts = [_read_batch(folder / name) for name in CIFAR10_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10c(root: str | Path, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32) RGB, labels int64 (N,))`` of one corruption at one severity.

    Args:
        root: the extracted ``CIFAR-10-C`` folder (``<corruption>.npy`` and ``labels.npy``).
        corruption: one of :data:`CIFAR10C_CORRUPTIONS`.
        severity: 1 (mildest) .. 5.

    Raises:
        FileNotFoundError: the corruption's file or ``labels.npy`` is missing.
        ValueError: unknown corruption or severity, or arrays of the wrong shape.
    """
    if corruption not in CIFAR10C_CORRUPTIONS:
        raise ValueError(f"unknown CIFAR-10-C corruption {corruption!r}; one of {', '.join(CIFAR10C_CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= _SEVERITIES:
        raise ValueError(f"severity must be an int in 1..{_SEVERITIES}, got {severity!r}")
    root = Path(root)
    image_path, label_path = root / f"{corruption}.npy", root / "labels.npy"
    missing = [p.name for p in (image_path, label_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10-C: {root} lacks {', '.join(missing)}; the files are not shipped or downloaded"
        )
    images = np.load(image_path, mmap_mode="r")
    labels = np.load(label_path)
    if images.ndim != 4 or images.shape[1:] != (_SIDE, _SIDE, 3) or len(images) % _SEVERITIES:
        raise ValueError(f"{image_path}: shape {images.shape}, expected (5 * N, 32, 32, 3)")
    if len(labels) != len(images):
        raise ValueError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path}")
    per_level = len(images) // _SEVERITIES
    block = slice((severity - 1) * per_level, severity * per_level)
    chosen = np.ascontiguousarray(np.asarray(images[block], dtype=np.uint8).transpose(0, 3, 1, 2))
    return chosen, np.asarray(labels[block], dtype=np.int64)
