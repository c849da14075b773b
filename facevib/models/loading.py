"""``load_backbone``: a ready-to-embed model from a facevib checkpoint or an arcface_torch file."""

from __future__ import annotations

import os
import warnings
from typing import Any

from torch import nn

from facevib.engine.reader import Checkpoint, read_checkpoint
from facevib.models.arcface import convert_arcface_state_dict, is_vib_key, load_arcface_state_dict
from facevib.models.registry import create_model

__all__ = ["load_backbone", "model_from_checkpoint"]


def load_backbone(path: str | os.PathLike[str], name: str | None = None, **overrides: Any) -> nn.Module:
    """Build and load a backbone, returned in eval mode on the CPU.

    Args:
        path: anything :func:`facevib.engine.checkpoint.read_checkpoint` reads: a training
            checkpoint folder, a ``backbone.pt``, or a plain state_dict such as
            arcface_torch's ``backbone.pth``.
        name: registered model name; required for a plain state_dict, and if given for a
            facevib checkpoint it must equal the checkpoint's ``arch["name"]``.
        **overrides: create_model overrides, applied on top of the checkpoint's
            ``arch["kwargs"]`` (e.g. ``dropout=0.0``).

    A plain arcface_torch state_dict loaded into a ``cellvib_*``/``deepvib_*`` model leaves
    the sigma branches at their initialisation; that is reported with a warning (the
    embedding is unaffected, the uncertainty score is meaningless).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a torch checkpoint, malformed ``arch``, name mismatch, or weights
            that do not fit the model (the message names the path and keys).
    """
    return model_from_checkpoint(read_checkpoint(path, what="backbone checkpoint", plain_ok=True), name, **overrides)


def model_from_checkpoint(checkpoint: Checkpoint, name: str | None = None, **overrides: Any) -> nn.Module:
    """The backbone of an already read checkpoint, in eval mode (see :func:`load_backbone`)."""
    try:
        if checkpoint.arch is None:
            model = _from_plain_state_dict(checkpoint, name, overrides)
        else:
            model = _from_facevib_checkpoint(checkpoint, name, overrides)
    except ValueError as err:
        raise ValueError(f"{checkpoint.path}: {err}") from err
    return model.eval()


def _from_facevib_checkpoint(checkpoint: Checkpoint, name: str | None, overrides: dict[str, Any]) -> nn.Module:
    arch = checkpoint.arch
    if name is not None and name != arch["name"]:
        raise ValueError(f"name {name!r} does not match the checkpoint's arch name {arch['name']!r}")
    model = create_model(arch["name"], **{**arch.get("kwargs", {}), **overrides})
    report = load_arcface_state_dict(model, checkpoint.backbone)
    if report.missing_keys:
        raise ValueError(
            f"field 'backbone' lacks {len(report.missing_keys)} model keys, e.g. {list(report.missing_keys[:5])}"
        )
    return model


def _from_plain_state_dict(checkpoint: Checkpoint, name: str | None, overrides: dict[str, Any]) -> nn.Module:
    if name is None:
        raise ValueError("a plain state_dict (no 'arch') needs name=, e.g. load_backbone(path, 'r100')")
    model = create_model(name, **overrides)
    state_dict = checkpoint.backbone
    # A facevib backbone state_dict has VIB keys; anything else must be arcface_torch's.
    if not any(is_vib_key(str(key)) for key in state_dict):
        state_dict = convert_arcface_state_dict(state_dict)
    report = load_arcface_state_dict(model, state_dict)
    if report.missing_keys:
        warnings.warn(
            f"{checkpoint.path}: {len(report.missing_keys)} VIB keys of {name!r} are not in the checkpoint and keep "
            "their initialisation (embeddings unaffected; uncertainty scores meaningless)",
            stacklevel=4,
        )
    return model
