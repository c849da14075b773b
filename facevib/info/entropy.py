"""Discrete entropies and unit conversion shared by the MI estimators.

Every estimator in :mod:`facevib.info` works in nats; :func:`to_bits` converts for plots
(the information-plane figures of the cellVIB and binning papers are in bits).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["LN2", "check_labels", "entropy_from_counts", "label_entropy", "to_bits"]

LN2 = math.log(2.0)


def to_bits(nats: float | ArrayLike) -> float | np.ndarray:
    """Nats to bits (divide by ln 2); a float for a float, an array for anything else."""
    if isinstance(nats, int | float):
        return float(nats) / LN2
    return np.asarray(nats, dtype=np.float64) / LN2


def entropy_from_counts(counts: ArrayLike) -> float:
    """Plug-in entropy -sum p log p (nats) of a histogram; empty bins are ignored.

    Raises:
        ValueError: negative counts or an all-zero histogram.
    """
    c = np.asarray(counts, dtype=np.float64).ravel()
    if (c < 0).any():
        raise ValueError("entropy_from_counts: negative count")
    total = c.sum()
    if total <= 0:
        raise ValueError("entropy_from_counts: empty histogram")
    p = c[c > 0] / total
    return float(-(p * np.log(p)).sum())


def label_entropy(labels: ArrayLike, num_classes: int | None = None) -> float:
    """Plug-in entropy H(Y) (nats) of integer labels.

    Raises:
        ValueError: labels that are not 1-D non-negative integers, or one >= ``num_classes``.
    """
    y = check_labels(labels, num_classes)
    return entropy_from_counts(np.bincount(y))


def check_labels(labels: ArrayLike, num_classes: int | None = None, n: int | None = None) -> np.ndarray:
    """``labels`` as a 1-D int64 array, checked (length ``n``, range ``[0, num_classes)``)."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    if num_classes is not None and y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} is out of range for num_classes={num_classes}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} samples")
    return y
