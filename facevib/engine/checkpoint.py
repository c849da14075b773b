"""Checkpoints: one reader and one :class:`Checkpointer` for the one format, the folder.

Layout of ``checkpoint_<step:08d>/``:

* ``state.pt`` — one dict of tensors and plain values (``format``, ``arch``, backbone,
  optimizer state keyed by parameter name, scaler, step, data position, config), written
  by rank 0 and read with ``torch.load(..., weights_only=True)`` (no pickled code runs);
* ``partial_fc/`` — a ``torch.distributed.checkpoint`` (DCP) folder with the Partial FC
  weight and its optimizer state, written by every rank for its own rows in blocks and
  reloaded at any world size (see :mod:`facevib.row_shards`).

All ranks write into ``.checkpoint_<step>.tmp/`` (one shared file system, as DCP's
file-system writer expects); rank 0 renames it once everything is on disk, so a crash
leaves the previous checkpoints intact and nothing partial under a checkpoint name.

``backbone.pt`` (the embedding model alone) is a file with the same ``format``/``arch``/
``backbone``/``config`` entries; :func:`read_checkpoint` reads both.
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

from facevib.engine.reader import (
    CHECKPOINT_FORMAT,
    STATE_FILE,
    Checkpoint,
    is_old_format,
    old_format_error,
    read_checkpoint,
    read_torch_file,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "Checkpointer",
    "SHARDED_DIR",
    "STATE_FILE",
    "latest_checkpoint",
    "list_checkpoints",
    "load_sharded",
    "read_checkpoint",
    "read_torch_file",
    "save_checkpoint",
    "sharded_entries",
]

SHARDED_DIR = "partial_fc"
_NAME = re.compile(r"^checkpoint_(\d{8,})$")


def _name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoint folders in ``directory`` (they got their state file), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None.

    Raises:
        ValueError: ``directory`` holds only single-file checkpoints of the dropped format.
    """
    found = list_checkpoints(directory)
    if found:
        return found[-1]
    old = sorted(p.name for p in Path(directory).glob("checkpoint_*.pt") if is_old_format(p))
    if old:
        raise ValueError(old_format_error(Path(directory) / old[-1]))
    return None


# ----------------------------------------------------------------------------- writing


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


def _quiet_dcp(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # DCP warns on every single-process call that it assumes a single process: we know.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        return call(*args, no_dist=_no_dist(), **kwargs)


def _barrier() -> None:
    if not _no_dist():
        dist.barrier()


def _write_file(state: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


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
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    _quiet_dcp(dcp.save, sharded, checkpoint_id=tmp / SHARDED_DIR)
    if is_main:
        _write_file(state, tmp / STATE_FILE)
        if final.exists():  # the same step saved again after a restart
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def sharded_entries(path: str | Path) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Global shape and dtype of every tensor in the DCP folder of checkpoint ``path``."""
    folder = Path(path) / SHARDED_DIR
    try:
        metadata = dcp.FileSystemReader(folder).read_metadata()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not a readable sharded checkpoint ({exc})") from exc
    return {
        key: (md.size, md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata)
    }


def load_sharded(path: str | Path, sharded: dict[str, torch.Tensor]) -> None:
    """Read checkpoint ``path``'s DCP folder into the live views ``sharded`` (collective)."""
    _quiet_dcp(dcp.load, sharded, checkpoint_id=Path(path) / SHARDED_DIR)


class Checkpointer:
    """Save, find, resume and prune the checkpoints of one run folder.

    Args:
        directory: the run folder (``run.output``).
        keep: how many checkpoint folders to keep (``run.keep_checkpoints``).
        is_main: whether this rank writes the files other than its Partial FC rows.
    """

    def __init__(self, directory: str | Path, keep: int, is_main: bool = True):
        self.directory = Path(directory)
        self.keep = keep
        self.is_main = is_main

    def save(self, step: int, state: dict[str, Any], sharded: dict[str, torch.Tensor]) -> Path:
        """Write ``checkpoint_<step>/`` and drop the oldest beyond ``keep`` (collective)."""
        return save_checkpoint(state, sharded, self.directory, step, self.keep)

    def resolve(self, resume: str) -> Path | None:
        """The folder ``resume`` names: ``"latest"`` (None when the run has none yet) or a path."""
        if resume == "latest":
            return latest_checkpoint(self.directory)
        path = Path(resume)
        if path.is_file() and is_old_format(path):
            raise ValueError(old_format_error(path))
        return path

    def load(self, path: str | Path) -> Checkpoint:
        """The replicated state of checkpoint folder ``path`` (the Partial FC via :meth:`load_sharded`)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if not path.is_dir():
            checkpoint = read_checkpoint(path)  # names the old format, or a backbone.pt
            raise ValueError(f"{checkpoint.path}: a backbone file, not a training checkpoint folder to resume from")
        return read_checkpoint(path)

    def load_partial_fc(
        self, path: str | Path, pfc: Any, optimizer: torch.optim.Optimizer, classes: int, dim: int, origin: str
    ) -> None:
        """This rank's rows of the Partial FC weight and optimizer state of checkpoint ``path``,
        in place, whatever world size saved them (collective).

        Raises:
            ValueError: no weight, or one that is not ``classes x dim`` (``origin``: the data).
        """
        entries = sharded_entries(path)
        if "weight" not in entries:
            raise ValueError(f"{path}: the sharded checkpoint has no Partial FC weight")
        shape = tuple(entries["weight"][0])
        if shape != (classes, dim):
            raise ValueError(
                f"{path}: Partial FC weight of shape {shape} does not match {classes} classes x {dim} dims of {origin}"
            )
        load_sharded(path, pfc.sharded_state_dict(optimizer, entries))

    def write_backbone(self, state: dict[str, Any]) -> Path:
        """Write ``backbone.pt`` atomically (rank 0 only; other ranks return the path unwritten)."""
        final = self.directory / "backbone.pt"
        if self.is_main:
            tmp = self.directory / ".backbone.pt.tmp"
            _write_file(state, tmp)
            os.replace(tmp, final)
        return final
