"""Jensen-Shannon MI estimator between adjacent layers, with a trained critic.

Shen, Li, Liu, "Learning to Find Correlated Features by Maximizing Information Flow in
Convolutional Neural Networks" (§3.1-3.2, Table 2): a critic D scores concatenated pairs
of feature vectors of two adjacent layers H_l, H_{l+1}. H_{l+1} is up-sampled to H_l's
spatial size; a *positive* pair is the two vectors at the same location of the same
sample (drawn from the joint), a *negative* pair a vector of H_l with one at a random
location of another sample's H_{l+1} (product of marginals). D maximises

    F = E_P[-softplus(-D)] - E_Q[softplus(D)]                   (eq. 3-4, JSD generator)

the f-GAN / Deep InfoMax form of the bound, which satisfies F <= 2 JSD(P || Q) - 2 log 2,
so (F + 2 log 2) / 2 is a lower bound on the Jensen-Shannon divergence between joint and
product of marginals (nats, at most log 2). It is not the Shannon MI but increases with it;
:func:`jsd_mi` reports it on held-out samples after training a critic.

The pieces (:class:`Critic`, :func:`jsd_objective`, :func:`sample_pairs`) are what a
training-time regulariser needs as well (the IFM loss L_clf - lambda sum_l F_l).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CRITIC_HIDDEN",
    "Critic",
    "JSDEstimate",
    "feature_vectors",
    "jsd_from_objective",
    "jsd_mi",
    "jsd_objective",
    "sample_pairs",
]

CRITIC_HIDDEN = (256, 128, 64)  # network D of the IFM paper, Table 2
LEAKY_SLOPE = 0.2


class Critic(nn.Sequential):
    """Network D (IFM paper Table 2): [Linear-BatchNorm1d-LeakyReLU(0.2)] x len(hidden), Linear -> 1.

    Input (M, in_dim) concatenated pairs; output (M,) logits.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = CRITIC_HIDDEN) -> None:
        if in_dim <= 0:
            raise ValueError(f"Critic: in_dim must be positive, got {in_dim}")
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.LeakyReLU(LEAKY_SLOPE)]
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        super().__init__(*layers)

    def forward(self, pairs: Tensor) -> Tensor:
        return super().forward(pairs).squeeze(-1)


def jsd_objective(joint_logits: Tensor, marginal_logits: Tensor) -> Tensor:
    """F = E_P[-softplus(-V)] - E_Q[softplus(V)], the JSD objective the critic maximises.

    Maximal (0) when the critic is certain on both sides; -2 log 2 for a critic that
    cannot tell the pairs apart (V = 0).
    """
    return (-F.softplus(-joint_logits)).mean() - F.softplus(marginal_logits).mean()


def jsd_from_objective(objective: float) -> float:
    """Lower bound on JSD(joint || product of marginals) in nats, (F + 2 log 2) / 2."""
    return (objective + 2.0 * math.log(2.0)) / 2.0


def feature_vectors(features: Tensor, size: tuple[int, ...] | None = None) -> Tensor:
    """(B, locations, channels) view of a layer output, resized to ``size`` when given.

    (B, C, H, W) maps are up-sampled (nearest) to ``size`` = (H', W') first; (B, L, E)
    token sequences and (B, D) vectors (one location) are taken as they are.
    """
    if features.dim() == 4:
        if size is not None and tuple(features.shape[2:]) != tuple(size):
            features = F.interpolate(features, size=size, mode="nearest")
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    if features.dim() == 2:
        return features.unsqueeze(1)
    raise ValueError(f"unsupported layer output of shape {tuple(features.shape)} (expected 2-D, 3-D or 4-D)")


