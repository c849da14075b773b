"""A Vision Transformer whose attention branch is a VIB cell (cellVIB supplement, §1 and Table 1).

Pre-norm encoder blocks ``x = x + A(LN(x)); x = x + FFN(LN(x))``. In the cell variant the
multi-head attention branch A is the mean transform of a VIB cell and a second, narrower
attention branch gives sigma; the sample is taken before the residual sum, as for the
residual networks of the paper. The supplement found attention-only cells best
(ImageNet top-1 86.9 vs 86.3 for attention + FFN cells and 85.5 for FFN-only, ViT-L/16);
``cell_on`` selects "attn" (default), "ffn" or "both" so all three can be measured.

Variants as data: ``plain`` (``vit_tiny``) and ``cell`` (``cellvib_vit_tiny``); the
defaults are ViT-Ti/16 (embed 192, depth 12, 3 heads) on 224x224 images, classification
from the class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facevib.experiments.models.cellnet import (
    VIB_FIELDS,
    CellNetwork,
    check_positive_int,
    check_vib_fields,
    collect_kl,
    register_family,
    resolve_cell_layers,
)
from facevib.models.beta import BetaSpec
from facevib.models.vib import SIGMA_BIAS_INIT, VIBCell

__all__ = ["CELL_PLACEMENTS", "VIT_VARIANTS", "Attention", "EncoderBlock", "ViTConfig", "VisionTransformer"]

VIT_VARIANTS: dict[str, str] = {"plain": "vit_tiny", "cell": "cellvib_vit_tiny"}
CELL_PLACEMENTS = ("attn", "ffn", "both")

_COMMON = ("image_size", "patch_size", "in_channels", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes")
_FIELDS_BY_VARIANT = {"plain": _COMMON, "cell": _COMMON + ("cells", "cell_on", "sigma_ratio") + VIB_FIELDS}


@dataclass(frozen=True)
class ViTConfig:
    """A ViT encoder + class-token classifier; validated in ``__post_init__``."""

    variant: str = "plain"  # "plain" | "cell"; fixed by the registered name
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    cells: str | tuple[int, ...] = "all"  # which encoder blocks have cells (cell variant)
    cell_on: str = "attn"  # "attn" | "ffn" | "both": the branch(es) made VIB cells
    # sigma branch inner width / embed_dim (rounded to a multiple of num_heads)
    sigma_ratio: float = 0.25
    # KL sums over tokens x channels (~38k elements per block at the defaults): small beta.
    beta: BetaSpec = "constant"
    beta_max: float = 1e-5
    beta_min: float = 0.0
    sigma_bias_init: float = SIGMA_BIAS_INIT

    def __post_init__(self) -> None:
        if self.variant not in VIT_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VIT_VARIANTS)}, got {self.variant!r}")
        for field in ("image_size", "patch_size", "in_channels", "embed_dim", "depth", "num_heads", "num_classes"):
            check_positive_int(field, getattr(self, field))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if not isinstance(self.mlp_ratio, int | float) or not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
        if self.cell_on not in CELL_PLACEMENTS:
            raise ValueError(f"cell_on must be one of {', '.join(CELL_PLACEMENTS)}, got {self.cell_on!r}")
        if not isinstance(self.sigma_ratio, int | float) or not self.sigma_ratio > 0:
            raise ValueError(f"sigma_ratio must be a number > 0, got {self.sigma_ratio!r}")
        if not isinstance(self.cells, str):
            object.__setattr__(self, "cells", tuple(self.cells))
        resolve_cell_layers(self.cells, self.depth)
        check_vib_fields(self)

    @property
    def cell_blocks(self) -> tuple[int, ...]:
        return () if self.variant == "plain" else resolve_cell_layers(self.cells, self.depth)

    @property
    def cells_per_block(self) -> int:
        return 2 if self.cell_on == "both" else 1

    @property
    def num_cells(self) -> int:
        """VIB cells in depth order: per cell block, the attention cell before the FFN cell."""
        return len(self.cell_blocks) * self.cells_per_block

    @property
    def sigma_width(self) -> int:
        """Inner width of the sigma branches, a multiple of num_heads."""
        heads = self.num_heads
        return max(heads, round(self.embed_dim * self.sigma_ratio / heads) * heads)


class Attention(nn.Module):
    """Multi-head self-attention of inner width ``inner_dim`` projected back to ``dim``."""

    def __init__(self, dim: int, inner_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * inner_dim)
        self.proj = nn.Linear(inner_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


def _ffn(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; ``attn_vib`` / ``ffn_vib`` make a branch a VIB cell."""

    def __init__(self, cfg: ViTConfig, attn_cell: bool, ffn_cell: bool) -> None:
        super().__init__()
        dim, hidden = cfg.embed_dim, round(cfg.embed_dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _ffn(dim, hidden)
        self.attn_vib: VIBCell | None = None
        self.ffn_vib: VIBCell | None = None
        if attn_cell:
            sigma = Attention(dim, cfg.sigma_width, cfg.num_heads)
            self.attn_vib = VIBCell(None, sigma, dim, channel_dim=-1, bias_init=cfg.sigma_bias_init)
        if ffn_cell:
            sigma = _ffn(dim, max(1, round(hidden * cfg.sigma_ratio)))
            self.ffn_vib = VIBCell(None, sigma, dim, channel_dim=-1, bias_init=cfg.sigma_bias_init)

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Block output; with ``return_kl``, ``(output, [kl per cell of this block])``."""
        kls: list[Tensor] = []
        x = x + self._branch(self.attn, self.attn_vib, self.norm1(x), return_kl, kls)
        x = x + self._branch(self.ffn, self.ffn_vib, self.norm2(x), return_kl, kls)
        return (x, kls) if return_kl else x

    @staticmethod
    def _branch(mean: nn.Module, vib: VIBCell | None, h: Tensor, return_kl: bool, kls: list[Tensor]) -> Tensor:
        mu = mean(h)
        if vib is None:
            return mu
        if return_kl:
            sample, kl = vib.forward_with_mean(h, mu, return_kl=True)
            kls.append(kl)
            return sample
        return vib.forward_with_mean(h, mu)


class VisionTransformer(CellNetwork):
    """(B, C, S, S) images -> (B, num_classes) logits via the class token.

    Modules: ``patch_embed``, ``blocks.0`` .. ``blocks.{depth-1}`` (representation layers,
    token sequences (B, 1 + patches, embed_dim)), ``norm``, ``head``.
    """

    config_class = ViTConfig
    _fields_by_variant = _FIELDS_BY_VARIANT

    def __init__(self, config: ViTConfig, name: str) -> None:
        super().__init__(name)
        self.config = config
        dim = config.embed_dim
        num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = nn.Conv2d(config.in_channels, dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + num_patches, dim) * 0.02)
        cells = set(config.cell_blocks)
        attn, ffn = config.cell_on in ("attn", "both"), config.cell_on in ("ffn", "both")
        self.blocks = nn.ModuleList(
            EncoderBlock(config, attn and i in cells, ffn and i in cells) for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, config.num_classes)
        self._layer_names = tuple(f"blocks.{i}" for i in range(config.depth))
        self._register_betas()

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_classes); with ``return_kl``, ``(logits, kl)``, kl of shape (num_cells,)."""
        cfg = self.config
        if not torch.jit.is_tracing():
            expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
            if x.dim() != 4 or tuple(x.shape[1:]) != expected:
                raise ValueError(
                    f"{self.name}: expected input (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
                )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        kls: list[Tensor] = []
        for block in self.blocks:
            if return_kl:
                h, block_kls = block(h, return_kl=True)
                kls.extend(block_kls)
            else:
                h = block(h)
        logits = self.head(self.norm(h[:, 0]))
        return (logits, collect_kl(kls, logits)) if return_kl else logits


register_family(VisionTransformer, VIT_VARIANTS, family="vit")
