"""An Inception-style network whose multi-branch blocks can be VIB cells (cellVIB §3.4, Fig. 3).

For a non-residual multi-branch module the paper replaces the *whole* Inception module by
one equivalent sampled feature map: the concatenated output of the four branches is the
cell's mean, and a second, cheaper transform of the block input gives sigma.

One class, variants as data: ``plain`` (``inception``) and ``cell``
(``cellvib_inception``, every block a cell unless ``cells`` says otherwise).

A block of width ``w`` splits its channels as GoogLeNet's block 3a does (64/128/32/32 of
256): 1x1 -> w/4; 1x1 (3w/8) -> 3x3 -> w/2; 1x1 (w/16) -> two 3x3 (the 5x5 field) -> w/8;
3x3 max-pool -> 1x1 -> w/8. Every conv is Conv-BN-ReLU. The sigma transform is
Conv1x1(in -> w * sigma_ratio)-BN-ReLU-Conv3x3(-> w), a quarter-width branch with a
full-width last conv as in the paper's Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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

__all__ = ["INCEPTION_VARIANTS", "InceptionBlock", "InceptionConfig", "InceptionNet"]

INCEPTION_VARIANTS: dict[str, str] = {"plain": "inception", "cell": "cellvib_inception"}

_COMMON = ("in_channels", "stem_width", "widths", "pool_after", "num_classes")
_FIELDS_BY_VARIANT = {"plain": _COMMON, "cell": _COMMON + ("cells", "sigma_ratio") + VIB_FIELDS}
_WIDTH_QUANTUM = 16  # the 5x5 reduction is w/16


@dataclass(frozen=True)
class InceptionConfig:
    """An Inception network for small images (CIFAR/PACS-sized); validated in ``__post_init__``.

    Any input side works: global average pooling precedes the classifier.
    """

    variant: str = "plain"  # "plain" | "cell"; fixed by the registered name
    in_channels: int = 3
    stem_width: int = 64  # Conv3x3-BN-ReLU stem
    widths: tuple[int, ...] = (256, 256, 480, 480, 512)  # output channels per block, multiples of 16
    pool_after: tuple[int, ...] = (1, 3)  # blocks followed by a 2x2 max-pool
    num_classes: int = 10
    cells: str | tuple[int, ...] = "all"  # which blocks are VIB cells (cell variant)
    sigma_ratio: float = 0.25  # sigma branch inner width / block width (paper Table 1: 1/4)
    beta: BetaSpec = "constant"
    beta_max: float = 1e-3
    beta_min: float = 0.0
    sigma_bias_init: float = SIGMA_BIAS_INIT

    def __post_init__(self) -> None:
        if self.variant not in INCEPTION_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(INCEPTION_VARIANTS)}, got {self.variant!r}")
        for field in ("in_channels", "stem_width", "num_classes"):
            check_positive_int(field, getattr(self, field))
        if isinstance(self.widths, str) or not isinstance(self.widths, tuple | list) or not self.widths:
            raise ValueError(f"widths must be a non-empty list of block widths, got {self.widths!r}")
        object.__setattr__(self, "widths", tuple(check_positive_int("widths", w) for w in self.widths))
        bad = [w for w in self.widths if w % _WIDTH_QUANTUM]
        if bad:
            raise ValueError(f"widths must be multiples of {_WIDTH_QUANTUM}, got {bad[0]}")
        object.__setattr__(self, "pool_after", tuple(self.pool_after))
        for index in self.pool_after:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.widths):
                raise ValueError(f"pool_after index {index!r} is outside 0..{len(self.widths) - 1}")
        if not isinstance(self.sigma_ratio, int | float) or not self.sigma_ratio > 0:
            raise ValueError(f"sigma_ratio must be a number > 0, got {self.sigma_ratio!r}")
        if not isinstance(self.cells, str):
            object.__setattr__(self, "cells", tuple(self.cells))
        resolve_cell_layers(self.cells, len(self.widths))
        check_vib_fields(self)

    @property
    def cell_blocks(self) -> tuple[int, ...]:
        return () if self.variant == "plain" else resolve_cell_layers(self.cells, len(self.widths))

    @property
    def num_cells(self) -> int:
        return len(self.cell_blocks)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated; optionally the mean transform of one VIB cell."""

    def __init__(self, in_ch: int, width: int, sigma_width: int | None, sigma_bias_init: float) -> None:
        super().__init__()
        b1, b3, r3, b5, r5 = width // 4, width // 2, 3 * width // 8, width // 8, width // 16
        self.branch1 = _conv_bn_relu(in_ch, b1, 1)
        self.branch3 = nn.Sequential(_conv_bn_relu(in_ch, r3, 1), _conv_bn_relu(r3, b3, 3))
        self.branch5 = nn.Sequential(_conv_bn_relu(in_ch, r5, 1), _conv_bn_relu(r5, b5, 3), _conv_bn_relu(b5, b5, 3))
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(in_ch, width - b1 - b3 - b5, 1)
        )
        self.vib: VIBCell | None = None
        if sigma_width is not None:
            sigma = nn.Sequential(_conv_bn_relu(in_ch, sigma_width, 1), nn.Conv2d(sigma_width, width, 3, padding=1))
            self.vib = VIBCell(None, sigma, width, bias_init=sigma_bias_init)

    def mean(self, x: Tensor) -> Tensor:
        """The Inception module itself: the cell's mean feature map."""
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Block output; ``(output, kl)`` when ``return_kl`` (only on a cell)."""
        mu = self.mean(x)
        if self.vib is None:
            if return_kl:
                raise ValueError("return_kl=True on a block that is not a VIB cell")
            return mu
        return self.vib.forward_with_mean(x, mu, return_kl)


class InceptionNet(CellNetwork):
    """(B, in_channels, S, S) images -> (B, num_classes) logits.

    Modules: ``stem``, ``blocks.0`` .. ``blocks.{n-1}`` (the representation layers),
    ``classifier`` after global average pooling.
    """

    config_class = InceptionConfig
    _fields_by_variant = _FIELDS_BY_VARIANT

    def __init__(self, config: InceptionConfig, name: str) -> None:
        super().__init__(name)
        self.config = config
        self.stem = _conv_bn_relu(config.in_channels, config.stem_width, 3)
        cells = set(config.cell_blocks)
        blocks, in_ch = [], config.stem_width
        for index, width in enumerate(config.widths):
            sigma_width = max(1, round(width * config.sigma_ratio)) if index in cells else None
            blocks.append(InceptionBlock(in_ch, width, sigma_width, config.sigma_bias_init))
            in_ch = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Linear(in_ch, config.num_classes)
        self._pool_after = frozenset(config.pool_after)
        self._layer_names = tuple(f"blocks.{i}" for i in range(len(blocks)))
        self._register_betas()

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_classes); with ``return_kl``, ``(logits, kl)``, kl of shape (num_cells,)."""
        cfg = self.config
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != cfg.in_channels):
            raise ValueError(f"{self.name}: expected input (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        h = self.stem(x)
        kls = []
        for index, block in enumerate(self.blocks):
            h = through_layer(block, h, return_kl, kls)
            if index in self._pool_after:
                h = self.pool(h)
        logits = self.classifier(h.mean(dim=(2, 3)))
        return (logits, collect_kl(kls, logits)) if return_kl else logits


register_family(InceptionNet, INCEPTION_VARIANTS, family="inception")
