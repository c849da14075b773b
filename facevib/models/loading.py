"""``load_backbone``: a ready-to-embed model from a facevib checkpoint or an arcface_torch file."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facevib.models.arcface import convert_arcface_state_dict, is_vib_key, load_arcface_state_dict
from facevib.models.registry import create_model

__all__ = ["load_backbone"]

# The file of a training checkpoint folder (``checkpoint_<step>/``) that holds the backbone;
# named here rather than imported so the model library does not depend on the training engine.
_CHECKPOINT_STATE = "state.pt"


def load_backbone(path: str | os.PathLike[str], name: str | None = None, **overrides: Any) -> nn.Module:
    """Build and load a backbone, returned in eval mode on the CPU.

    Args:
        path: a training checkpoint folder (``checkpoint_<step>/``, read from its
            ``state.pt``), a facevib checkpoint file (``torch.save``d dict with ``"arch"`` =
            ``{"name", "kwargs"}`` and ``"backbone"`` = state_dict; the model is rebuilt from
            ``arch``), or a plain state_dict such as arcface_torch's ``backbone.pth``.
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
    path = Path(path)
    if path.is_dir():  # a training checkpoint folder: its backbone lives in state.pt
        if not (path / _CHECKPOINT_STATE).is_file():
            raise FileNotFoundError(f"{path} is a folder without {_CHECKPOINT_STATE}: not a facevib checkpoint")
        path = path / _CHECKPOINT_STATE
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path}: not a loadable torch checkpoint ({err})") from err
    if not isinstance(payload, Mapping):
        raise ValueError(f"{path}: expected a dict (facevib checkpoint or state_dict), got {type(payload).__name__}")
    try:
        if "arch" in payload or "backbone" in payload:
            model = _from_facevib_checkpoint(payload, name, overrides)
        else:
            model = _from_plain_state_dict(path, payload, name, overrides)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return model.eval()


def _from_facevib_checkpoint(payload: Mapping[str, Any], name: str | None, overrides: dict[str, Any]) -> nn.Module:
    fmt = payload.get("format", "facevib")
    if fmt != "facevib":
        raise ValueError(f"field 'format' is {fmt!r}, expected 'facevib'")
    arch = payload.get("arch")
    if (
        not isinstance(arch, Mapping)
        or not isinstance(arch.get("name"), str)
        or not isinstance(arch.get("kwargs", {}), Mapping)
    ):
        raise ValueError(f"field 'arch' must be {{'name': str, 'kwargs': dict}}, got {arch!r}")
    if name is not None and name != arch["name"]:
        raise ValueError(f"name {name!r} does not match the checkpoint's arch name {arch['name']!r}")
    backbone = payload.get("backbone")
    if not isinstance(backbone, Mapping):
        raise ValueError("field 'backbone' is missing or not a state_dict")
    model = create_model(arch["name"], **{**arch.get("kwargs", {}), **overrides})
    report = load_arcface_state_dict(model, backbone)
    if report.missing_keys:
        raise ValueError(
            f"field 'backbone' lacks {len(report.missing_keys)} model keys, e.g. {list(report.missing_keys[:5])}"
        )
    return model


def _from_plain_state_dict(
    path: Path, state_dict: Mapping[str, Any], name: str | None, overrides: dict[str, Any]
) -> nn.Module:
    if name is None:
        raise ValueError("a plain state_dict (no 'arch') needs name=, e.g. load_backbone(path, 'r100')")
    model = create_model(name, **overrides)
    # A facevib backbone state_dict has VIB keys; anything else must be arcface_torch's.
    if not any(is_vib_key(str(key)) for key in state_dict):
        state_dict = convert_arcface_state_dict(state_dict)
    report = load_arcface_state_dict(model, state_dict)
    if report.missing_keys:
        warnings.warn(
            f"{path}: {len(report.missing_keys)} VIB keys of {name!r} are not in the checkpoint and keep "
            "their initialisation (embeddings unaffected; uncertainty scores meaningless)",
            stacklevel=3,
        )
    return model
