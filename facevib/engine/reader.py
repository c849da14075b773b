"""The one reader of facevib checkpoints: a training checkpoint folder or a ``backbone.pt``.

A checkpoint folder ``checkpoint_<step>/`` keeps its replicated state in ``state.pt`` (see
:mod:`facevib.engine.checkpoint` for the layout); ``backbone.pt`` is one file with the same
``format``/``arch``/``backbone``/``config`` entries. Training initialisation, evaluation,
export and :func:`facevib.models.load_backbone` all read through :func:`read_checkpoint`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "STATE_FILE",
    "Checkpoint",
    "is_old_format",
    "old_format_error",
    "read_checkpoint",
    "read_torch_file",
]

CHECKPOINT_FORMAT = "facevib"
STATE_FILE = "state.pt"
_OLD_FILE = re.compile(r"^checkpoint_\d{8,}\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    """What one checkpoint holds.

    Attributes:
        path: the file read (a folder's ``state.pt``, ``backbone.pt``, a plain state_dict).
        arch: ``{"name", "kwargs"}`` to rebuild the model with; None for a plain state_dict.
        state: the whole saved dict; the backbone weights are ``state["backbone"]``.
        config: the training config (as saved by ``config_to_dict``), or None.
    """

    path: Path
    arch: dict[str, Any] | None
    state: dict[str, Any]
    config: dict[str, Any] | None

    @property
    def backbone(self) -> dict[str, torch.Tensor]:
        """The backbone state_dict."""
        return self.state["backbone"]


def is_old_format(path: Path) -> bool:
    """Whether ``path`` is named like a single-file checkpoint of the dropped format."""
    return bool(_OLD_FILE.match(path.name))


def old_format_error(path: Path) -> str:
    return (
        f"{path}: a single-file checkpoint of the format before 0.1.0, which facevib no longer reads; "
        f"resume from a checkpoint folder (checkpoint_<step>/ with {STATE_FILE})"
    )


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


def read_checkpoint(path: str | Path, what: str = "checkpoint", plain_ok: bool = False) -> Checkpoint:
    """Read a checkpoint folder, a ``backbone.pt``, or (``plain_ok``) a plain state_dict.

    Args:
        path: ``checkpoint_<step>/`` (its ``state.pt`` is read), a facevib file with
            ``format``/``arch``/``backbone``, or a bare state_dict such as arcface_torch's
            ``backbone.pth`` (returned with ``arch=None`` and ``state={"backbone": ...}``).
        what: how errors name the path (e.g. ``"model.init_backbone"``).
        plain_ok: accept a bare state_dict.

    Raises:
        FileNotFoundError: no such path, or a folder without ``state.pt``.
        ValueError: unreadable, the dropped single-file format, or malformed entries
            (the message names the path and the field).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"{path} is a folder without {STATE_FILE}: not a facevib checkpoint")
        path = path / STATE_FILE
    payload = read_torch_file(path, what)
    if not isinstance(payload, Mapping):
        raise ValueError(f"{path}: expected a dict (facevib checkpoint or state_dict), got {type(payload).__name__}")
    if "arch" not in payload and "backbone" not in payload:
        if not plain_ok:
            raise ValueError(f"{path}: not a facevib checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
        return Checkpoint(path, None, {"backbone": dict(payload)}, None)
    fmt = payload.get("format", CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: field 'format' is {fmt!r}, expected {CHECKPOINT_FORMAT!r}")
    if payload.get("version", 2) < 2 or is_old_format(path):
        raise ValueError(old_format_error(path))
    arch = payload.get("arch")
    if (
        not isinstance(arch, Mapping)
        or not isinstance(arch.get("name"), str)
        or not isinstance(arch.get("kwargs", {}), Mapping)
    ):
        raise ValueError(f"{path}: field 'arch' must be {{'name': str, 'kwargs': dict}}, got {arch!r}")
    if not isinstance(payload.get("backbone"), Mapping):
        raise ValueError(f"{path}: field 'backbone' is missing or not a state_dict")
    config = payload.get("config")
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"{path}: field 'config' must be a dict, got {type(config).__name__}")
    return Checkpoint(path, dict(arch), dict(payload), config)
