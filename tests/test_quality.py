"""The quality protocol and heads: error-versus-discard curves against a hand-worked example,
the threshold fixed before discarding, the [0, 1] scale, and the heads learning their objectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facevib.quality.curves import bootstrap_areas, curve_area, fnmr_discard_curve, threshold_at_fmr
from facevib.quality.heads import constant_objective, improvement, objective, train_head
from facevib.quality.scale import EmpiricalCDF, quantile_knots

# Ten genuine pairs: cosine, quality. At threshold 0.5, pairs 0, 2, 5, 9 are false non-matches.
GENUINE = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.95, 0.6, 0.85, 0.4])
QUALITY = np.array([1, 10, 2, 9, 8, 6, 7, 5, 4, 3], dtype=float)


def test_curve_and_area_match_a_hand_worked_example():
    # By hand: lowest quality first is pair 0 (error), 2 (error), 9 (error), 8, 7, 5 (error), ...
    # f = 0: 4/10; f = 0.1 drops pair 0: 3/9; f = 0.2 drops 0 and 2: 2/8; f = 0.3 drops 9 too: 1/7.
    curve = fnmr_discard_curve(GENUINE, QUALITY, 0.5, grid=(0.0, 0.1, 0.2, 0.3))
    np.testing.assert_allclose(curve, [0.4, 3 / 9, 2 / 8, 1 / 7], rtol=0, atol=1e-12)
    # Trapezoids over [0, 0.1] and [0.1, 0.2] only: 0.05 * (0.4 + 1/3) + 0.05 * (1/3 + 0.25).
    area = curve_area(curve, grid=(0.0, 0.1, 0.2, 0.3))
    assert area == pytest.approx(0.05 * (0.4 + 1 / 3) + 0.05 * (1 / 3 + 0.25), abs=1e-12)


def test_threshold_is_read_off_all_impostors_before_discarding():
    impostor = np.arange(2000) / 2000.0  # 0, 0.0005, ..., 0.9995
    # FMR 1e-3 of 2000 pairs: 2 impostors may score above t, so t is the third largest, 0.9985.
    threshold = threshold_at_fmr(impostor, 1e-3)
    assert threshold == pytest.approx(0.9985, abs=1e-12)
    assert np.sum(impostor > threshold) == 2
    # Genuine pairs around that threshold: discarding the lowest-quality ones never moves it,
    # so the kept pairs' FNMR is counted against 0.9985 (a threshold refitted on the kept
    # pairs could not even be defined: the curve is given no impostors).
    genuine = np.array([0.999, 0.998, 0.9999, 0.997])
    quality = np.array([4.0, 1.0, 3.0, 2.0])
    curve = fnmr_discard_curve(genuine, quality, threshold, grid=(0.0, 0.25, 0.5))
    np.testing.assert_allclose(curve, [2 / 4, 1 / 3, 0 / 2], atol=1e-12)
    with pytest.raises(ValueError, match="cannot resolve FMR"):
        threshold_at_fmr(impostor[:500], 1e-3)


def test_an_informative_quality_beats_random_and_noise_does_not():
    rng = np.random.default_rng(0)
    identities = np.repeat(np.arange(200), 30)
    hidden = rng.random(identities.size)  # a face's true quality
    genuine = hidden + 0.3 * rng.standard_normal(identities.size)  # low quality, low score
    threshold = float(np.quantile(genuine, 0.3))
    qualities = {"oracle": hidden, "noise": rng.random(identities.size)}
    result = bootstrap_areas(genuine, identities, qualities, threshold, resamples=100, seed=1)
    assert result["oracle"].gain_over_random > 4 * result["oracle"].gain_se
    assert abs(result["noise"].gain_over_random) < 4 * result["noise"].gain_se


def test_the_scale_is_the_empirical_cdf_of_the_calibration_scores():
    scores = np.random.default_rng(2).normal(size=1001)
    knots = quantile_knots(scores, knots=10)
    scale = EmpiricalCDF(knots)
    probe = np.concatenate([knots, [scores.min() - 1, scores.max() + 1], np.linspace(-2, 2, 17)])
    got = scale(torch.tensor(probe, dtype=torch.float32)).numpy()
    # Reference: numpy's piecewise-linear interpolation through (quantile_k, k / 10).
    expected = np.interp(probe, knots, np.linspace(0, 1, 11))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got[len(knots)] == 0.0 and got[len(knots) + 1] == 1.0


def _features(classes: int, per_class: int, dim: int, rng: np.random.Generator):
    """Embeddings whose norm tells how noisy their direction is (MagFace's observation, built in)."""
    centres = rng.standard_normal((classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    noise = rng.uniform(0.05, 0.9, labels.size)
    direction = centres[labels] + noise[:, None] * rng.standard_normal((labels.size, dim)) / math.sqrt(dim) * 3
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    embedding = direction * (3.2 - 3.0 * noise)[:, None]
    return embedding.astype(np.float32), labels, centres.astype(np.float32)


@pytest.mark.parametrize("kind", ["pfe", "cr_fiqa"])
def test_heads_improve_their_objective_on_held_out_identities(kind):
    rng = np.random.default_rng(3)
    embedding, labels, centres = _features(90, 8, 16, rng)
    fit, check = labels < 60, labels >= 60  # the last 30 identities are never trained on
    head = train_head(kind, embedding[fit], labels[fit], centres=centres, epochs=40, seed=0)
    x, y, w = torch.from_numpy(embedding), torch.from_numpy(labels), torch.from_numpy(centres)
    losses = objective(head, x[check], y[check], w)
    baseline = constant_objective(kind, (x[fit], y[fit]), (x[check], y[check]), w)
    gain, se = improvement(losses, baseline)
    assert gain > 4 * se, (gain, se)
