"""The engine's extension points: auxiliary losses and callbacks that register by name.

A plug-in module (named in ``run.plugins``; the trainer imports each before building)
calls :func:`register_aux_loss` and :func:`register_callback` at import time, the way
timm's ``register_model`` works. The engine itself imports no plug-in: research code such
as IFM and the information-plane recorder depends on the engine, never the reverse.

* An aux-loss builder ``(cfg, backbone, device) -> {name: module}`` returns the auxiliary
  losses a config asks for (empty when it asks for none); each module follows the contract
  of :mod:`facevib.engine.task`.
* A callback builder ``(cfg, trainer) -> Callback | None`` returns a callback the loop
  calls (see :mod:`facevib.engine.callbacks`), or None when the config does not ask for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from facevib.config import TrainConfig

__all__ = [
    "AuxLossBuilder",
    "CallbackBuilder",
    "build_aux_losses",
    "build_plugin_callbacks",
    "import_plugins",
    "register_aux_loss",
    "register_callback",
]


class AuxLossBuilder(Protocol):
    def __call__(self, cfg: TrainConfig, backbone: nn.Module, device: torch.device) -> dict[str, nn.Module]: ...


class CallbackBuilder(Protocol):
    def __call__(self, cfg: TrainConfig, trainer: Any) -> Any | None: ...


_AUX_LOSSES: dict[str, AuxLossBuilder] = {}
_CALLBACKS: dict[str, CallbackBuilder] = {}


def _register(table: dict[str, Any], kind: str, name: str) -> Callable[[Any], Any]:
    def decorate(builder: Any) -> Any:
        if table.get(name, builder) is not builder:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = builder
        return builder

    return decorate


def register_aux_loss(name: str) -> Callable[[AuxLossBuilder], AuxLossBuilder]:
    """Decorator: register an auxiliary-loss builder under ``name``."""
    return _register(_AUX_LOSSES, "auxiliary loss", name)


def register_callback(name: str) -> Callable[[CallbackBuilder], CallbackBuilder]:
    """Decorator: register a callback builder under ``name``."""
    return _register(_CALLBACKS, "callback", name)


def import_plugins(modules: Iterable[str]) -> None:
    """Import each plug-in module (registration happens at import); a missing one is named."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise ValueError(f"run.plugins: cannot import {module!r} ({exc})") from exc


def build_aux_losses(cfg: TrainConfig, backbone: nn.Module, device: torch.device) -> dict[str, nn.Module]:
    """Every registered builder's auxiliary losses for ``cfg``, in registration order."""
    losses: dict[str, nn.Module] = {}
    for builder in _AUX_LOSSES.values():
        losses.update(builder(cfg, backbone, device))
    return losses


def build_plugin_callbacks(cfg: TrainConfig, trainer: Any) -> list[Any]:
    """The callbacks the registered builders make for ``cfg`` (those that return one)."""
    return [cb for builder in _CALLBACKS.values() if (cb := builder(cfg, trainer)) is not None]
