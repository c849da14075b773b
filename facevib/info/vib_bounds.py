"""Variational bounds of the cellVIB paper (arXiv:2403.15082, withdrawn; §3 and §4.1).

- Upper bound on what cell i keeps of its input: I(Z_i; Z_{i-1}) <= E_x KL(p(z_i|z_{i-1}) ||
  N(0, I)), the per-cell KL summed over the cell's C*H*W elements and averaged over data.
  Through the data-processing inequality it also bounds I(Z_i; X) from above.
- Lower bound on what a representation keeps of the label: I(Z; Y) >= H(Y) - CE, with CE
  the cross-entropy of any classifier q(y|z) on held-out data (the bound of Deep VIB,
  arXiv:1612.00410, eq. 12). For intermediate cells q is a probe trained on their features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor, nn

from facevib.info.entropy import check_labels, entropy_from_counts

__all__ = ["LabelProbe", "label_mi_lower_bound", "probe_label_mi", "vib_kl_bound"]


@torch.no_grad()
def vib_kl_bound(model: nn.Module, batches: Iterable[Tensor]) -> np.ndarray:
    """Per-cell upper bound on I(Z_i; Z_{i-1}) in nats: the data mean of each cell's KL.

    The model runs in eval mode (no sampling; the KL is a function of mu and sigma) and
    is put back in its previous mode. ``model(x, return_kl=True)`` must return ``(out, kl)``
    with ``kl`` the per-cell batch-mean KL (facevib's IResNet and cell networks do).

    Args:
        model: a VIB model.
        batches: input batches (tensors on the model's device).

    Returns:
        float64 array (num_cells,), the sample-weighted mean over all batches.

    Raises:
        ValueError: no batches, or a model without VIB cells.
    """
    was_training = model.training
    model.eval()
    total: np.ndarray | None = None
    count = 0
    try:
        for x in batches:
            _, kl = model(x, return_kl=True)
            kl_np = kl.detach().double().cpu().numpy()
            total = kl_np * len(x) if total is None else total + kl_np * len(x)
            count += len(x)
    finally:
        model.train(was_training)
    if total is None or count == 0:
        raise ValueError("vib_kl_bound: no input batches")
    if total.size == 0:
        raise ValueError(f"vib_kl_bound: {type(model).__name__} has no VIB cells (empty KL vector)")
    return total / count


def label_mi_lower_bound(
    logits_or_ce: Tensor | ArrayLike | float, labels: ArrayLike, num_classes: int | None = None
) -> float:
    """I(Z; Y) >= H(Y) - CE (nats), from held-out logits or an already measured mean CE.

    H(Y) is the plug-in entropy of ``labels``. The bound holds in expectation for any
    classifier; on a finite held-out set it can come out slightly negative for a useless one.

    Args:
        logits_or_ce: (N, num_classes) logits of q(y|z), or the mean cross-entropy (nats).
        labels: (N,) integer labels of the held-out samples.
        num_classes: checks the label range (and the logits' width).
    """
    y = check_labels(labels, num_classes)
    h_y = entropy_from_counts(np.bincount(y))
    if isinstance(logits_or_ce, int | float) or np.ndim(logits_or_ce) == 0:
        ce = float(logits_or_ce)
        if not np.isfinite(ce) or ce < 0:
            raise ValueError(f"label_mi_lower_bound: cross-entropy must be finite and >= 0, got {ce}")
        return h_y - ce
    logits = torch.as_tensor(np.asarray(logits_or_ce) if not isinstance(logits_or_ce, Tensor) else logits_or_ce)
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"label_mi_lower_bound: logits of shape {tuple(logits.shape)} for {y.shape[0]} labels")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"label_mi_lower_bound: {logits.shape[1]} logits per sample, num_classes={num_classes}")
    if y.max() >= logits.shape[1]:
        raise ValueError(f"label_mi_lower_bound: label {int(y.max())} >= {logits.shape[1]} logits")
    ce = F.cross_entropy(logits.double(), torch.from_numpy(y)).item()
    return h_y - ce


class LabelProbe:
    """A multinomial logistic-regression probe q(y|z) on standardised features.

    Fit once on training features, then :meth:`label_mi` gives H(Y) - CE on any set. With
    several ``l2`` values, the strength is chosen on a stratified quarter of the training
    features (lowest cross-entropy) and the probe refitted on all of them, so the
    held-out estimate stays honest while a probe on few samples per class is kept from
    over-fitting (which drives H(Y) - CE below zero).
    """

    def __init__(
        self, features: ArrayLike, labels: ArrayLike, max_iter: int = 500, l2: float | Sequence[float] = 1.0
    ) -> None:
        x = _flat(features, "features_train")
        y = check_labels(labels, n=x.shape[0])
        self.classes = np.unique(y)
        if self.classes.size < 2:
            raise ValueError("probe_label_mi: y_train holds a single class")
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std == 0] = 1.0
        self.std = std
        z = (x - self.mean) / self.std
        grid = [float(l2)] if isinstance(l2, int | float) else [float(c) for c in l2]
        if not grid or min(grid) <= 0:
            raise ValueError(f"probe_label_mi: l2 must be positive, got {l2!r}")
        self.l2 = grid[0] if len(grid) == 1 else _select_l2(z, y, grid, max_iter)
        self.model = _logistic(self.l2, max_iter).fit(z, y)

    def label_mi(self, features: ArrayLike, labels: ArrayLike) -> float:
        """H(Y) - CE of the probe on ``(features, labels)`` (nats).

        Raises:
            ValueError: a feature width other than the training one, or a label the probe
                never saw.
        """
        x = _flat(features, "features_test")
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"probe_label_mi: {self.mean.shape[0]} train features vs {x.shape[1]} test features")
        y = check_labels(labels, n=x.shape[0])
        unseen = np.setdiff1d(np.unique(y), self.classes)
        if unseen.size:
            raise ValueError(f"probe_label_mi: test label {int(unseen[0])} never appears in y_train")
        log_p = self.model.predict_log_proba((x - self.mean) / self.std)
        column = np.searchsorted(self.classes, y)
        ce = float(-log_p[np.arange(y.size), column].mean())
        return label_mi_lower_bound(ce, y)


def probe_label_mi(
    features_train: ArrayLike,
    y_train: ArrayLike,
    features_test: ArrayLike,
    y_test: ArrayLike,
    max_iter: int = 500,
    l2: float | Sequence[float] = 1.0,
) -> float:
    """H(Y) - CE of a multinomial logistic-regression probe (nats): I(Z; Y) lower bound.

    The probe is fitted on standardised ``features_train`` and scored on ``features_test``
    (held out, so the bound is not inflated by the probe's own over-fitting). Features of
    any shape are flattened per sample; feature maps are best pooled by the caller.

    Args:
        l2: inverse regularisation strength ``C`` of scikit-learn's LogisticRegression, or
            several, chosen by validation (see :class:`LabelProbe`).

    Raises:
        ValueError: mismatched shapes, fewer than two classes in ``y_train``, or a test
            label the probe never saw.
    """
    return LabelProbe(features_train, y_train, max_iter, l2).label_mi(features_test, y_test)


def _logistic(l2: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=l2, max_iter=max_iter)


def _select_l2(z: np.ndarray, y: np.ndarray, grid: Sequence[float], max_iter: int) -> float:
    """The grid value with the lowest cross-entropy on a stratified 25% validation split.

    Falls back to the largest value when some class has fewer than 2 samples to split.
    """
    if np.bincount(y)[np.unique(y)].min() < 2:
        return max(grid)
    rng = np.random.default_rng(0)
    val = np.zeros(y.size, dtype=bool)
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        val[members[: max(1, members.size // 4)]] = True
    best, best_ce = max(grid), np.inf
    for c in grid:
        model = _logistic(c, max_iter).fit(z[~val], y[~val])
        log_p = model.predict_log_proba(z[val])
        known = np.isin(y[val], model.classes_)
        column = np.searchsorted(model.classes_, y[val][known])
        ce = -log_p[np.flatnonzero(known), column].mean() if known.any() else np.inf
        if ce < best_ce:
            best, best_ce = c, ce
    return best


def _flat(features: ArrayLike, name: str) -> np.ndarray:
    x = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"probe_label_mi: {name} must be (N, ...) with N > 0, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"probe_label_mi: {name} holds NaN or inf")
    return x
