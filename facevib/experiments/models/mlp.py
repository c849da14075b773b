"""The MLP of the cellVIB paper's MNIST experiment (§4.1): 784-1024-1024-K, then a K->C classifier.

One class, variants as data:

* ``plain`` (``mlp``): the deterministic network, ReLU after each hidden layer, a linear
  K-dimensional bottleneck (K = 256 in the paper) and a linear classifier.
* ``deep`` (``deepvib_mlp``): Deep VIB (Alemi et al., "Deep Variational Information
  Bottleneck", arXiv:1612.00410), one VIB cell at the bottleneck layer only (the paper's
  limit beta_1 = beta_2 -> 0).
* ``cell`` (``cellvib_mlp``): every layer is a VIB cell (paper eq. 7, "cellVIB-v2");
  ``cells=(1, 2)`` gives "cellVIB-v1" (second and third layers only).

Each cell's sigma transform f_sigma^i has the structure of its mean transform f_mu^i (a
Linear of the same shape, paper §4.1); sigma = softplus(f_sigma(x) + b), b from -5. The
sample of a hidden cell is taken after its ReLU, the mean being the layer's output.
Any input size: ``input_dim`` is the flattened size of one sample ((B, D) or images).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from facevib.experiments.models.cellnet import (
    VIB_FIELDS,
    CellNetwork,
    check_positive_int,
    check_vib_fields,
    collect_kl,
    register_family,
    resolve_cell_layers,
    through_layer,
)
from facevib.models.beta import BetaSpec
from facevib.models.vib import SIGMA_BIAS_INIT, VIBCell

__all__ = ["MLP_VARIANTS", "MLPConfig", "MLPLayer", "VIBMLP"]

MLP_VARIANTS: dict[str, str] = {"plain": "mlp", "deep": "deepvib_mlp", "cell": "cellvib_mlp"}

_COMMON = ("input_dim", "hidden", "bottleneck", "num_classes")
_FIELDS_BY_VARIANT = {
    "plain": _COMMON,
    "deep": _COMMON + VIB_FIELDS,
    "cell": _COMMON + ("cells",) + VIB_FIELDS,
}


@dataclass(frozen=True)
class MLPConfig:
    """An MLP with optional VIB cells; validated once, in ``__post_init__``."""

    variant: str = "plain"  # "plain" | "deep" | "cell"; fixed by the registered name
    input_dim: int = 784  # flattened input size (MNIST 28x28)
    hidden: tuple[int, ...] = (1024, 1024)  # hidden widths, each followed by ReLU
    bottleneck: int = 256  # K, the representation the classifier reads (paper: 256)
    num_classes: int = 10
    # cell variant: which layers (0-based over hidden layers + bottleneck) are VIB cells.
    cells: str | tuple[int, ...] = "all"
    # The MNIST experiment sweeps one beta for all cells, hence a constant default.
    beta: BetaSpec = "constant"
    beta_max: float = 1e-3
    beta_min: float = 0.0
    sigma_bias_init: float = SIGMA_BIAS_INIT

    def __post_init__(self) -> None:
        if self.variant not in MLP_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(MLP_VARIANTS)}, got {self.variant!r}")
        for field in ("input_dim", "bottleneck", "num_classes"):
            check_positive_int(field, getattr(self, field))
        if isinstance(self.hidden, str) or not isinstance(self.hidden, tuple | list):
            raise ValueError(f"hidden must be a list of positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(check_positive_int("hidden", w) for w in self.hidden))
        if not isinstance(self.cells, str):
            object.__setattr__(self, "cells", tuple(self.cells))
        resolve_cell_layers(self.cells, self.num_layers)
        check_vib_fields(self)

    @property
    def num_layers(self) -> int:
        """Hidden layers plus the bottleneck (the paper's i = 1, 2, 3)."""
        return len(self.hidden) + 1

    @property
    def cell_layers(self) -> tuple[int, ...]:
        """Indices of the layers that are VIB cells."""
        if self.variant == "plain":
            return ()
        if self.variant == "deep":
            return (self.num_layers - 1,)
        return resolve_cell_layers(self.cells, self.num_layers)

    @property
    def num_cells(self) -> int:
        return len(self.cell_layers)


class MLPLayer(nn.Module):
    """Linear (+ ReLU), optionally the mean transform of a VIB cell with a Linear sigma."""

    def __init__(self, in_dim: int, out_dim: int, relu: bool, cell: bool, sigma_bias_init: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.relu = relu
        self.vib: VIBCell | None = None
        if cell:
            self.vib = VIBCell(None, nn.Linear(in_dim, out_dim), out_dim, channel_dim=-1, bias_init=sigma_bias_init)

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Layer output; ``(output, kl)`` when ``return_kl`` (only on a cell)."""
        mu = self.fc(x)
        if self.relu:
            mu = mu.relu()
        if self.vib is None:
            if return_kl:
                raise ValueError("return_kl=True on a layer that is not a VIB cell")
            return mu
        return self.vib.forward_with_mean(x, mu, return_kl)


class VIBMLP(CellNetwork):
    """(B, input_dim) or (B, ...) inputs flattened -> (B, num_classes) logits.

    Build it with :func:`facevib.models.create_model` (``mlp``, ``deepvib_mlp``,
    ``cellvib_mlp``). Layers are ``layers.0`` .. ``layers.{n-1}`` (the last is the
    K-dimensional bottleneck) and ``classifier``.
    """

    config_class = MLPConfig
    _fields_by_variant = _FIELDS_BY_VARIANT

    def __init__(self, config: MLPConfig, name: str) -> None:
        super().__init__(name)
        self.config = config
        widths = (config.input_dim, *config.hidden, config.bottleneck)
        cells = set(config.cell_layers)
        self.layers = nn.ModuleList(
            MLPLayer(widths[i], widths[i + 1], i < len(config.hidden), i in cells, config.sigma_bias_init)
            for i in range(config.num_layers)
        )
        self.classifier = nn.Linear(config.bottleneck, config.num_classes)
        self._layer_names = tuple(f"layers.{i}" for i in range(config.num_layers))
        self._register_betas()

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_classes); with ``return_kl``, ``(logits, kl)``, kl of shape (num_cells,)."""
        h = x.flatten(1)
        if h.shape[1] != self.config.input_dim:
            raise ValueError(f"{self.name}: expected {self.config.input_dim} input values per sample, got {h.shape[1]}")
        kls = []
        for layer in self.layers:
            h = through_layer(layer, h, return_kl, kls)
        logits = self.classifier(h)
        return (logits, collect_kl(kls, logits)) if return_kl else logits


register_family(VIBMLP, MLP_VARIANTS, family="mlp")
