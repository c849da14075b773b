"""JSD critic estimator (facevib.info.jsd): pair sampling and a trained critic on correlated Gaussians."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facevib.info.jsd import Critic, jsd_from_objective, jsd_mi, jsd_objective, sample_pairs


def _correlated(rho: float, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g, dtype=torch.float64)


def _exact_jsd(rho: float, d: int, n: int = 200_000) -> float:
    """JSD(joint || product) of correlated Gaussians by Monte Carlo over the exact log-ratio r:
    JSD = 1/2 E_P[log 2 - softplus(-r)] + 1/2 E_Q[log 2 - softplus(r)]."""
    x, y = _correlated(rho, n, d, seed=99)
    y_indep = torch.randn(n, d, generator=torch.Generator().manual_seed(98), dtype=torch.float64)
    s = 1 - rho**2

    def log_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((b - rho * a) ** 2).sum(1) / s - 0.5 * d * math.log(s) + 0.5 * (b**2).sum(1)

    joint = (math.log(2) - F.softplus(-log_ratio(x, y))).mean()
    product = (math.log(2) - F.softplus(log_ratio(x, y_indep))).mean()
    return float(0.5 * joint + 0.5 * product)


def test_objective_constants() -> None:
    zeros = torch.zeros(10)
    assert jsd_objective(zeros, zeros).item() == pytest.approx(-2 * math.log(2))
    assert jsd_from_objective(-2 * math.log(2)) == pytest.approx(0.0)
    sure = jsd_objective(torch.full((10,), 50.0), torch.full((10,), -50.0)).item()
    assert jsd_from_objective(sure) == pytest.approx(math.log(2))


def test_sample_pairs_upsamples_and_pairs_by_location() -> None:
    batch, h, w = 3, 4, 4
    # Each vector encodes (sample, row, col): shallow at 4x4, deep at 2x2 (one deep cell covers 2x2 shallow).
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    shallow = torch.stack([torch.stack([torch.full((h, w), b), rows, cols]) for b in range(batch)]).float()
    drows, dcols = torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")
    deep = torch.stack([torch.stack([torch.full((2, 2), b), drows, dcols]) for b in range(batch)]).float()
    joint, marginal = sample_pairs(shallow, deep, locations=50, generator=torch.Generator().manual_seed(0))
    assert joint.shape == marginal.shape == (batch * 50, 6)
    assert torch.equal(joint[:, 0], joint[:, 3])  # same sample
    assert torch.equal(torch.div(joint[:, 1:3], 2, rounding_mode="floor"), joint[:, 4:6])  # same location
    assert (marginal[:, 0] != marginal[:, 3]).all()  # another sample
    assert torch.equal(marginal[:, :3], joint[:, :3])  # same anchors
    assert len({tuple(v) for v in marginal[:, 4:6].tolist()}) == 4  # random deep locations
    with pytest.raises(ValueError, match="do not share"):
        sample_pairs(shallow, torch.zeros(2, 3, 2, 2), 1)
    with pytest.raises(ValueError, match="at least 2"):
        sample_pairs(shallow[:1], deep[:1], 1)


def test_critic_shape() -> None:
    critic = Critic(6, hidden=(8, 4))
    assert critic(torch.zeros(5, 6)).shape == (5,)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in critic) == 2


@pytest.mark.slow
def test_trained_critic_ranks_rho_and_matches_the_exact_jsd() -> None:
    d = 2
    rhos = (0.0, 0.3, 0.6, 0.9)
    estimates = []
    for rho in rhos:
        x, y = _correlated(rho, 2000, d, seed=1)
        estimates.append(jsd_mi(x, y, steps=200, hidden=(64, 32), locations=1).jsd)
    mi = [-0.5 * d * math.log(1 - r**2) for r in rhos]  # closed-form Shannon MI, increasing
    assert mi == sorted(mi)
    assert all(a < b for a, b in zip(estimates, estimates[1:], strict=False)), estimates
    for rho, est in zip(rhos, estimates, strict=True):
        exact = _exact_jsd(rho, d)
        # A lower bound, tight for a good critic; 600 held-out samples give ~0.02 nats of sampling error.
        assert abs(est - exact) <= 0.03, (rho, est, exact)


@pytest.mark.slow
def test_jsd_between_feature_maps_detects_the_dependent_deeper_map() -> None:
    # H_l is a 3x3 map up-sampled to 6x6 (plus noise); H_{l+1} a noisy copy of two of its channels
    # at 3x3: after up-sampling, every location of H_l pairs with the deep vector it depends on.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(600, 4, 3, 3, generator=g)
    shallow = F.interpolate(base, size=(6, 6), mode="nearest") + 0.1 * torch.randn(600, 4, 6, 6, generator=g)
    dependent = base[:, :2] + 0.5 * torch.randn(600, 2, 3, 3, generator=g)
    independent = torch.randn(600, 2, 3, 3, generator=g)
    dep = jsd_mi(shallow, dependent, steps=150, hidden=(32, 16), locations=4).jsd
    ind = jsd_mi(shallow, independent, steps=150, hidden=(32, 16), locations=4).jsd
    assert dep > 0.1 and abs(ind) < 0.03, (dep, ind)
