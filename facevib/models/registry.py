"""A plain name -> builder registry and ``create_model``.

Registered here: ``r18 r34 r50 r100 r200`` (arcface_torch iResNets), ``cellvib_r*`` (cellVIB) and
``deepvib_r*`` (Deep VIB), all built by one :class:`~facevib.models.iresnet.IResNet` class.
Other families register themselves when their module is imported (``import
facevib.experiments.models`` adds the research classifiers ``mlp``, ``inception``, ``vit`` and
``cnn``), so this module never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from facevib.models.iresnet import IRESNET_LAYERS, VARIANT_PREFIXES, IResNet, IResNetConfig

__all__ = ["create_model", "list_models", "register_model"]

ModelBuilder = Callable[..., nn.Module]
"""Called with the user's overrides as keyword arguments; returns the model."""

_REGISTRY: dict[str, ModelBuilder] = {}
_FAMILY: dict[str, str] = {}


def register_model(name: str, builder: ModelBuilder, family: str = "iresnet") -> None:
    """Add ``name`` to the registry under ``family``; a name can be registered once."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = builder
    _FAMILY[name] = family


def list_models(family: str | None = None) -> list[str]:
    """Registered model names in registration order, all of them or those of one ``family``.

    Families: ``iresnet`` (face backbones: plain, cellvib_, deepvib_; by depth), and those of
    modules imported so far (``mlp``, ``inception``, ``vit``, ``cnn`` from
    :mod:`facevib.experiments.models`).
    """
    return [name for name in _REGISTRY if family is None or _FAMILY[name] == family]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` in training mode, with overrides applied.

    Overrides for every iResNet: ``layers``, ``widths``, ``embedding_dim``, ``input_size``,
    ``dropout``; VIB models add ``beta``, ``beta_max``, ``beta_min``, ``sigma_bias_init``;
    cellVIB models add ``cells`` and ``sigma_ratio``. See
    :class:`~facevib.models.iresnet.IResNetConfig`.

    Raises:
        ValueError: unknown name or override, or an invalid override value (the message
            names it).
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(_REGISTRY)}")
    return builder(**overrides)


def _iresnet_builder(name: str, variant: str, layers: tuple[int, ...]) -> ModelBuilder:
    def build(**overrides: Any) -> IResNet:
        return IResNet(IResNetConfig.from_overrides(name, variant, layers, overrides), name)

    return build


for _variant, _prefix in VARIANT_PREFIXES.items():
    for _depth, _layers in IRESNET_LAYERS.items():
        register_model(_prefix + _depth, _iresnet_builder(_prefix + _depth, _variant, _layers))
