"""Error-versus-discard curves: how much a quality score lowers FNMR when the worst pairs are dropped.

The protocol (as ISO/IEC 29794-1's error-versus-discard characteristic, and the face-quality
papers cited in ``docs/quality.md``):

1. The decision threshold is fixed on the FULL set, before anything is discarded: the
   smallest cosine ``t`` with at most ``fmr * n_impostor`` impostor pairs scoring ``> t``.
2. A pair's quality is the lower of its two faces' qualities.
3. For each discard fraction ``f``, the ``floor(f * n)`` genuine pairs of lowest pair quality
   are dropped (ties broken by pair order, which the caller randomises) and the FNMR of the
   rest is measured at ``t``: the share of kept genuine pairs with cosine ``<= t``.
4. The area under FNMR(f) for ``f`` in ``[0, 0.2]`` (trapezoid rule on the grid) summarises
   the curve: lower is better. Random discard keeps FNMR flat in expectation, so its expected
   area is ``FNMR(0) * 0.2``.

Standard errors come from a bootstrap over identities: genuine pairs are resampled by the
identity they belong to (all of its pairs together), the threshold stays fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AREA_LIMIT",
    "DISCARD_GRID",
    "CurveResult",
    "threshold_at_fmr",
    "fnmr_discard_curve",
    "curve_area",
    "bootstrap_areas",
]

AREA_LIMIT = 0.2
DISCARD_GRID = np.round(np.arange(0, 51) / 100.0, 2)  # 0, 0.01, ..., 0.5


def threshold_at_fmr(impostor_scores: np.ndarray, fmr: float) -> float:
    """The smallest threshold ``t`` (an impostor score) with ``#{impostor > t} <= fmr * n``.

    Raises:
        ValueError: no impostor scores, or ``fmr`` outside ``(0, 1)``, or too few impostor
            pairs to resolve ``fmr`` (fewer than ``1 / fmr``).
    """
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64))
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    if scores.size * fmr < 1.0:
        raise ValueError(f"{scores.size} impostor pairs cannot resolve FMR {fmr:g} (need >= {int(np.ceil(1 / fmr))})")
    allowed = int(np.floor(fmr * scores.size))  # impostors that may score above t
    return float(scores[scores.size - 1 - allowed])


def fnmr_discard_curve(
    genuine_scores: np.ndarray, pair_quality: np.ndarray, threshold: float, grid: Sequence[float] = DISCARD_GRID
) -> np.ndarray:
    """FNMR at ``threshold`` after discarding the lowest-quality ``floor(f * n)`` genuine pairs, per ``f`` in ``grid``.

    A stable sort keeps tied qualities in their given order.
    """
    scores = np.asarray(genuine_scores, dtype=np.float64)
    quality = np.asarray(pair_quality, dtype=np.float64)
    if scores.shape != quality.shape or scores.ndim != 1 or scores.size == 0:
        raise ValueError(
            f"genuine scores {scores.shape} and pair qualities {quality.shape} must be equal, non-empty 1-D"
        )
    order = np.argsort(quality, kind="stable")
    errors = (scores[order] <= threshold).astype(np.float64)
    # errors in the kept tail [k:] for every k, from a reversed cumulative sum.
    tail_errors = np.concatenate([np.cumsum(errors[::-1])[::-1], [0.0]])
    n = scores.size
    out = []
    for fraction in grid:
        dropped = int(np.floor(float(fraction) * n + 1e-9))
        out.append(tail_errors[dropped] / (n - dropped))
    return np.asarray(out)


def curve_area(curve: np.ndarray, grid: Sequence[float] = DISCARD_GRID, limit: float = AREA_LIMIT) -> float:
    """Trapezoid area under ``curve`` over the grid points ``<= limit`` (which must include ``limit``)."""
    grid = np.asarray(grid, dtype=np.float64)
    inside = grid <= limit + 1e-12
    if not np.isclose(grid[inside][-1], limit):
        raise ValueError(f"the discard grid must contain {limit}")
    x, y = grid[inside], np.asarray(curve, dtype=np.float64)[inside]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


@dataclass(frozen=True)
class CurveResult:
    """One candidate's curve, its area and the bootstrap spread of the area and of its gap to random."""

    curve: np.ndarray
    area: float
    area_se: float
    gain_over_random: float  # random's area minus this area (positive = better than random)
    gain_se: float


def bootstrap_areas(
    genuine_scores: np.ndarray,
    pair_identity: np.ndarray,
    pair_qualities: Mapping[str, np.ndarray],
    threshold: float,
    *,
    resamples: int,
    seed: int,
    grid: Sequence[float] = DISCARD_GRID,
) -> dict[str, CurveResult]:
    """Curves and areas of every candidate, with standard errors from one shared identity bootstrap.

    Random discard is the expected (flat) curve at each resample's FNMR(0), so the gain of a
    candidate over random and its standard error come from the same resamples (a paired
    comparison: the identity mix moves both areas together).
    """
    scores = np.asarray(genuine_scores, dtype=np.float64)
    identity = np.asarray(pair_identity)
    ids, inverse = np.unique(identity, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(ids.size)]
    rng = np.random.default_rng(seed)
    names = list(pair_qualities)
    areas = {name: [] for name in names}
    gains = {name: [] for name in names}
    for _ in range(resamples):
        picked = np.concatenate([members[k] for k in rng.integers(0, ids.size, ids.size)])
        base = float(np.mean(scores[picked] <= threshold)) * AREA_LIMIT
        for name in names:
            area = curve_area(fnmr_discard_curve(scores[picked], pair_qualities[name][picked], threshold, grid), grid)
            areas[name].append(area)
            gains[name].append(base - area)
    random_area = float(np.mean(scores <= threshold)) * AREA_LIMIT
    out = {}
    for name in names:
        curve = fnmr_discard_curve(scores, pair_qualities[name], threshold, grid)
        area = curve_area(curve, grid)
        out[name] = CurveResult(
            curve=curve,
            area=area,
            area_se=float(np.std(areas[name], ddof=1)),
            gain_over_random=random_area - area,
            gain_se=float(np.std(gains[name], ddof=1)),
        )
    return out
