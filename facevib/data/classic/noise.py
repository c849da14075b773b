"""Symmetric label noise (cellVIB eq. 8): a label stays with probability 1 - r, else moves to
each other class with probability r / (C - 1)."""

from __future__ import annotations

import numpy as np

__all__ = ["symmetric_label_noise"]


def symmetric_label_noise(
    labels: np.ndarray, rate: float, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * N)`` labels, each to a uniformly drawn *other* class.

    Drawing the flipped set as a fixed-size subset (rather than flipping each label with
    probability ``rate``) makes the realised noise rate exact, so runs at 20% and 40% are
    at 20% and 40%; the destination is uniform over the C - 1 wrong classes, the
    off-diagonal r / (C - 1) of eq. 8.

    Args:
        labels: int labels in ``0..num_classes-1``, shape (N,).
        rate: fraction to flip, in [0, 1].
        num_classes: C >= 2.
        seed: the same seed gives the same noisy labels.

    Returns:
        ``(noisy_labels, flipped)``, int64 (N,) and bool (N,).

    Raises:
        ValueError: rate outside [0, 1], fewer than 2 classes, or labels out of range.
    """
    labels = np.asarray(labels)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"labels must be a vector of ints in 0..{num_classes - 1}")
    rng = np.random.default_rng(seed)
    count = int(round(rate * len(labels)))
    chosen = rng.choice(len(labels), size=count, replace=False)
    # An offset in 1..C-1 added modulo C lands uniformly on the other classes.
    offsets = rng.integers(1, num_classes, size=count)
    noisy = labels.astype(np.int64).copy()
    noisy[chosen] = (noisy[chosen] + offsets) % num_classes
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[chosen] = True
    return noisy, flipped
