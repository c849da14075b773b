"""MI estimators of facevib.info against closed forms (nats unless stated)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from facevib.info import (
    BinningAccumulator,
    binning_mi,
    kernel_mi_bounds,
    label_entropy,
    label_mi_lower_bound,
    probe_label_mi,
    to_bits,
    unique_rows,
    vib_kl_bound,
)
from facevib.models import VIBCell

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _h_binary(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def _bsc(n_per_class: int, flip: float) -> tuple[np.ndarray, np.ndarray]:
    """Y uniform on {0, 1}, T = Y flipped on exactly ``flip`` of each class: I = ln2 - H_b(flip)."""
    flips = round(flip * n_per_class)
    y = np.repeat([0, 1], n_per_class)
    t = y.copy()
    for cls in (0, 1):
        t[np.flatnonzero(y == cls)[:flips]] ^= 1
    return t, y


def test_to_bits() -> None:
    assert to_bits(math.log(2)) == pytest.approx(1.0)
    np.testing.assert_allclose(to_bits([math.log(4), 0.0]), [2.0, 0.0])


# ----------------------------------------------------------------------------- binning


def test_binning_discrete_patterns_of_known_entropy() -> None:
    # 8 patterns with probabilities 1/2, 1/4, 1/8, 1/16, then 4 x 1/64: H = 31/16 + 3/8 bits.
    probs = [32, 16, 8, 4, 1, 1, 1, 1]
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(8, 3, 4, 4)) * 5
    t = np.concatenate([np.repeat(patterns[i : i + 1], c, 0) for i, c in enumerate(probs)])
    expected_bits = -sum((c / 64) * math.log2(c / 64) for c in probs)
    result = binning_mi(t)
    assert result.num_codes == 8
    assert to_bits(result.h_t) == pytest.approx(expected_bits)
    assert result.i_xt == result.h_t
    assert not result.saturated


def test_binning_binary_symmetric_channel() -> None:
    for flip in (0.0, 0.1, 0.25, 0.5):
        t, y = _bsc(400, flip)
        # A layer whose code is the channel output: two values far apart in bin units.
        layer = np.stack([t * 3.0, np.full_like(t, 0.2, dtype=float)], 1)
        result = binning_mi(layer, y)
        expected = math.log(2) - (_h_binary(flip) if 0 < flip < 1 else 0.0)
        assert result.i_ty == pytest.approx(expected, abs=1e-12)
        assert result.h_y == pytest.approx(math.log(2))


def test_binning_bin_size_and_saturation() -> None:
    rng = np.random.default_rng(1)
    n = 300
    wide = rng.normal(size=(n, 512))
    y = rng.integers(0, 4, size=n)
    saturated = binning_mi(wide, y)
    assert saturated.num_codes == n and saturated.saturated
    assert saturated.h_t == pytest.approx(math.log(n))
    assert saturated.i_ty == pytest.approx(label_entropy(y))  # every code is its own label
    # Values in [0, 0.67) share bin 0; the same layer at a huge bin size is one code.
    coarse = binning_mi(np.abs(wide) * 0.0 + 0.66, y)
    assert coarse.num_codes == 1 and coarse.h_t == 0.0 and coarse.i_ty == pytest.approx(0.0)
    assert binning_mi(np.array([[0.0], [0.66], [0.67], [-0.01]])).num_codes == 3


def test_unique_rows_is_exact_across_column_chunks() -> None:
    rng = np.random.default_rng(2)
    base = rng.integers(-3, 3, size=(50, 997))
    rows = base[rng.integers(0, 50, size=400)]
    rows[::7, -1] += 1  # differences only in the last chunk
    ids = unique_rows(lambda a, b: rows[:, a:b], rows.shape[0], rows.shape[1], chunk_cols=100)
    _, reference = np.unique(rows, axis=0, return_inverse=True)
    reference = reference.reshape(-1)
    # Same partition: a bijection between the two id sets.
    pairs = set(zip(ids.tolist(), reference.tolist(), strict=True))
    assert len(pairs) == len(set(ids.tolist())) == len(set(reference.tolist()))


def test_streaming_accumulator_matches_exact_binning() -> None:
    rng = np.random.default_rng(5)
    layer = rng.integers(0, 3, size=(600, 2, 2, 2)) * 0.5  # codes 0, 0, 1: at most 256 patterns
    y = rng.integers(0, 3, size=600)
    exact = binning_mi(layer, y)
    acc = BinningAccumulator()
    for batch in np.array_split(layer, 7):
        acc.add(batch)
    streamed = acc.result(y)
    assert not streamed.verified and exact.verified
    assert streamed.num_codes == exact.num_codes and 1 < exact.num_codes < 600
    assert streamed.h_t == pytest.approx(exact.h_t) and streamed.i_ty == pytest.approx(exact.i_ty)
    with pytest.raises(ValueError, match="width"):
        acc.add(np.zeros((2, 3)))


def test_binning_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="bin_size"):
        binning_mi(np.zeros((4, 2)), bin_size=0)
    with pytest.raises(ValueError, match="NaN"):
        binning_mi(np.array([[np.nan], [1.0]]))
    with pytest.raises(ValueError, match="3 labels for 4 samples"):
        binning_mi(np.zeros((4, 2)), [0, 1, 0])


# ----------------------------------------------------------------------------- kernel bounds


def test_kernel_bounds_identical_and_separated_points() -> None:
    same = np.ones((40, 5))
    b = kernel_mi_bounds(same, noise_var=0.1, labels=np.arange(40) % 4)
    assert b.upper == pytest.approx(0.0, abs=1e-12) and b.lower == pytest.approx(0.0, abs=1e-12)
    assert b.label_upper == pytest.approx(0.0, abs=1e-12) and b.label_lower == pytest.approx(0.0, abs=1e-12)
    far = np.eye(40) * 1e3
    y = np.repeat([0, 1, 2, 3], [10, 10, 10, 10])
    b = kernel_mi_bounds(far, noise_var=0.1, labels=y)
    assert b.upper == pytest.approx(math.log(40)) and b.lower == pytest.approx(math.log(40))
    assert b.label_upper == pytest.approx(math.log(4)) and b.label_lower == pytest.approx(math.log(4))


def test_kernel_bounds_bracket_the_exact_mixture_mi() -> None:
    # Two equiprobable points in 1-D at distance d, noise variance 1: I(X;T) = H(mixture) - H(noise),
    # the mixture entropy integrated numerically on a fine grid.
    for d in (0.5, 1.0, 2.0, 4.0):
        grid = np.linspace(-12, 12 + d, 200001)
        pdf = 0.5 * (np.exp(-0.5 * grid**2) + np.exp(-0.5 * (grid - d) ** 2)) / math.sqrt(2 * math.pi)
        h_mix = -_trapezoid(pdf * np.log(pdf), grid)
        exact = h_mix - 0.5 * math.log(2 * math.pi * math.e)
        b = kernel_mi_bounds(np.array([[0.0], [d]]), noise_var=1.0)
        assert b.lower - 1e-9 <= exact <= b.upper + 1e-9
        assert b.upper - b.lower < math.log(2)


def test_kernel_bounds_correlated_gaussians() -> None:
    # T = X + N(0, s2 I) with X ~ N(0, I_d): I = d/2 ln(1 + 1/s2) = -d/2 ln(1 - rho^2) for
    # rho^2 = 1/(1+s2). The bounds of a 2000-point mixture must bracket it (up to sampling).
    rng = np.random.default_rng(3)
    d, s2 = 2, 1.0
    rho2 = 1 / (1 + s2)
    exact = -0.5 * d * math.log(1 - rho2)
    b = kernel_mi_bounds(rng.normal(size=(2000, d)), noise_var=s2)
    assert b.lower <= exact <= b.upper
    assert b.lower > 0.5 * exact


def test_kernel_bounds_bad_noise() -> None:
    with pytest.raises(ValueError, match="noise_var"):
        kernel_mi_bounds(np.zeros((3, 2)), noise_var=0.0)


# ----------------------------------------------------------------------------- VIB bounds


class _OneCell(nn.Module):
    """Z = X + sigma * eps through one VIBCell with identity mean and constant sigma."""

    def __init__(self, dim: int, sigma: float) -> None:
        super().__init__()
        zero = nn.Linear(dim, dim)
        nn.init.zeros_(zero.weight)
        nn.init.zeros_(zero.bias)
        # softplus(b) = sigma
        self.cell = VIBCell(nn.Identity(), zero, dim, channel_dim=-1, bias_init=math.log(math.expm1(sigma)))

    def forward(self, x: torch.Tensor, return_kl: bool = False):
        if not return_kl:
            return self.cell(x)
        z, kl = self.cell(x, return_kl=True)
        return z, kl.reshape(1)


def test_vib_kl_bound_is_tight_for_a_matched_gaussian_channel() -> None:
    # X ~ N(0, (1 - sigma^2) I_d), Z = X + sigma eps: the marginal of Z is the prior N(0, I),
    # so E KL = I(Z; X) = -d/2 ln(sigma^2) = -d/2 ln(1 - rho^2) with rho^2 = 1 - sigma^2.
    torch.manual_seed(0)
    d, sigma = 8, 0.6
    model = _OneCell(d, sigma).train()
    x = torch.randn(20000, d) * math.sqrt(1 - sigma**2)
    bound = vib_kl_bound(model, x.split(4096))
    assert bound.shape == (1,)
    exact = -0.5 * d * math.log(sigma**2)
    assert bound[0] == pytest.approx(exact, rel=0.02)
    assert model.training  # mode restored


def test_label_mi_lower_bound_on_a_binary_symmetric_channel() -> None:
    t, y = _bsc(500, 0.2)
    # The Bayes posterior q(y|t) = 0.8 on y = t: CE = H_b(0.2) exactly on this sample.
    logits = np.where(np.eye(2)[t] > 0, math.log(0.8), math.log(0.2))
    expected = math.log(2) - _h_binary(0.2)
    assert label_mi_lower_bound(logits, y, num_classes=2) == pytest.approx(expected, abs=1e-9)
    assert label_mi_lower_bound(_h_binary(0.2), y) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="num_classes=3"):
        label_mi_lower_bound(logits, y, num_classes=3)


def test_probe_label_mi_recovers_channel_information() -> None:
    rng = np.random.default_rng(4)
    t, y = _bsc(1000, 0.1)
    features = np.eye(2)[t] + 0.01 * rng.normal(size=(2000, 2))
    order = rng.permutation(2000)
    train, test = order[:1000], order[1000:]
    mi = probe_label_mi(features[train], y[train], features[test], y[test])
    assert mi == pytest.approx(math.log(2) - _h_binary(0.1), abs=0.03)
    noise = rng.normal(size=(2000, 5))
    assert abs(probe_label_mi(noise[train], y[train], noise[test], y[test])) < 0.02
    with pytest.raises(ValueError, match="never appears"):
        probe_label_mi(features[:10], np.zeros(10, int) + np.arange(10) % 2, features[:3], [0, 1, 2])


def test_probe_strength_chosen_on_training_data_keeps_a_small_probe_honest() -> None:
    # 10 classes, 6 training samples each, 2 signal-to-noise-poor informative directions among
    # 60 noise dimensions: C = 1 over-fits (H(Y) - CE < 0 held out); the validated grid does not.
    from facevib.info import LabelProbe

    rng = np.random.default_rng(6)

    def make(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(10), per_class)
        return np.concatenate([np.eye(10)[y], np.zeros((y.size, 60))], 1) + rng.normal(size=(y.size, 70)), y

    (f_train, y_train), (f_test, y_test) = make(6), make(30)
    fixed = LabelProbe(f_train, y_train, l2=1.0)
    tuned = LabelProbe(f_train, y_train, l2=(0.01, 0.1, 1.0))
    assert tuned.l2 < 1.0
    assert fixed.label_mi(f_test, y_test) < 0 < tuned.label_mi(f_test, y_test)
    with pytest.raises(ValueError, match="positive"):
        LabelProbe(f_train, y_train, l2=(0.0, 1.0))
