"""Checkpoint files: one dict, written atomically, the last k kept.

The dict holds only tensors and plain Python values so that ``torch.load(...,
weights_only=True)`` reads it (no pickled code runs on load).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_torch_file",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "facevib"
_NAME = re.compile(r"^checkpoint_(\d{8,})\.pt$")


def _name(step: int) -> str:
    return f"checkpoint_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], directory: str | Path, step: int, keep: int) -> Path:
    """Write ``state`` as ``checkpoint_<step>.pt`` via a temp file + ``os.replace``.

    A crash mid-write leaves the previous checkpoints intact and no partial file under a
    checkpoint name. Older checkpoints beyond the newest ``keep`` are deleted afterwards.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _name(step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` a file of tensors and plain values on the CPU, with a named error.

    Args:
        path: the file.
        what: how the error names it (e.g. ``"model.init_backbone"``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{what} {path} is not a readable torch file ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a facevib training checkpoint (tensors and plain values only)."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a facevib training checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    return state
