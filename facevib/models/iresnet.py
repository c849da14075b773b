"""iResNet face backbones (arcface_torch's ``iresnet*``) with optional cellVIB or Deep VIB.

One class, variants as data:

* ``plain``  (``r18`` ... ``r200``): arcface_torch's network. Stem conv3x3(3->64)-BN-PReLU at
  full resolution; four stages of ``IBasicBlock`` (BN-conv3x3-BN-PReLU-conv3x3(stride)-BN
  plus identity), each stage starting with stride 2; head BN2d-flatten-dropout-FC-BN1d to
  the embedding. The state_dict uses arcface_torch's key names, so their ``backbone.pth``
  loads with ``strict=True``.
* ``cell``   (``cellvib_r*``): the residual branch of each selected block is the mean
  transform of a :class:`~facevib.models.vib.VIBCell` (cellVIB paper, Fig. 4): its sample is
  taken before the sum with the identity. The sigma transform has the same shape as the
  residual branch with inner width ``planes * sigma_ratio`` (paper Table 1: 64+16, ...).
* ``deep``   (``deepvib_r*``): Deep VIB (Alemi et al.), one VIB at the embedding: the mu
  head is the plain head, the sigma head is pooled BN2d-avgpool-FC-BN1d.

Papers: cellVIB is Zhai, Ju, Lan, Xiao, "Cell Variational Information Bottleneck Network",
arXiv:2403.15082 (the arXiv version was withdrawn); Deep VIB is Alemi, Fischer, Dillon, Murphy,
"Deep Variational Information Bottleneck", arXiv:1612.00410.

VIB parameters live under ``*.vib.*`` keys, apart from arcface_torch's names.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from facevib.models.beta import BETA_MAX, BETA_MIN, BetaSpec, beta_schedule
from facevib.models.shared_input import BranchHead, can_merge, merged_branch_heads, merging_pays
from facevib.models.vib import SIGMA_BIAS_INIT, VIBCell

__all__ = [
    "IRESNET_LAYERS",
    "VARIANT_PREFIXES",
    "IBasicBlock",
    "IResNet",
    "IResNetConfig",
    "resolve_cells",
]

# arcface_torch's depths (backbones/iresnet.py).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
VARIANT_PREFIXES: dict[str, str] = {"plain": "", "cell": "cellvib_", "deep": "deepvib_"}

_NUM_STAGES = 4
_DOWNSAMPLING = 2**_NUM_STAGES  # every stage starts with stride 2
_BN_EPS = 1e-5
# arcface_torch initialises every conv with N(0, 0.1); kept so r-models train as theirs do.
_CONV_INIT_STD = 0.1

_COMMON_FIELDS = ("layers", "widths", "embedding_dim", "input_size", "dropout")
_VIB_FIELDS = ("beta", "beta_max", "beta_min", "sigma_bias_init")
_FIELDS_BY_VARIANT: dict[str, tuple[str, ...]] = {
    "plain": _COMMON_FIELDS,
    "cell": _COMMON_FIELDS + ("cells", "sigma_ratio") + _VIB_FIELDS,
    "deep": _COMMON_FIELDS + _VIB_FIELDS,
}


@dataclass(frozen=True)
class IResNetConfig:
    """Everything that defines an iResNet; validated once, in ``__post_init__``."""

    variant: str = "plain"  # "plain" | "cell" | "deep"; fixed by the registered name
    layers: tuple[int, ...] = IRESNET_LAYERS["r18"]  # blocks per stage
    widths: tuple[int, ...] = (64, 128, 256, 512)  # channels per stage; the stem uses widths[0]
    embedding_dim: int = 512
    input_size: int = 112  # square input side; the head's FC sees (input_size / 16)^2 positions
    dropout: float = 0.0  # arcface_torch's default; the paper's face setting uses 0.4
    # Which blocks are VIB cells: "all", "last:K" (every block of the last K stages) or
    # explicit global block indices (0-based over all stages in depth order).
    cells: str | tuple[int, ...] = "all"
    sigma_ratio: float = 0.25  # inner width of the sigma branch / block width (paper: 1/4)
    beta: BetaSpec = "linear"  # see facevib.models.beta.beta_schedule
    beta_max: float = BETA_MAX
    beta_min: float = BETA_MIN
    sigma_bias_init: float = SIGMA_BIAS_INIT

    def __post_init__(self) -> None:
        if self.variant not in VARIANT_PREFIXES:
            raise ValueError(f"variant must be one of {sorted(VARIANT_PREFIXES)}, got {self.variant!r}")
        object.__setattr__(self, "layers", _positive_ints("layers", self.layers))
        object.__setattr__(self, "widths", _positive_ints("widths", self.widths))
        if not _is_int(self.embedding_dim) or self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be a positive int, got {self.embedding_dim!r}")
        if not _is_int(self.input_size) or self.input_size <= 0 or self.input_size % _DOWNSAMPLING:
            raise ValueError(f"input_size must be a positive multiple of {_DOWNSAMPLING}, got {self.input_size!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.sigma_ratio, int | float) or not 0.0 < self.sigma_ratio:
            raise ValueError(f"sigma_ratio must be a number > 0, got {self.sigma_ratio!r}")
        if not isinstance(self.sigma_bias_init, int | float) or not math.isfinite(self.sigma_bias_init):
            raise ValueError(f"sigma_bias_init must be a finite number, got {self.sigma_bias_init!r}")
        if not isinstance(self.cells, str | Sequence):
            raise ValueError(f"cells must be 'all', 'last:K' or a list of block indices, got {self.cells!r}")
        if not isinstance(self.cells, str):
            object.__setattr__(self, "cells", tuple(self.cells))
        if isinstance(self.beta, Sequence) and not isinstance(self.beta, str):
            object.__setattr__(self, "beta", tuple(self.beta))
        # Both specs are checked against the final layer counts here, so a bad one fails when
        # the model is built rather than deep inside training.
        resolve_cells(self.cells, self.layers)
        beta_schedule(self.beta, self.num_cells, self.beta_max, self.beta_min)

    @classmethod
    def from_overrides(
        cls, name: str, variant: str, layers: Sequence[int], overrides: Mapping[str, Any]
    ) -> IResNetConfig:
        """Registry defaults for ``name`` plus user overrides; unknown overrides raise ValueError."""
        allowed = _FIELDS_BY_VARIANT[variant]
        for key in overrides:
            if key not in allowed:
                raise ValueError(f"model {name!r} has no override {key!r}; allowed: {', '.join(allowed)}")
        return cls(variant=variant, **{"layers": tuple(layers), **overrides})

    @property
    def num_blocks(self) -> int:
        """Blocks over all stages."""
        return sum(self.layers)

    @property
    def cell_indices(self) -> tuple[int, ...]:
        """Global indices of the blocks that are VIB cells (empty unless variant is "cell")."""
        if self.variant != "cell":
            return ()
        return resolve_cells(self.cells, self.layers)

    @property
    def num_cells(self) -> int:
        """VIB cells: one per cell block, or the single embedding VIB of Deep VIB."""
        return {"plain": 0, "cell": len(self.cell_indices), "deep": 1}[self.variant]

    def overrides(self) -> dict[str, Any]:
        """The fields that apply to this variant, as plain lists/numbers/strings.

        ``create_model(name, **config.overrides())`` rebuilds the same network, and the
        dict survives ``torch.save`` / ``torch.load(weights_only=True)`` and JSON.
        """
        return {key: _plain(getattr(self, key)) for key in _FIELDS_BY_VARIANT[self.variant]}


def resolve_cells(cells: str | Sequence[int], layers: Sequence[int]) -> tuple[int, ...]:
    """Global block indices selected by a ``cells`` spec (see :class:`IResNetConfig`).

    ``"last:K"`` counts *stages* (the issue's "last k stages"): ``"last:1"`` on r100 is the
    3 blocks of stage 4.

    Raises:
        ValueError: unknown spec, K outside 1..4, index out of range or repeated, or a spec
            that selects no block.
    """
    num_blocks = sum(layers)
    if isinstance(cells, str):
        if cells == "all":
            return tuple(range(num_blocks))
        head, _, count = cells.partition(":")
        if head != "last" or not count.isdigit() or not 1 <= int(count) <= len(layers):
            raise ValueError(
                f"cells must be 'all', 'last:K' with K in 1..{len(layers)}, or a list of block indices; got {cells!r}"
            )
        first = sum(layers[: len(layers) - int(count)])
        return tuple(range(first, num_blocks))
    indices = tuple(cells)
    if not indices:
        raise ValueError("cells selects no block; use a plain r-model for a network without VIB cells")
    for index in indices:
        if not _is_int(index) or not 0 <= index < num_blocks:
            raise ValueError(
                f"cells index {index!r} is outside 0..{num_blocks - 1} (the network has {num_blocks} blocks)"
            )
    if len(set(indices)) != len(indices):
        raise ValueError(f"cells lists a block twice: {list(indices)}")
    return tuple(sorted(indices))


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _branch_layers(inplanes: int, inner: int, planes: int, stride: int) -> OrderedDict[str, nn.Module]:
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN under arcface_torch's names.

    The residual (mean) branch uses ``inner == planes``; the sigma branch uses the same
    shape with a narrower ``inner``.
    """
    return OrderedDict(
        bn1=nn.BatchNorm2d(inplanes, eps=_BN_EPS),
        conv1=_conv3x3(inplanes, inner),
        bn2=nn.BatchNorm2d(inner, eps=_BN_EPS),
        prelu=nn.PReLU(inner),
        conv2=_conv3x3(inner, planes, stride),
        bn3=nn.BatchNorm2d(planes, eps=_BN_EPS),
    )


class IBasicBlock(nn.Module):
    """arcface_torch's improved residual block, optionally with a VIB cell as its branch.

    Args:
        inplanes: input channels.
        planes: output channels (and mean-branch inner width).
        stride: stride of the second conv (and of the 1x1 downsample).
        sigma_width: inner width of the sigma branch; ``None`` for a plain block.
        sigma_bias_init: initial softplus bias b of the cell.
    """

    # Training-mode cell blocks run both branches' BN-conv-BN-PReLU as one (same result,
    # less memory) where that is also faster (shared_input.merging_pays, None), always
    # (True) or never (False); benchmarks/model_step.py compares the three.
    merge_heads: bool | None = None

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        sigma_width: int | None = None,
        sigma_bias_init: float = SIGMA_BIAS_INIT,
    ) -> None:
        super().__init__()
        # Registered one by one (not as a Sequential) so the keys are layerN.i.bn1 etc.
        for name, layer in _branch_layers(inplanes, planes, planes, stride).items():
            self.add_module(name, layer)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=_BN_EPS),
            )
        self.vib: VIBCell | None = None
        if sigma_width is not None:
            sigma_branch = nn.Sequential(_branch_layers(inplanes, sigma_width, planes, stride))
            self.vib = VIBCell(None, sigma_branch, planes, bias_init=sigma_bias_init)

    def residual(self, x: Tensor) -> Tensor:
        """The non-identity branch (the VIB cell's mean transform in a cell block)."""
        return self.bn3(self._residual_until_bn3(x))

    def _residual_until_bn3(self, x: Tensor) -> Tensor:
        return self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x)))))

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Block output; ``(output, kl)`` with the cell's batch-mean KL when ``return_kl``."""
        identity = x if self.downsample is None else self.downsample(x)
        if self.vib is None:
            if return_kl:
                raise ValueError("return_kl=True on a block that is not a VIB cell")
            return self.residual(x) + identity
        if self.training and self._merges(x):
            return self._train_cell(x, identity, return_kl)
        # bn3 goes to the cell, which fuses it into its sampling node in training.
        mu_before_norm = self._residual_until_bn3(x)
        if return_kl:
            sample, kl = self.vib.forward_with_mean(x, mu_before_norm, return_kl=True, mean_norm=self.bn3)
            return sample + identity, kl
        return self.vib.forward_with_mean(x, mu_before_norm, mean_norm=self.bn3) + identity

    def _merges(self, x: Tensor) -> bool:
        if self.merge_heads is False:
            return False
        heads = self._heads()
        return can_merge(heads) and (self.merge_heads is True or merging_pays(x, heads))

    def _heads(self) -> tuple[BranchHead, BranchHead]:
        sigma = self.vib.sigma
        return (
            BranchHead(self.bn1, self.conv1, self.bn2, self.prelu),
            BranchHead(sigma.bn1, sigma.conv1, sigma.bn2, sigma.prelu),
        )

    def _train_cell(self, x: Tensor, identity: Tensor, return_kl: bool) -> Tensor | tuple[Tensor, Tensor]:
        """Training forward of a cell block: both branches' BN-conv-BN-PReLU as one (see
        :mod:`facevib.models.shared_input`), each branch's conv2, then the fused sample,
        which applies both bn3."""
        sigma = self.vib.sigma
        mean_head, sigma_head = merged_branch_heads(x, self._heads())
        out = self.vib.sample(
            self.conv2(mean_head), sigma.conv2(sigma_head), return_kl, mean_norm=self.bn3, sigma_norm=sigma.bn3
        )
        return (out[0] + identity, out[1]) if return_kl else out + identity