def sample_pairs(
    shallow: Tensor, deep: Tensor, locations: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Positive and negative concatenated pairs for one adjacent layer pair (IFM §3.2).

    Args:
        shallow: H_l output.
        deep: H_{l+1} output; up-sampled to H_l's spatial size when both are feature maps.
        locations: locations drawn per sample (with replacement).
        generator: torch generator for the draws; None: the global generator of the
            features' device (seeded per step by the trainer), so nothing syncs a GPU.

    Returns:
        ``(joint, marginal)``, each (B * locations, C_l + C_{l+1}). A negative pairs
        sample b's H_l vector with the H_{l+1} vector of sample (b + s) mod B, s in [1, B),
        at an independent random location.

    Raises:
        ValueError: outputs that do not share batch and locations, or a batch of one.
    """
    size = tuple(shallow.shape[2:]) if shallow.dim() == 4 and deep.dim() == 4 else None
    a = feature_vectors(shallow)
    b = feature_vectors(deep, size)
    batch, num_loc = a.shape[0], a.shape[1]
    if b.shape[:2] != (batch, num_loc):
        raise ValueError(
            f"layer outputs of shapes {tuple(shallow.shape)} and {tuple(deep.shape)} do not share batch and "
            "locations (pair feature maps with feature maps, token sequences of equal length)"
        )
    if batch < 2:
        raise ValueError("negative pairs need at least 2 samples per batch")
    if locations <= 0:
        raise ValueError(f"locations must be positive, got {locations}")
    m = batch * locations

    # Drawn where the features are (the global generator of their device when none is
    # given): a draw on the CPU would need a blocking copy to the GPU at every step.
    where = a.device if generator is None else generator.device

    def draw(high: int, low: int = 0) -> Tensor:
        return torch.randint(low, high, (m,), generator=generator, device=where).to(a.device)

    rows = torch.arange(batch, device=a.device).repeat_interleave(locations)
    loc, shift, other_loc = draw(num_loc), draw(batch, 1), draw(num_loc)
    anchor = a[rows, loc]
    joint = torch.cat([anchor, b[rows, loc]], dim=1)
    marginal = torch.cat([anchor, b[(rows + shift) % batch, other_loc]], dim=1)
    return joint, marginal


@dataclass(frozen=True)
class JSDEstimate:
    """Held-out result of :func:`jsd_mi` (nats)."""

    objective: float  # F on held-out pairs, in [-2 log 2, 0] for a useful critic
    jsd: float  # (F + 2 log 2) / 2, lower bound on JSD(joint || marginals), <= log 2
    train_objective: float  # F on the last training batches (over-fitting shows as a gap)


def jsd_mi(
    shallow: Tensor,
    deep: Tensor,
    steps: int = 300,
    batch_size: int = 128,
    locations: int = 4,
    hidden: Sequence[int] = CRITIC_HIDDEN,
    lr: float = 1e-3,
    held_out: float = 0.3,
    seed: int = 0,
) -> JSDEstimate:
    """Train a critic between two layers' outputs and report the JSD bound on held-out samples.

    Args:
        shallow: (N, ...) outputs of H_l (vectors, token sequences or feature maps).
        deep: (N, ...) outputs of H_{l+1} for the same N inputs.
        steps: Adam steps on the training split.
        batch_size: samples per step (pairs per step = batch_size * locations).
        locations: locations drawn per sample.
        hidden: critic widths.
        lr: Adam learning rate.
        held_out: fraction of samples kept for the reported estimate.
        seed: seeds the split, the pair draws and the critic's initialisation.

    Raises:
        ValueError: mismatched sample counts or a split leaving fewer than 2 samples a side.
    """
    if shallow.shape[0] != deep.shape[0]:
        raise ValueError(f"jsd_mi: {shallow.shape[0]} shallow vs {deep.shape[0]} deep samples")
    n = shallow.shape[0]
    n_test = int(round(n * held_out))
    if n_test < 2 or n - n_test < 2:
        raise ValueError(f"jsd_mi: {n} samples leave fewer than 2 per side with held_out={held_out}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    test, train = order[:n_test], order[n_test:]
    x, y = shallow.detach().float().cpu(), deep.detach().float().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        joint, _ = sample_pairs(x[:2], y[:2], 1, gen)
        critic = Critic(joint.shape[1], hidden)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
    critic.train()
    recent: list[float] = []
    for _ in range(steps):
        pick = train[torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)]
        joint, marginal = sample_pairs(x[pick], y[pick], locations, gen)
        logits = critic(torch.cat([joint, marginal]))
        objective = jsd_objective(logits[: len(joint)], logits[len(joint) :])
        optimizer.zero_grad(set_to_none=True)
        (-objective).backward()
        optimizer.step()
        recent = (recent + [objective.item()])[-20:]
    critic.eval()
    with torch.no_grad():
        joint, marginal = sample_pairs(x[test], y[test], max(locations, 16), gen)
        value = jsd_objective(critic(joint), critic(marginal)).item()
    return JSDEstimate(objective=value, jsd=jsd_from_objective(value), train_objective=sum(recent) / len(recent))
