"""Confidence intervals for the report's figures.

The Wilson interval treats pairs as independent Bernoulli trials. Verification sets reuse
photos and people across pairs (LFW does too), so pairs are correlated and the pair-level
interval is too narrow. The verification folds are identity-disjoint (LFW's are, and so are
the synthetic sets'), so the spread of the fold accuracies carries that correlation: the
Student-t interval over the folds (:func:`fold_interval`) is the honest one when it is the
wider. :func:`accuracy_interval` reports the wider of the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from facevib.eval.roc import Z95, wilson_interval  # re-exported: the report's intervals
from facevib.eval.verification import kfold_splits

__all__ = [
    "Z95",
    "wilson_interval",
    "pooled_correct",
    "student_t95",
    "fold_interval",
    "accuracy_interval",
    "paired_difference",
]


def pooled_correct(fold_accuracies: Sequence[float], pairs: int) -> int:
    """Correctly classified pairs over all folds, from the per-fold accuracies.

    Folds are the contiguous splits of :func:`facevib.eval.verification.kfold_splits`, so
    fold ``i`` holds a known number of pairs and ``accuracy_i * size_i`` is an integer.
    """
    splits = kfold_splits(pairs, len(fold_accuracies))
    return int(sum(round(acc * test.size) for acc, (_, test) in zip(fold_accuracies, splits, strict=True)))


# Two-sided 95% quantiles of Student's t by degrees of freedom (10-fold protocols use df = 9).
_T95 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
    10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
    18: 2.1009, 19: 2.0930, 20: 2.0860, 25: 2.0595, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799,
}  # fmt: skip


def student_t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (table values;
    between tabulated df the next smaller df is used, which errs on the wide side)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return Z95
    return _T95[max(k for k in _T95 if k <= df)]


def fold_interval(fold_accuracies: Sequence[float]) -> tuple[float, float]:
    """Mean +- t * s / sqrt(k) over ``k`` fold accuracies (``s`` with Bessel's correction),
    clipped to [0, 1]."""
    k = len(fold_accuracies)
    if k < 2:
        raise ValueError(f"a fold interval needs >= 2 folds, got {k}")
    mean = sum(fold_accuracies) / k
    s = math.sqrt(sum((a - mean) ** 2 for a in fold_accuracies) / (k - 1))
    half = student_t95(k - 1) * s / math.sqrt(k)
    return max(0.0, mean - half), min(1.0, mean + half)


def accuracy_interval(fold_accuracies: Sequence[float], pairs: int) -> tuple[tuple[float, float], str]:
    """The wider of the pair-level Wilson interval and the fold-level t interval, and which it is
    (``"pairs"`` or ``"folds"``)."""
    wilson = wilson_interval(pooled_correct(fold_accuracies, pairs), pairs)
    if len(fold_accuracies) < 2:
        return wilson, "pairs"
    folds = fold_interval(fold_accuracies)
    if folds[1] - folds[0] > wilson[1] - wilson[0]:
        return folds, "folds"
    return wilson, "pairs"


def paired_difference(folds_a: Sequence[float], folds_b: Sequence[float]) -> tuple[float, float, float]:
    """Mean difference ``a - b`` of two models' accuracies on the same folds, with its 95%
    Student-t interval over the per-fold differences: ``(mean, low, high)``.

    Both models see the same pairs in the same folds, so the fold-to-fold variation they share
    (harder people, harder photos) cancels; this tells two models apart far better than
    comparing their separate intervals.
    """
    if len(folds_a) != len(folds_b):
        raise ValueError(f"fold counts differ: {len(folds_a)} vs {len(folds_b)} (not the same protocol)")
    differences = [a - b for a, b in zip(folds_a, folds_b, strict=True)]
    k = len(differences)
    mean = sum(differences) / k
    if k < 2:
        return mean, mean, mean
    s = math.sqrt(sum((d - mean) ** 2 for d in differences) / (k - 1))
    half = student_t95(k - 1) * s / math.sqrt(k)
    return mean, mean - half, mean + half
