"""Loading arcface_torch iResNet weights (``backbone.pth``) into facevib models.

facevib's iResNets use arcface_torch's key names, so "conversion" only strips wrapper
prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile) and checks the keys.
Into an r-model the result loads exactly; into a ``cellvib_*`` or ``deepvib_*`` model of
the same depth the mean branches load and the VIB parameters (``*.vib.*``) keep their fresh
initialisation -- the usual way to start cellVIB training from a trained ArcFace model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LoadReport",
    "convert_arcface_state_dict",
    "is_vib_key",
    "load_arcface_state_dict",
    "strip_wrapper_prefixes",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BN_SUFFIX = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# Every key arcface_torch's IResNet (backbones/iresnet.py) writes.
_ARCFACE_KEY = re.compile(
    r"^(conv1\.weight"
    rf"|(bn1|bn2|features)\.{_BN_SUFFIX}"
    r"|prelu\.weight"
    rf"|layer[1-4]\.\d+\.((bn[123]|downsample\.1)\.{_BN_SUFFIX}|(conv[12]|downsample\.0|prelu)\.weight)"
    r"|fc\.(weight|bias))$"
)


@dataclass(frozen=True)
class LoadReport:
    """What a non-exact load did.

    Attributes:
        missing_keys: model keys the checkpoint lacks; they keep the model's initial values
            (with ``strict=True`` only VIB keys can be here).
        unexpected_keys: checkpoint keys the model lacks, ignored (empty when strict).
        mismatched_keys: keys present on both sides with different shapes, ignored (empty
            when strict).
    """

    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    mismatched_keys: tuple[str, ...]


def is_vib_key(key: str) -> bool:
    """Whether a state_dict key belongs to a VIB cell (sigma branch or softplus bias)."""
    return key.startswith("vib.") or ".vib." in key


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop leading ``module.`` / ``_orig_mod.`` (any number, any order) from every key."""
    stripped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise ValueError(f"state_dict key {key!r} is not a string")
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in stripped:
            raise ValueError(f"state_dict has key {name!r} twice once wrapper prefixes are removed")
        stripped[name] = value
    return stripped


def convert_arcface_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An arcface_torch iresnet state_dict, in facevib's key names (prefixes stripped).

    Raises:
        ValueError: a key that arcface_torch's iresnet does not write, or a non-tensor value.
    """
    converted = strip_wrapper_prefixes(state_dict)
    for key, value in converted.items():
        if not _ARCFACE_KEY.match(key):
            raise ValueError(f"key {key!r} is not an arcface_torch iresnet key")
        if not isinstance(value, Tensor):
            raise ValueError(f"value of key {key!r} is a {type(value).__name__}, not a tensor")
    return converted


def load_arcface_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True) -> LoadReport:
    """Load arcface_torch (or facevib) iresnet weights into ``model``; report what was not loaded.

    VIB keys (``*.vib.*``) may be absent from the checkpoint even when ``strict``: they are
    the sigma branches arcface_torch does not have, and keep the model's initialisation.

    Args:
        model: a facevib iResNet (any variant).
        state_dict: arcface_torch's ``backbone.pth`` contents, or a facevib backbone
            state_dict (VIB keys allowed); wrapper prefixes are stripped.
        strict: raise on unexpected keys, shape mismatches and missing non-VIB keys;
            ``False`` skips them and lists them in the report.

    Raises:
        ValueError: naming the offending keys and shapes (strict), or a key that is not a
            string.
    """
    incoming = strip_wrapper_prefixes(state_dict)
    own = model.state_dict()
    unexpected = tuple(key for key in incoming if key not in own)
    mismatched = tuple(
        key
        for key in incoming
        if key in own and (not isinstance(incoming[key], Tensor) or incoming[key].shape != own[key].shape)
    )
    missing = tuple(key for key in own if key not in incoming)
    if strict:
        if unexpected:
            raise ValueError(f"{len(unexpected)} checkpoint keys are not in the model, e.g. {list(unexpected[:5])}")
        if mismatched:
            details = ", ".join(
                f"{k}: checkpoint {_shape(incoming[k])} vs model {tuple(own[k].shape)}" for k in mismatched[:5]
            )
            raise ValueError(f"{len(mismatched)} checkpoint keys have the wrong shape: {details}")
        lacking = [key for key in missing if not is_vib_key(key)]
        if lacking:
            raise ValueError(f"checkpoint lacks {len(lacking)} non-VIB model keys, e.g. {lacking[:5]}")
    usable = {key: value for key, value in incoming.items() if key in own and key not in mismatched}
    model.load_state_dict(usable, strict=False)
    return LoadReport(missing_keys=missing, unexpected_keys=unexpected, mismatched_keys=mismatched)


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
