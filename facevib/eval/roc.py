"""ROC operating points for verification scores: the exact method and the published one.

Two ways of reading "TPR at FPR = f" off a set of genuine and impostor scores:

* **exact** (:func:`tpr_at_fpr`): the decision rule is "accept when score > t". With ``n``
  impostor scores, at most ``k = floor(f * n)`` of them may be accepted, so the threshold is
  the ``(k+1)``-th largest impostor score; TPR is the fraction of genuine scores strictly above
  it. This is the largest TPR any threshold reaches with FPR <= f. **Ties**: every score equal
  to the threshold is rejected, genuine or impostor, so with ties at the threshold the achieved
  FPR is below ``k / n`` (never above ``f``), and a genuine score tied with that impostor does
  not count. When ``f * n < 1`` (too few impostors to resolve ``f``), ``k = 0``: the threshold
  is the largest impostor score, the achieved FPR is 0 and the TPR is a lower bound for the
  TPR at ``f``; the point is flagged ``resolved = False``.
* **nearest ROC point** (:func:`tpr_at_fpr_nearest`): what insightface's IJB scripts (and so
  most published IJB-B/C tables) do: build sklearn's ``roc_curve`` (with its default
  ``drop_intermediate=True``), reverse it, and take the point whose FPR is closest to ``f``
  (the first such point of the reversed curve, i.e. the one with the largest TPR). The chosen
  point may have FPR above ``f``, so it can overstate the TPR at low FPR.

:func:`roc_curve` reproduces sklearn's curve without sklearn, sorting genuine and impostor
scores apart (an IJB-C run has 15.7M scores, of which 19.6k genuine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "DEFAULT_FPRS",
    "OperatingPoint",
    "NearestPoint",
    "split_scores",
    "roc_curve",
    "roc_auc",
    "impostor_thresholds",
    "tpr_at_fpr",
    "Z95",
    "wilson_interval",
    "tpr_at_fpr_nearest",
]

# The FPR grid of the IJB-B/C tables (insightface's x_labels).
DEFAULT_FPRS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class OperatingPoint:
    """An exact operating point: accept iff ``score > threshold``.

    ``allowed_false_accepts`` is ``k = floor(target_fpr * impostors)``; ``fpr`` is the FPR
    actually reached (``<= target_fpr``); ``resolved`` is False when ``target_fpr * impostors
    < 1``, i.e. the scores cannot tell FPR ``target_fpr`` from FPR 0.
    """

    target_fpr: float
    tpr: float
    fpr: float
    threshold: float
    allowed_false_accepts: int
    impostors: int
    genuine: int
    resolved: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        """JSON-ready fields (the threshold as a float, ``-inf`` when everything is accepted)."""
        return asdict(self)


@dataclass(frozen=True)
class NearestPoint:
    """The ROC point whose FPR is nearest ``target_fpr`` (insightface's reading)."""

    target_fpr: float
    tpr: float
    fpr: float
    threshold: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready fields."""
        return asdict(self)


def split_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``scores``/``labels`` and return ``(genuine, impostor)`` score arrays.

    ``labels`` are 1/True for genuine (same identity) pairs and 0/False for impostor pairs.

    Raises:
        ValueError: shapes differ, labels are not binary, scores are not finite, or one of
            the two classes is empty.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if labels.dtype != np.bool_:
        bad = ~np.isin(labels, (0, 1))
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(f"labels must be 0/1, got {labels[index]!r} at index {index}")
        labels = labels.astype(bool)
    finite = np.isfinite(scores)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"scores must be finite, got {scores[index]!r} at index {index}")
    genuine, impostor = scores[labels], scores[~labels]
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError(f"need both genuine and impostor scores, got {genuine.size} genuine, {impostor.size} impostor")
    return genuine, impostor


def _allowed_false_accepts(target: float, impostors: int) -> int:
    """``floor(target * impostors)`` with ``target`` read as the decimal the user wrote.

    ``0.29 * 100`` is 28.999999999999996 in floating point; ``Fraction(repr(0.29))`` is 29/100.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target}")
    return int(Fraction(repr(float(target))) * impostors)


