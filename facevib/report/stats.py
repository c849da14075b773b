"""Confidence intervals for the report's figures.

Both intervals treat pairs as independent Bernoulli trials. Verification sets reuse photos
across pairs (LFW does too), so pairs sharing a photo are correlated and the true
uncertainty is somewhat larger than these intervals say; they are a lower bound on the
noise, which is what matters when asking whether two models can be told apart at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from facevib.eval.verification import kfold_splits

__all__ = ["Z95", "wilson_interval", "pooled_correct"]

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927), as ``(low, high)``.

    Unlike the normal approximation it stays inside [0, 1] and behaves near 0 and 1, where
    TPR and accuracy figures of face models live.
    """
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def pooled_correct(fold_accuracies: Sequence[float], pairs: int) -> int:
    """Correctly classified pairs over all folds, from the per-fold accuracies.

    Folds are the contiguous splits of :func:`facevib.eval.verification.kfold_splits`, so
    fold ``i`` holds a known number of pairs and ``accuracy_i * size_i`` is an integer.
    """
    splits = kfold_splits(pairs, len(fold_accuracies))
    return int(sum(round(acc * test.size) for acc, (_, test) in zip(fold_accuracies, splits, strict=True)))
