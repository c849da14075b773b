"""ROC metrics against sklearn, a brute-force threshold sweep and hand-computed cases with ties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_curve as sk_roc_curve

from facevib.eval.roc import roc_auc, roc_curve, split_scores, tpr_at_fpr, tpr_at_fpr_nearest

FPRS = (1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0)


def _random_scores(seed: int, n: int = 3000, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping genuine/impostor scores; rounding to ``decimals`` creates many ties."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    scores = rng.normal(0.0, 1.0, n) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores.astype(np.float32), labels


def _brute_force_tpr(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """Best TPR over every threshold of the rule 'accept iff score > t' with FPR <= target."""
    genuine, impostor = scores[labels], scores[~labels]
    best = 0.0
    for t in np.r_[-np.inf, np.unique(scores)]:
        if np.mean(impostor > t) <= target + 1e-12:
            best = max(best, float(np.mean(genuine > t)))
    return best


def _insightface_nearest(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """insightface's ijb_11.py table cell: flipped sklearn ROC, min over (|fpr - x|, index)."""
    fpr, tpr, _ = sk_roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, index = min(zip(abs(fpr - target), range(len(fpr)), strict=True))
    return float(tpr[index])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_equals_sklearn(seed: int, decimals: int | None, drop: bool) -> None:
    scores, labels = _random_scores(seed, n=2000, decimals=decimals)
    fpr, tpr, thresholds = roc_curve(scores, labels, drop_intermediate=drop)
    ref_fpr, ref_tpr, ref_thresholds = sk_roc_curve(labels, scores, drop_intermediate=drop)
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)
    np.testing.assert_array_equal(thresholds, ref_thresholds)
    assert roc_auc(fpr, tpr) == pytest.approx(sk_auc(ref_fpr, ref_tpr), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_exact_tpr_equals_brute_force_sweep(seed: int, decimals: int | None) -> None:
    scores, labels = _random_scores(seed, n=1500, decimals=decimals)
    impostors = int((~labels).sum())
    for point in tpr_at_fpr(scores, labels, FPRS):
        assert point.tpr == pytest.approx(_brute_force_tpr(scores, labels, point.target_fpr), abs=1e-12)
        assert point.fpr <= point.target_fpr + 1e-12
        assert point.allowed_false_accepts == int(np.floor(point.target_fpr * impostors + 1e-9))
        # the reported threshold reproduces the reported rates
        assert point.fpr == np.mean(scores[~labels] > point.threshold)
        assert point.tpr == np.mean(scores[labels] > point.threshold)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_nearest_point_equals_insightface_table(seed: int, decimals: int | None) -> None:
    scores, labels = _random_scores(seed, n=1500, decimals=decimals)
    for point in tpr_at_fpr_nearest(scores, labels, FPRS + (1e-6, 0.3333)):
        assert point.tpr == _insightface_nearest(scores, labels, point.target_fpr)


def test_exact_hand_computed_with_ties() -> None:
    genuine = [0.9, 0.8, 0.8, 0.5]
    impostor = [0.8, 0.7, 0.3, 0.2, 0.1]
    scores = np.array(genuine + impostor)
    labels = np.array([1] * 4 + [0] * 5)
    p0, p20, p40, p100 = tpr_at_fpr(scores, labels, [0.0, 0.2, 0.4, 1.0])
    # FPR 0: threshold = largest impostor 0.8; the genuine 0.8s tie with it and are rejected.
    assert (p0.threshold, p0.tpr, p0.fpr, p0.allowed_false_accepts) == (0.8, 0.25, 0.0, 0)
    # FPR 0.2 allows 1 of 5 impostors: threshold 0.7, genuine above it 0.9, 0.8, 0.8.
    assert (p20.threshold, p20.tpr, p20.fpr, p20.allowed_false_accepts) == (0.7, 0.75, 0.2, 1)
    assert (p40.threshold, p40.tpr, p40.fpr) == (0.3, 1.0, 0.4)
    assert (p100.threshold, p100.tpr, p100.fpr) == (-np.inf, 1.0, 1.0)


def test_exact_ties_among_impostors_lower_the_achieved_fpr() -> None:
    scores = np.array([0.95, 0.85, 0.8, 0.8, 0.8, 0.1, 0.0])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    (point,) = tpr_at_fpr(scores, labels, [0.25])  # k = 1 of 4 impostors
    # The 2nd largest impostor (0.8) ties with the largest: both rejected, FPR 0 < 0.25,
    # and the genuine 0.8 tied with them is rejected too.
    assert (point.threshold, point.fpr, point.tpr) == (0.8, 0.0, 2 / 3)


def test_unresolved_fpr_is_flagged() -> None:
    scores = np.array([0.9, 0.6, 0.7, 0.5, 0.4, 0.3, 0.2])
    labels = np.array([1, 1, 0, 0, 0, 0, 0])
    low, high = tpr_at_fpr(scores, labels, [0.1, 0.2])  # 5 impostors: 1/5 is the finest step
    assert not low.resolved and low.allowed_false_accepts == 0 and low.threshold == 0.7 and low.tpr == 0.5
    assert high.resolved and high.allowed_false_accepts == 1


def test_target_read_as_written_decimal() -> None:
    # 0.29 * 100 == 28.999999999999996 in floating point; 29 false accepts are allowed.
    scores = np.r_[np.linspace(1.0, 0.0, 100), [2.0]]
    labels = np.r_[np.zeros(100, bool), [True]]
    (point,) = tpr_at_fpr(scores, labels, [0.29])
    assert point.allowed_false_accepts == 29
    assert point.fpr == pytest.approx(0.29)


def test_nearest_point_can_exceed_the_target_where_exact_does_not() -> None:
    # 3 genuine, 10 impostors. sklearn's curve keeps the corners (0, 1/3), (0.2, 1/3), (0.2, 1)
    # and drops the collinear (0.1, 1/3): the point nearest FPR 0.14 is (0.2, 1.0), above the
    # target, while at most 1 false accept (FPR 0.1) leaves only the genuine 0.9 above 0.8.
    genuine = [0.9, 0.75, 0.7]
    impostor = [0.85, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0]
    scores = np.array(genuine + impostor)
    labels = np.array([1] * 3 + [0] * 10, bool)
    (nearest,) = tpr_at_fpr_nearest(scores, labels, [0.14])
    (exact,) = tpr_at_fpr(scores, labels, [0.14])
    assert (nearest.fpr, nearest.tpr) == (0.2, 1.0)
    assert (exact.fpr, exact.tpr, exact.threshold) == (0.1, 1 / 3, 0.8)
    assert nearest.tpr == _insightface_nearest(scores, labels, 0.14)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 2], "labels must be 0/1"),
        ([0.1, np.nan], [1, 0], "finite"),
        ([0.1, 0.2], [1, 1], "impostor"),
        ([0.1, 0.2, 0.3], [1, 0], "equal length"),
    ],
)
def test_bad_inputs_raise(scores: list, labels: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_scores(np.array(scores), np.array(labels))
