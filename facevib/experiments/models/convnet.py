"""The classification CNN of the information-flow-maximisation paper (Table 1).

"Learning to Find Correlated Features by Maximizing Information Flow in Convolutional
Neural Networks": four Conv3x3-BN-LeakyReLU(0.2) layers of 32, 64, 128, 128 channels,
each followed by a 2x2 max-pool, then FC(128 * 2 * 2 -> 10) on 32x32 inputs. The conv
layers are the modules ``conv1`` .. ``conv4`` (before their pools), the feature maps the
IFM regulariser pairs as (conv1, conv2), (conv2, conv3), (conv3, conv4).

Registered as ``ifm_cnn`` (family ``cnn``); it has no VIB cells, and ``forward(x,
return_kl=True)`` returns an empty KL so it trains in the same loop as the cell models.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from facevib.experiments.models.cellnet import (
    CellNetwork,
    check_positive_int,
    collect_kl,
    register_family,
)

__all__ = ["ConvNetConfig", "IFMConvNet"]

_FIELDS = ("in_channels", "input_size", "widths", "num_classes")
_LEAKY_SLOPE = 0.2  # shared by all layers (paper Table 1)


@dataclass(frozen=True)
class ConvNetConfig:
    """Widths and input of the IFM paper's CNN; validated in ``__post_init__``."""

    variant: str = "plain"
    in_channels: int = 1
    input_size: int = 32  # square side; divisible by 2 ** len(widths)
    widths: tuple[int, ...] = (32, 64, 128, 128)
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.variant != "plain":
            raise ValueError(f"variant must be 'plain', got {self.variant!r}")
        for field in ("in_channels", "input_size", "num_classes"):
            check_positive_int(field, getattr(self, field))
        if isinstance(self.widths, str) or not isinstance(self.widths, tuple | list) or not self.widths:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {self.widths!r}")
        object.__setattr__(self, "widths", tuple(check_positive_int("widths", w) for w in self.widths))
        if self.input_size % (2 ** len(self.widths)):
            raise ValueError(
                f"input_size {self.input_size} is not divisible by 2^{len(self.widths)} (one pool per layer)"
            )

    @property
    def num_cells(self) -> int:
        return 0


class IFMConvNet(CellNetwork):
    """(B, in_channels, S, S) -> (B, num_classes) logits; ``conv1`` .. ``convN`` then ``fc``."""

    config_class = ConvNetConfig
    _fields_by_variant = {"plain": _FIELDS}

    def __init__(self, config: ConvNetConfig, name: str) -> None:
        super().__init__(name)
        self.config = config
        in_ch = config.in_channels
        for index, width in enumerate(config.widths, start=1):
            layer = nn.Sequential(
                nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(_LEAKY_SLOPE)
            )
            self.add_module(f"conv{index}", layer)
            in_ch = width
        self.pool = nn.MaxPool2d(2)
        side = config.input_size // 2 ** len(config.widths)
        self.fc = nn.Linear(in_ch * side * side, config.num_classes)
        self._layer_names = tuple(f"conv{i}" for i in range(1, len(config.widths) + 1))
        self._register_betas()

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; with ``return_kl``, ``(logits, empty kl)``."""
        h = x
        for name in self._layer_names:
            h = self.pool(getattr(self, name)(h))
        logits = self.fc(h.flatten(1))
        return (logits, collect_kl([], logits)) if return_kl else logits


register_family(IFMConvNet, {"plain": "ifm_cnn"}, family="cnn")
