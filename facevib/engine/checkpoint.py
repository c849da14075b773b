"""Checkpoints: a folder per step, written atomically, the last k kept.

Layout of ``checkpoint_<step:08d>/``:

* ``state.pt`` — one dict of tensors and plain values (backbone, optimizer state keyed by
  parameter name, scaler, step, data position, config), written by rank 0 and readable
  with ``torch.load(..., weights_only=True)`` (no pickled code runs on load);
* ``partial_fc/`` — a ``torch.distributed.checkpoint`` (DCP) folder with the Partial FC
  weight and its optimizer state, written by every rank for its own rows (DTensor
  ``Shard(0)``) and reloaded at any world size (see :mod:`facevib.row_shards`).

All ranks write into ``.checkpoint_<step>.tmp/`` (one shared file system, as DCP's
file-system writer expects); rank 0 renames it once everything is on disk, so a crash
leaves the previous checkpoints intact and nothing partial under a checkpoint name.

Files ``checkpoint_<step>.pt`` of the single-file format (version 1: full Partial FC
matrix and momentum inside) are still listed and loaded.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from facevib.config import ConfigError

__all__ = [
    "CHECKPOINT_FORMAT",
    "SHARDED_DIR",
    "STATE_FILE",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_sharded",
    "read_torch_file",
    "save_checkpoint",
    "sharded_entries",
]

CHECKPOINT_FORMAT = "facevib"
STATE_FILE = "state.pt"
SHARDED_DIR = "partial_fc"
_NAME = re.compile(r"^checkpoint_(\d{8,})(\.pt)?$")


def _name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _complete(path: Path) -> bool:
    """A legacy file, or a folder that got its state file (renamed only when complete)."""
    return path.is_file() if path.suffix == ".pt" else (path / STATE_FILE).is_file()


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints (folders and legacy ``.pt`` files) in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and _complete(p)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


def _quiet_dcp(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # DCP warns on every single-process call that it assumes a single process: we know.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        return call(*args, no_dist=_no_dist(), **kwargs)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _barrier() -> None:
    if not _no_dist():
        dist.barrier()


def save_checkpoint(
    state: dict[str, Any], sharded: dict[str, torch.Tensor], directory: str | Path, step: int, keep: int
) -> Path:
    """Write ``checkpoint_<step>/`` (a collective call: every rank enters it).

    Args:
        state: the replicated part; only rank 0's copy is written.
        sharded: this rank's DCP state (Partial FC weight and optimizer state views).
        directory: the run folder.
        step: names the checkpoint.
        keep: checkpoints beyond the newest ``keep`` are deleted afterwards.

    Returns:
        The checkpoint folder.
    """
    directory = Path(directory)
    final = directory / _name(step)
    tmp = directory / f".{final.name}.tmp"
    is_main = _no_dist() or dist.get_rank() == 0
    if is_main:
        # Left over by a crash during an earlier save (one save runs at a time per run folder).
        for stale in directory.glob(".checkpoint_*.tmp"):
            _remove(stale)
        tmp.mkdir(parents=True)
    _barrier()
    _quiet_dcp(dcp.save, sharded, checkpoint_id=tmp / SHARDED_DIR)
    if is_main:
        with open(tmp / STATE_FILE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # the same step saved again after a restart
            _remove(final)
        os.replace(tmp, final)
        for old in list_checkpoints(directory)[:-keep]:
            _remove(old)
    _barrier()
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
        raise ConfigError(f"{what} {path} is not a readable torch file ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The replicated state of a checkpoint folder, or a whole legacy single-file checkpoint."""
    path = Path(path)
    if path.is_dir():
        state = read_torch_file(path / STATE_FILE)
    elif not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    else:
        state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a facevib training checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    return state


def sharded_entries(path: str | Path) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Global shape and dtype of every tensor in the DCP folder of checkpoint ``path``."""
    folder = Path(path) / SHARDED_DIR
    try:
        metadata = dcp.FileSystemReader(folder).read_metadata()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder}: not a readable sharded checkpoint ({exc})") from exc
    return {
        key: (md.size, md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata)
    }


def load_sharded(path: str | Path, sharded: dict[str, torch.Tensor]) -> None:
    """Read checkpoint ``path``'s DCP folder into the live views ``sharded`` (collective)."""
    _quiet_dcp(dcp.load, sharded, checkpoint_id=Path(path) / SHARDED_DIR)
