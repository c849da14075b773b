"""What the classification families with VIB cells (MLP, Inception, ViT) share.

Each family is one class with its variants as data (``plain``, ``deep``, ``cell``), like
:class:`~facevib.models.iresnet.IResNet`: ``forward(x)`` returns logits; ``forward(x,
return_kl=True)`` returns ``(logits, kl)`` with ``kl`` the per-cell batch-mean KL in nats,
shape (num_cells,), in depth order; :meth:`CellNetwork.kl_loss` weights it by beta_i.
:attr:`CellNetwork.layer_names` names the representation layers Z_1..Z_n in depth order,
the modules an information-plane recorder or the IFM regulariser hooks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from facevib.models.beta import beta_schedule
from facevib.models.registry import register_model

__all__ = [
    "VIB_FIELDS",
    "CellNetwork",
    "build_config",
    "check_positive_int",
    "check_vib_fields",
    "collect_kl",
    "resolve_cell_layers",
    "through_layer",
]

VIB_FIELDS = ("beta", "beta_max", "beta_min", "sigma_bias_init")


def check_positive_int(field: str, value: object) -> int:
    """``value`` if it is a positive int (bools excluded), else ValueError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive int, got {value!r}")
    return value


def check_vib_fields(config: Any) -> None:
    """Validate the sigma bias and the beta spec of a config that has VIB_FIELDS and num_cells."""
    if not isinstance(config.sigma_bias_init, int | float) or not math.isfinite(config.sigma_bias_init):
        raise ValueError(f"sigma_bias_init must be a finite number, got {config.sigma_bias_init!r}")
    if isinstance(config.beta, Sequence) and not isinstance(config.beta, str):
        object.__setattr__(config, "beta", tuple(config.beta))
    beta_schedule(config.beta, config.num_cells, config.beta_max, config.beta_min)


def resolve_cell_layers(cells: str | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Layer indices selected by ``"all"``, ``"last:K"`` (the last K layers) or explicit indices.

    Raises:
        ValueError: unknown spec, index out of range or repeated, or an empty selection.
    """
    if isinstance(cells, str):
        if cells == "all":
            return tuple(range(num_layers))
        head, _, count = cells.partition(":")
        if head == "last" and count.isdigit() and 1 <= int(count) <= num_layers:
            return tuple(range(num_layers - int(count), num_layers))
        raise ValueError(f"cells must be 'all', 'last:K' with K in 1..{num_layers}, or layer indices; got {cells!r}")
    indices = tuple(cells)
    if not indices:
        raise ValueError("cells selects no layer; use the plain model for a network without VIB cells")
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_layers:
            raise ValueError(f"cells index {index!r} is outside 0..{num_layers - 1}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"cells lists a layer twice: {list(indices)}")
    return tuple(sorted(indices))


def build_config(
    config_cls: type, name: str, variant: str, allowed: Sequence[str], overrides: Mapping[str, Any]
) -> Any:
    """``config_cls(variant=variant, **overrides)`` after rejecting overrides not in ``allowed``."""
    for key in overrides:
        if key not in allowed:
            raise ValueError(f"model {name!r} has no override {key!r}; allowed: {', '.join(allowed)}")
    return config_cls(variant=variant, **overrides)


def collect_kl(kls: list[Tensor], reference: Tensor) -> Tensor:
    """Stack per-cell KLs, or an empty float32 vector on ``reference``'s device for no cells."""
    return torch.stack(kls) if kls else reference.new_zeros(0, dtype=torch.float32)


def through_layer(layer: nn.Module, h: Tensor, return_kl: bool, kls: list[Tensor]) -> Tensor:
    """``layer(h)``; with ``return_kl``, a cell layer's KL (``layer.vib`` set) is appended to ``kls``."""
    if return_kl and layer.vib is not None:
        h, kl = layer(h, return_kl=True)
        kls.append(kl)
        return h
    return layer(h)


def _plain(value: object) -> object:
    """Tuples to lists (recursively), so configs are JSON and weights_only friendly."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class CellNetwork(nn.Module):
    """Base of the classification families: betas, ``kl_loss``, ``arch`` and layer names.

    Subclasses set ``self.config`` (a frozen dataclass with ``variant`` and ``num_cells``),
    call :meth:`_register_betas` and list their representation layers in ``_layer_names``.
    """

    config: Any
    config_class: type  # the family's frozen config dataclass
    _fields_by_variant: Mapping[str, tuple[str, ...]]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._layer_names: tuple[str, ...] = ()

    @classmethod
    def from_overrides(cls, name: str, variant: str, overrides: dict[str, Any]) -> CellNetwork:
        """The registered model ``name`` with user overrides (unknown ones raise ValueError)."""
        return cls(build_config(cls.config_class, name, variant, cls._fields_by_variant[variant], overrides), name)

    def _register_betas(self) -> None:
        cfg = self.config
        fields = {f.name for f in dataclasses.fields(cfg)}
        if "beta" in fields:
            betas = beta_schedule(cfg.beta, cfg.num_cells, cfg.beta_max, cfg.beta_min)
        else:
            betas = torch.zeros(0)
        # Not persistent: the betas follow from `arch`.
        self.register_buffer("betas", betas, persistent=False)

    @property
    def num_cells(self) -> int:
        """Number of VIB cells (length of the KL vector and of ``betas``)."""
        return int(self.config.num_cells)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Module names of the representation layers Z_1..Z_n in depth order."""
        return self._layer_names

    @property
    def arch(self) -> dict[str, Any]:
        """``{"name", "kwargs"}``: ``create_model(arch["name"], **arch["kwargs"])`` rebuilds it."""
        fields = self._fields_by_variant[self.config.variant]
        return {"name": self.name, "kwargs": {key: _plain(getattr(self.config, key)) for key in fields}}

    def kl_loss(self, kl: Tensor) -> Tensor:
        """sum_i beta_i * kl_i, the regulariser added to the classification loss (cellVIB eq. 6)."""
        if kl.shape != self.betas.shape:
            raise ValueError(f"kl_loss: kl has shape {tuple(kl.shape)}, expected ({self.num_cells},)")
        return (self.betas.to(kl.dtype) * kl).sum()


def register_family(cls: Callable[..., CellNetwork], variants: Mapping[str, str], family: str) -> None:
    """Register every ``variant -> name`` of the family class ``cls`` in :mod:`facevib.models`.

    Each research family calls this when its module is imported, so the face core's registry
    never imports them (timm's ``register_model`` pattern).
    """
    for variant, name in variants.items():
        register_model(name, _family_builder(cls, name, variant), family=family)


def _family_builder(cls: Any, name: str, variant: str) -> Callable[..., nn.Module]:
    return lambda **overrides: cls.from_overrides(name, variant, overrides)