def impostor_thresholds(impostor: np.ndarray, fprs: Sequence[float]) -> list[tuple[float, int]]:
    """``(threshold, k)`` per target FPR for the rule "accept iff score > threshold".

    ``k = floor(f * n)`` impostors may be accepted, so the threshold is the ``(k+1)``-th
    largest impostor score (``-inf`` when ``k >= n``: everything is accepted). One
    ``np.partition`` call finds all of them, so 15.7M IJB-C scores take a fraction of a second.
    """
    impostor = np.asarray(impostor)
    n = impostor.size
    allowed = [_allowed_false_accepts(f, n) for f in fprs]
    # The (k+1)-th largest impostor is at ascending position n - 1 - k.
    positions = sorted({n - 1 - k for k in allowed if k < n})
    ordered = np.partition(impostor, positions) if positions else impostor
    return [(float(ordered[n - 1 - k]) if k < n else -np.inf, k) for k in allowed]


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fprs: Sequence[float] = DEFAULT_FPRS) -> list[OperatingPoint]:
    """Exact TPR at each target FPR (see the module docstring for the rule and ties).

    Higher scores mean "more likely the same identity".
    """
    genuine, impostor = split_scores(scores, labels)
    n = impostor.size
    points = []
    for target, (threshold, k) in zip(fprs, impostor_thresholds(impostor, fprs), strict=True):
        points.append(
            OperatingPoint(
                target_fpr=float(target),
                tpr=float(np.count_nonzero(genuine > threshold)) / genuine.size,
                fpr=float(np.count_nonzero(impostor > threshold)) / n,
                threshold=threshold,
                allowed_false_accepts=k,
                impostors=n,
                genuine=int(genuine.size),
                resolved=k >= 1 or target == 0,
            )
        )
    return points


def roc_curve(
    scores: np.ndarray, labels: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` exactly as ``sklearn.metrics.roc_curve(labels, scores)``.

    One point per distinct score (descending), counting scores ``>=`` it; with
    ``drop_intermediate`` the points collinear with their neighbours (zero second difference
    of both counts) are dropped; a first point ``(0, 0)`` at threshold ``+inf`` is prepended.
    """
    genuine, impostor = split_scores(scores, labels)
    values = np.sort(np.concatenate([genuine, impostor]))
    total = values.size
    run_start = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    distinct = values[run_start]
    at_or_above = total - run_start  # scores >= each distinct value
    # Genuine scores are few (IJB-C: 19.6k of 15.7M): place each into its run, then count
    # runs from the top down, instead of sorting all scores together with their labels.
    genuine_runs = np.searchsorted(distinct, genuine)
    genuine_at = np.bincount(genuine_runs, minlength=distinct.size)
    tps = np.cumsum(genuine_at[::-1]).astype(np.float64)
    fps = at_or_above[::-1].astype(np.float64) - tps
    thresholds = distinct[::-1].astype(np.float64)
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def roc_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoidal rule (sklearn's ``auc``)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def tpr_at_fpr_nearest(
    scores: np.ndarray,
    labels: np.ndarray,
    fprs: Sequence[float] = DEFAULT_FPRS,
    curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[NearestPoint]:
    """TPR at the ROC point whose FPR is nearest each target (insightface's IJB table).

    ``curve`` may pass a precomputed :func:`roc_curve` result to avoid sorting twice.
    On equal distances the point of the reversed curve with the lowest index wins, as
    Python's ``min`` over ``(distance, index)`` pairs does in insightface's script.
    """
    fpr, tpr, thresholds = curve if curve is not None else roc_curve(scores, labels)
    fpr, tpr, thresholds = fpr[::-1], tpr[::-1], thresholds[::-1]
    points = []
    for target in fprs:
        index = int(np.argmin(np.abs(fpr - target)))  # argmin returns the first minimum
        points.append(NearestPoint(float(target), float(tpr[index]), float(fpr[index]), float(thresholds[index])))
    return points


Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927), as ``(low, high)``.

    Unlike the normal approximation it stays inside [0, 1] and behaves near 0 and 1, where
    TPR and FPR figures of face models live (0 false accepts still gives a positive upper end).
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
