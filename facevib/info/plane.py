"""The information plane of a model, per representation layer (cellVIB §4.1, Figs. 5-6).

For each representation layer Z_i of a model (the cells of a cellVIB network, every block
of an iResNet plus its embedding) this measures, in nats:

- ``kl_bound``: the VIB cell's data-mean KL, the upper bound on I(Z_i; Z_{i-1}) that the
  cellVIB paper plots as I(Z, X) (None for a layer that is not a VIB cell). For a residual
  cell Z_i is the sampled non-identity branch, not the block output;
- ``label_mi``: I(Z_i; Y) >= H(Y) - CE of a logistic probe fitted on the training samples'
  features and scored on the held-out ones (feature maps and token sequences are
  average-pooled first); for classifiers the output layer uses the model's own logits;
- ``binning``: the whole-layer binning estimates (I(X; T), I(T; Y), saturation flag) of
  the held-out samples.

:func:`measure_plane` runs the model once over each sample set in eval mode (the
deterministic mean network of the test phase) with forward hooks on the layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from facevib.experiments.models.cellnet import CellNetwork
from facevib.info.binning import DEFAULT_BIN_SIZE, BinningAccumulator, BinningResult, binning_mi
from facevib.info.entropy import check_labels, label_entropy
from facevib.info.jsd import jsd_mi
from facevib.info.kernel import KernelMIBounds, kernel_mi_bounds
from facevib.info.vib_bounds import LabelProbe, label_mi_lower_bound
from facevib.models.iresnet import IResNet
from facevib.models.vib import VIBCell

__all__ = [
    "EMBEDDING",
    "InfoPlane",
    "LayerInfo",
    "Samples",
    "cell_layer_index",
    "measure_plane",
    "representation_layers",
]

EMBEDDING = "embedding"  # pseudo layer name of an iResNet's output
PROBE_L2_GRID = (0.01, 0.1, 1.0)  # probe strengths tried per layer (chosen on the probe's training side)
_MAX_BINNING_ELEMENTS = 1 << 26  # rows kept for the exact count; wider layers are streamed


@dataclass
class Samples:
    """Inputs and labels for one side (probe training or held-out) of a measurement.

    ``pairs`` / ``pair_labels`` describe a verification set instead of class labels: the
    label of pair (a, b) is 1 for the same identity, and a layer's pair features are
    [|f(a) - f(b)|, f(a) * f(b)] of its L2-normalised pooled features.
    """

    x: Tensor
    y: np.ndarray | None = None
    pairs: np.ndarray | None = None
    pair_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.dim() < 2 or self.x.shape[0] < 2:
            raise ValueError(f"samples: need (N, ...) inputs with N >= 2, got shape {tuple(self.x.shape)}")
        if self.y is not None:
            self.y = check_labels(self.y, n=self.x.shape[0])
        if (self.pairs is None) != (self.pair_labels is None):
            raise ValueError("samples: pairs and pair_labels go together")
        if self.pairs is not None:
            self.pairs = np.asarray(self.pairs, dtype=np.int64)
            if self.pairs.ndim != 2 or self.pairs.shape[1] != 2 or self.pairs.max() >= self.x.shape[0]:
                raise ValueError(f"samples: pairs must be (P, 2) indices below {self.x.shape[0]}")
            self.pair_labels = check_labels(self.pair_labels, num_classes=2, n=self.pairs.shape[0])
        if self.y is None and self.pairs is None:
            raise ValueError("samples: give labels y or verification pairs")

    def targets(self) -> np.ndarray:
        """The labels the probes predict: class labels, or pair labels."""
        return self.y if self.y is not None else self.pair_labels


@dataclass
class LayerInfo:
    """Measurements of one representation layer (nats)."""

    name: str
    depth: int  # 1-based position among the measured layers
    width: int  # elements per sample
    kl_bound: float | None  # VIB cell KL on the held-out samples: I(Z_i; Z_{i-1}) <= kl_bound
    label_mi_train: float  # I(Z_i; Y) lower bound on the probe's own training samples
    label_mi_test: float  # I(Z_i; Y) lower bound on held-out samples
    binning: BinningResult  # held-out samples (i_ty None for a verification set)
    # JSD(joint || marginals) lower bound between Z_{i-1} and Z_i from a trained critic
    # (IFM paper's estimator; held-out part of the test samples); None unless asked for.
    jsd_prev: float | None = None
    # Kolchinsky-Tracey bounds with Gaussian noise of variance kernel_noise_var added to the
    # layer (held-out samples); None unless asked for, or when the layer was streamed.
    kernel: KernelMIBounds | None = None


@dataclass
class InfoPlane:
    """One model's information plane (nats)."""

    model: str
    beta: float | None  # largest per-cell beta of the model; None without cells
    num_train: int
    num_test: int
    h_y: float  # H(Y) of the held-out targets
    layers: list[LayerInfo] = field(default_factory=list)

    @property
    def point(self) -> tuple[float | None, float]:
        """(I(Z; X) bound, I(Z; Y) held-out) of the last layer: one model's point of Fig. 5.

        The bound is the KL of the last VIB cell at or before the last layer (by data
        processing it bounds the output's information about X too); None without cells.
        """
        bound = next((layer.kl_bound for layer in reversed(self.layers) if layer.kl_bound is not None), None)
        return bound, self.layers[-1].label_mi_test

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (binning results expanded)."""
        out = asdict(self)
        out["point"] = {"i_zx_bound": self.point[0], "i_zy": self.point[1]}
        return out


def representation_layers(model: nn.Module) -> list[str]:
    """Names of the layers Z_1..Z_n measured for ``model``, in depth order.

    facevib's classification families list theirs (``layer_names``); an iResNet gives every
    residual block and its embedding (:data:`EMBEDDING`).

    Raises:
        ValueError: a model of another kind.
    """
    names = getattr(model, "layer_names", None)
    if names:
        return list(names)
    if isinstance(model, IResNet):
        blocks = [name for name, module in model.named_modules() if module in set(model.iter_blocks())]
        return [*blocks, EMBEDDING]
    raise ValueError(f"information plane: no representation layers known for {type(model).__name__}")


def cell_layer_index(model: nn.Module, layers: list[str]) -> list[int]:
    """For each VIB cell (in the order of the model's KL vector), the index of its layer.

    A cell belongs to the deepest-named layer whose module contains it; a cell attached to
    the model itself (Deep VIB's head) belongs to :data:`EMBEDDING` or the last layer.

    Raises:
        ValueError: a cell outside every layer.
    """
    index: list[int] = []
    for cell_name, module in model.named_modules():
        if not isinstance(module, VIBCell):
            continue
        owners = [i for i, layer in enumerate(layers) if layer != EMBEDDING and cell_name.startswith(layer + ".")]
        if owners:
            index.append(max(owners, key=lambda i: len(layers[i])))
        elif "." not in cell_name:
            index.append(len(layers) - 1)
        else:
            raise ValueError(f"information plane: VIB cell {cell_name!r} is in none of the layers {layers}")
    return index


class _LayerRows:
    """A layer's held-out rows for binning: kept for the exact count while they fit, else hashed."""

    def __init__(self, bin_size: float, max_elements: int) -> None:
        self.bin_size = bin_size
        self.max_elements = max_elements
        self.rows: list[np.ndarray] = []
        self.elements = 0
        self.width = 0
        self.stream: BinningAccumulator | None = None

    def add(self, batch: np.ndarray) -> None:
        self.width = batch.shape[1]
        if self.stream is None and self.elements + batch.size > self.max_elements:
            self.stream = BinningAccumulator(self.bin_size)
            for rows in self.rows:
                self.stream.add(rows)
            self.rows.clear()
        if self.stream is not None:
            self.stream.add(batch)
        else:
            self.rows.append(batch)
            self.elements += batch.size

    def result(self, labels: np.ndarray | None) -> BinningResult:
        if self.stream is not None:
            return self.stream.result(labels)
        return binning_mi(np.concatenate(self.rows), labels, self.bin_size)

    def kernel(self, noise_var: float, labels: np.ndarray | None) -> KernelMIBounds | None:
        """Kernel bounds on the kept rows; None when the layer was too wide to keep them."""
        if self.stream is not None:
            return None
        return kernel_mi_bounds(np.concatenate(self.rows), noise_var, labels)


@dataclass
class _Pass:
    pooled: dict[str, np.ndarray]
    rows: dict[str, _LayerRows] | None
    kl: np.ndarray | None
    logits: np.ndarray | None
    raw: dict[str, Tensor] | None  # full layer outputs (CPU), kept only for the JSD estimator


def _pool(features: Tensor) -> Tensor:
    """Per-sample vector: feature maps and token sequences averaged over positions."""
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    if features.dim() == 3:
        return features.mean(dim=1)
    return features.flatten(1)


@torch.no_grad()
def _run(
    model: nn.Module,
    x: Tensor,
    layers: list[str],
    batch_size: int,
    keep_rows: bool,
    bin_size: float,
    max_binning_elements: int,
    keep_raw: bool = False,
) -> _Pass:
    modules = dict(model.named_modules())
    captured: dict[str, Tensor] = {}

    def hook(name: str):
        def keep(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            captured[name] = output[0] if isinstance(output, tuple) else output

        return keep

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers if name != EMBEDDING]
    device = next(model.parameters()).device
    has_cells = any(isinstance(m, VIBCell) for m in model.modules())
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    rows = {name: _LayerRows(bin_size, max_binning_elements) for name in layers} if keep_rows else None
    raw: dict[str, list[Tensor]] | None = {name: [] for name in layers} if keep_raw else None
    kl_sum: np.ndarray | None = None
    outputs: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].to(device)
            captured.clear()
            out = model(batch, return_kl=True) if has_cells else model(batch)
            if has_cells:
                out, kl = out
                weighted = kl.double().cpu().numpy() * len(batch)
                kl_sum = weighted if kl_sum is None else kl_sum + weighted
            captured[EMBEDDING] = out
            outputs.append(out.float().cpu().numpy())
            for name in layers:
                feats = captured[name].float()
                pooled[name].append(_pool(feats).cpu().numpy())
                if rows is not None:
                    rows[name].add(feats.flatten(1).cpu().numpy())
                if raw is not None:
                    raw[name].append(feats.cpu())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    is_classifier = isinstance(model, CellNetwork)
    return _Pass(
        pooled={name: np.concatenate(parts) for name, parts in pooled.items()},
        rows=rows,
        kl=None if kl_sum is None else kl_sum / x.shape[0],
        logits=np.concatenate(outputs) if is_classifier else None,
        raw=None if raw is None else {name: torch.cat(parts) for name, parts in raw.items()},
    )


def _probe_features(features: np.ndarray, samples: Samples) -> np.ndarray:
    """Per-sample features, or per-pair [|a - b|, a * b] of L2-normalised features (the
    products sum to the cosine similarity verification thresholds on)."""
    if samples.pairs is None:
        return features
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    a, b = unit[samples.pairs[:, 0]], unit[samples.pairs[:, 1]]
    return np.concatenate([np.abs(a - b), a * b], axis=1)


def measure_plane(
    model: nn.Module,
    train: Samples,
    test: Samples,
    *,
    batch_size: int = 128,
    bin_size: float = DEFAULT_BIN_SIZE,
    max_binning_elements: int = _MAX_BINNING_ELEMENTS,
    probe_max_iter: int = 300,
    jsd_steps: int = 0,
    kernel_noise_var: float | None = None,
) -> InfoPlane:
    """Measure every representation layer of ``model`` (see the module docstring).

    Args:
        model: a facevib model (iResNet or a registered cell family); left in its mode.
        train: samples the probes are fitted on.
        test: held-out samples every reported estimate is computed on.
        batch_size: forward batch size.
        bin_size: binning width (0.67 in the binning paper).
        max_binning_elements: a layer's held-out rows are kept for the exact count up to
            this many values, and streamed by hash beyond.
        probe_max_iter: iterations of each logistic probe.
        jsd_steps: when > 0, train a JSD critic (:func:`facevib.info.jsd.jsd_mi`) for that many
            steps between each pair of adjacent layers on the held-out outputs (feature maps:
            the deeper map up-sampled, positives at the same location); keeps every layer's
            full outputs in memory, so meant for small models.
        kernel_noise_var: when given, the pairwise-distance bounds of
            :func:`facevib.info.kernel.kernel_mi_bounds` on each layer plus Gaussian noise of
            this variance (layers kept for the exact binning count only).
    """
    if kernel_noise_var is not None and not kernel_noise_var > 0:
        raise ValueError(f"kernel_noise_var must be > 0, got {kernel_noise_var!r}")
    layers = representation_layers(model)
    cells = cell_layer_index(model, layers)
    fit = _run(model, train.x, layers, batch_size, False, bin_size, max_binning_elements)
    held = _run(model, test.x, layers, batch_size, True, bin_size, max_binning_elements, keep_raw=jsd_steps > 0)
    if held.kl is not None and held.kl.shape[0] != len(cells):
        raise ValueError(f"information plane: {held.kl.shape[0]} KL entries for {len(cells)} VIB cells")
    kl_of: dict[int, float] = {}
    for k, layer in enumerate(cells):  # several cells in one layer: the sum bounds their joint output
        kl_of[layer] = kl_of.get(layer, 0.0) + float(held.kl[k])
    y_train, y_test = train.targets(), test.targets()
    result = InfoPlane(
        model=str(getattr(model, "name", type(model).__name__)),
        beta=_beta(model),
        num_train=int(train.x.shape[0]),
        num_test=int(test.x.shape[0]),
        h_y=label_entropy(y_test),
    )
    for depth, name in enumerate(layers, start=1):
        last = depth == len(layers)
        if last and held.logits is not None and test.y is not None:
            mi_train = label_mi_lower_bound(fit.logits, train.y)
            mi_test = label_mi_lower_bound(held.logits, test.y)
        else:
            f_train = _probe_features(fit.pooled[name], train)
            f_test = _probe_features(held.pooled[name], test)
            probe = LabelProbe(f_train, y_train, max_iter=probe_max_iter, l2=PROBE_L2_GRID)
            mi_train, mi_test = probe.label_mi(f_train, y_train), probe.label_mi(f_test, y_test)
        result.layers.append(
            LayerInfo(
                name=name,
                depth=depth,
                width=held.rows[name].width,
                kl_bound=kl_of.get(depth - 1),
                label_mi_train=mi_train,
                label_mi_test=mi_test,
                binning=held.rows[name].result(test.y),
                jsd_prev=_adjacent_jsd(held.raw, layers[depth - 2], name, jsd_steps)
                if depth > 1 and held.raw
                else None,
                kernel=None if kernel_noise_var is None else held.rows[name].kernel(kernel_noise_var, test.y),
            )
        )
    return result


def _adjacent_jsd(raw: dict[str, Tensor], shallow: str, deep: str, steps: int) -> float:
    """JSD bound between two layers' outputs, or between pooled vectors when their layouts differ."""
    a, b = raw[shallow], raw[deep]
    if a.dim() != b.dim() or (a.dim() == 3 and a.shape[1] != b.shape[1]):
        a, b = _pool(a), _pool(b)  # e.g. the last feature map against the embedding vector
    return jsd_mi(a, b, steps=steps, hidden=(64, 32), locations=4).jsd


def _beta(model: nn.Module) -> float | None:
    """The largest per-cell beta (the first cell's under the paper's linear schedule)."""
    betas = getattr(model, "betas", None)
    if not isinstance(betas, Tensor) or betas.numel() == 0:
        return None
    return float(betas.max())