def _sigma_head(channels: int, embedding_dim: int) -> nn.Sequential:
    """Deep VIB's sigma head: BN2d, global average pool, FC, BN1d.

    Pooling before the FC makes it ``input_size^2 / 256`` times cheaper than the mu head's
    flatten-FC (r100: 0.26M vs 12.8M weights); a per-dimension scale only needs the
    image-level statistics of the last feature map, not their positions.
    """
    return nn.Sequential(
        OrderedDict(
            bn=nn.BatchNorm2d(channels, eps=_BN_EPS),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            fc=nn.Linear(channels, embedding_dim),
            bn_out=nn.BatchNorm1d(embedding_dim, eps=_BN_EPS),
        )
    )


class IResNet(nn.Module):
    """iResNet backbone: (B, 3, S, S) images in [-1, 1] -> (B, embedding_dim) embeddings.

    Build it with :func:`facevib.models.create_model`; ``name`` is the registered name the
    config came from, reported by :attr:`arch`.

    ``forward(x)`` in eval mode is deterministic (every VIB cell returns its mean and runs
    no sigma branch) and traceable; in training mode cells sample. ``forward(x,
    return_kl=True)`` also returns the per-cell batch-mean KL, shape (num_cells,), in depth
    order (empty for plain models); weight it with :meth:`kl_loss`.

    The embedding BatchNorm1d (``features``) keeps arcface_torch's frozen scale: weight
    fixed at 1 with ``requires_grad=False``. A learnable per-dimension scale would only
    re-weight dimensions of the cosine similarity; freezing it reproduces their training
    and keeps their checkpoints meaningful here.
    """

    def __init__(self, config: IResNetConfig, name: str) -> None:
        super().__init__()
        prefix = VARIANT_PREFIXES[config.variant]
        if not name.startswith(prefix) or (config.variant == "plain" and name.startswith(("cellvib_", "deepvib_"))):
            raise ValueError(f"model name {name!r} does not match variant {config.variant!r}")
        self.config = config
        self.name = name
        widths = config.widths
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=_BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        cell_set = set(config.cell_indices)
        block_index = 0
        inplanes = widths[0]
        for stage, (planes, depth) in enumerate(zip(widths, config.layers, strict=True)):
            blocks = []
            for position in range(depth):
                sigma_width = max(1, round(planes * config.sigma_ratio)) if block_index in cell_set else None
                stride = 2 if position == 0 else 1
                blocks.append(IBasicBlock(inplanes, planes, stride, sigma_width, config.sigma_bias_init))
                inplanes = planes
                block_index += 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        spatial = config.input_size // _DOWNSAMPLING
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=_BN_EPS)
        self.dropout = nn.Dropout(p=config.dropout)
        self.fc = nn.Linear(widths[-1] * spatial * spatial, config.embedding_dim)
        self.features = nn.BatchNorm1d(config.embedding_dim, eps=_BN_EPS)
        self.vib: VIBCell | None = None
        if config.variant == "deep":
            self.vib = VIBCell(
                None,
                _sigma_head(widths[-1], config.embedding_dim),
                config.embedding_dim,
                channel_dim=-1,
                bias_init=config.sigma_bias_init,
            )
        # Not persistent: betas follow from `arch`, and arcface_torch checkpoints (which have
        # no such key) must load strictly into the r-models.
        betas = beta_schedule(config.beta, config.num_cells, config.beta_max, config.beta_min)
        self.register_buffer("betas", betas, persistent=False)
        self._score_blocks = _last_stage_cells(config)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, _CONV_INIT_STD)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.features.weight.requires_grad_(False)

    @property
    def arch(self) -> dict[str, Any]:
        """``{"name", "kwargs"}``: ``create_model(arch["name"], **arch["kwargs"])`` rebuilds it."""
        return {"name": self.name, "kwargs": self.config.overrides()}

    @property
    def num_cells(self) -> int:
        """Number of VIB cells (length of the KL vector and of :attr:`betas`)."""
        return self.config.num_cells

    @property
    def has_uncertainty(self) -> bool:
        """Whether :meth:`forward_with_uncertainty` is available (the model has sigma branches)."""
        return self.num_cells > 0

    @property
    def uncertainty_cells(self) -> tuple[int, ...]:
        """Global block indices of the cells scored by :meth:`forward_with_uncertainty`
        (empty for Deep VIB, whose score comes from the embedding VIB, and for plain models)."""
        return tuple(sorted(self._score_blocks))

    @property
    def embedding_dim(self) -> int:
        """Size of the embedding."""
        return self.config.embedding_dim

    def iter_blocks(self) -> Iterator[IBasicBlock]:
        """All residual blocks in depth order (global block index = position)."""
        for stage in range(1, _NUM_STAGES + 1):
            yield from getattr(self, f"layer{stage}")

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Embedding (B, embedding_dim); with ``return_kl``, ``(embedding, kl)``."""
        embedding, kl, _ = self._run(x, return_kl=return_kl, score=False)
        return (embedding, kl) if return_kl else embedding

    def kl_loss(self, kl: Tensor) -> Tensor:
        """sum_i beta_i * kl_i, the regulariser added to the classification loss (eq. 6)."""
        if kl.shape != self.betas.shape:
            raise ValueError(f"kl_loss: kl has shape {tuple(kl.shape)}, expected ({self.num_cells},)")
        return (self.betas.to(kl.dtype) * kl).sum()

    def forward_with_uncertainty(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(embedding (B, D), uncertainty (B,))`` from one pass through the network.

        The embedding is exactly :meth:`forward`'s. The uncertainty is the **mean log sigma**
        (natural log) of the scored VIB cells, a per-image number, higher = less certain:

        * cellVIB: the cells of the deepest stage that has cells (with ``cells="all"``, the
          blocks of stage 4, the features closest to the embedding). For each scored cell,
          log sigma = log softplus(F_sigma(x) + b) is averaged over all C x H x W elements of
          its output; the per-cell means are then averaged with equal weight. Stage 4 is used
          although the linear beta schedule gives its very last cell no KL weight: averaging
          the stage keeps cells that were regularised in the score.
        * Deep VIB: log sigma averaged over the D dimensions of the embedding VIB.

        It measures how much noise the trained cells would inject into their features for
        this image (their learned per-element spread), not the variance of the embedding:
        the sigmas of hidden cells do not propagate to an embedding variance in closed form.
        ``benchmarks/uncertainty.py`` measures how it tracks image degradation and
        verification errors. Call it on an eval-mode model (BatchNorm running statistics;
        cells return their mean, so nothing is sampled). Only the scored cells run their
        sigma branch, so it costs a fraction of a second forward pass, and it traces into one
        ONNX graph with two outputs.

        Raises:
            ValueError: the model has no sigma branches (see :attr:`has_uncertainty`).
        """
        if not self.has_uncertainty:
            raise ValueError(f"model {self.name!r} has no sigma branches, so no uncertainty score")
        embedding, _, scores = self._run(x, return_kl=False, score=True)
        return embedding, torch.stack(scores).mean(dim=0)

    def uncertainty(self, x: Tensor) -> Tensor:
        """The uncertainty of :meth:`forward_with_uncertainty` alone, shape (B,)."""
        return self.forward_with_uncertainty(x)[1]

    def _run(self, x: Tensor, *, return_kl: bool, score: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One pass: ``(embedding, kl per cell, per-cell mean log sigma of the scored cells)``.

        ``kl`` is empty unless ``return_kl``; the score list is empty unless ``score``.
        """
        self._check_input(x)
        kls: list[Tensor] = []
        scores: list[Tensor] = []
        h = self._stem(x)
        for index, block in enumerate(self.iter_blocks()):
            if score and index in self._score_blocks:
                scores.append(block.vib.log_sigma(h).flatten(1).mean(dim=1))
            if return_kl and block.vib is not None:
                h, kl = block(h, return_kl=True)
                kls.append(kl)
            else:
                h = block(h)
        mu = self.features(self.fc(self.dropout(torch.flatten(self.bn2(h), 1))))
        embedding = mu
        if self.vib is not None:
            if score:
                scores.append(self.vib.log_sigma(h).mean(dim=1))
            if return_kl:
                embedding, kl = self.vib.forward_with_mean(h, mu, return_kl=True)
                kls.append(kl)
            else:
                embedding = self.vib.forward_with_mean(h, mu)
        kl_vector = torch.stack(kls) if kls else mu.new_zeros(0, dtype=torch.float32)
        return embedding, kl_vector, scores

    def _stem(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn1(self.conv1(x)))

    def _check_input(self, x: Tensor) -> None:
        # Shapes only, never values. Skipped under torch.jit.trace (and so the ONNX exporter),
        # where sizes are traced tensors and the check would only add TracerWarnings.
        if torch.jit.is_tracing():
            return
        size = self.config.input_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(f"{self.name}: expected input (B, 3, {size}, {size}), got {tuple(x.shape)}")


def _last_stage_cells(config: IResNetConfig) -> frozenset[int]:
    """Cell blocks of the deepest stage that has any cell: the blocks scored by uncertainty()."""
    cells = config.cell_indices
    if not cells:
        return frozenset()
    ends = [sum(config.layers[: stage + 1]) for stage in range(len(config.layers))]
    stage = next(s for s, end in enumerate(ends) if cells[-1] < end)
    start = ends[stage] - config.layers[stage]
    return frozenset(index for index in cells if index >= start)


def _positive_ints(field: str, value: object) -> tuple[int, ...]:
    """A length-4 tuple of positive ints, or ValueError naming ``field``."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{field} must be a sequence of {_NUM_STAGES} positive ints, got {value!r}")
    items = tuple(value)
    if len(items) != _NUM_STAGES or not all(_is_int(v) and v > 0 for v in items):
        raise ValueError(f"{field} must be {_NUM_STAGES} positive ints (one per stage), got {list(items)!r}")
    return tuple(int(v) for v in items)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: object) -> object:
    """Tuples to lists, so configs are JSON and weights_only friendly."""
    return list(value) if isinstance(value, tuple) else value
