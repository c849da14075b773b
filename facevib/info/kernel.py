"""Pairwise-distance bounds on MI through a Gaussian noise channel (Kolchinsky and Tracey,
"Estimating Mixture Entropy with Pairwise Distances", Entropy 2017).

The layer is read as T = h(X) + eps, eps ~ N(0, noise_var * I): given N samples, T is an
equal-weight mixture of N Gaussians centred on the activations h_i. For such a mixture,
with D any premetric between components,

    H_D = H(T | component) - sum_i c_i log sum_j c_j exp(-D(p_i || p_j))

is an upper bound on H(T) for D = KL and a lower bound for D = Bhattacharyya distance
(their Theorems 2 and 3). H(T | X) is the noise entropy, so I(X; T) = H(T) - H(T | X) is
bounded by the log-sum-exp term alone; for equal isotropic covariances
KL_ij = |h_i - h_j|^2 / (2 noise_var) and BD_ij = |h_i - h_j|^2 / (8 noise_var).

For the label, I(T; Y) = H(T) - sum_y p(y) H(T | Y=y), each term a mixture over one
class; a valid interval uses the upper bound for one entropy and the lower for the other:
[H_BD(T) - sum p(y) H_KL(T|y), H_KL(T) - sum p(y) H_BD(T|y)].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from facevib.info.entropy import check_labels

__all__ = ["KernelMIBounds", "kernel_mi_bounds", "pairwise_mixture_term"]

_ROW_CHUNK = 1024


@dataclass(frozen=True)
class KernelMIBounds:
    """Intervals (nats) from :func:`kernel_mi_bounds`; label fields None without labels."""

    upper: float  # I(X; T) <= upper (KL)
    lower: float  # I(X; T) >= lower (Bhattacharyya)
    label_upper: float | None = None  # I(T; Y) upper
    label_lower: float | None = None  # I(T; Y) lower
    noise_var: float = 1.0


def pairwise_mixture_term(points: torch.Tensor, scale: float) -> float:
    """-(1/N) sum_i log (1/N) sum_j exp(-|x_i - x_j|^2 / scale), in nats (float64).

    ``scale`` is 2 noise_var for the KL bound and 8 noise_var for the Bhattacharyya bound.
    Rows are processed in chunks so memory stays O(chunk * N).
    """
    n = points.shape[0]
    total = 0.0
    for start in range(0, n, _ROW_CHUNK):
        d2 = torch.cdist(points[start : start + _ROW_CHUNK], points).square()
        total += torch.logsumexp(-d2 / scale, dim=1).sum().item()
    return float(np.log(n) - total / n)


def kernel_mi_bounds(activations: ArrayLike, noise_var: float, labels: ArrayLike | None = None) -> KernelMIBounds:
    """Upper (KL) and lower (Bhattacharyya) bounds on I(X; T) and, with labels, I(T; Y).

    Args:
        activations: (N, ...) layer outputs h(x_i), flattened per sample.
        noise_var: variance of the added Gaussian noise (the kernel width); the MI of a
            deterministic layer is infinite without it, so the bounds depend on it.
        labels: optional (N,) integer labels.

    Raises:
        ValueError: non-positive ``noise_var``, fewer than 2 samples, non-finite values.
    """
    if not noise_var > 0:
        raise ValueError(f"kernel_mi_bounds: noise_var must be > 0, got {noise_var!r}")
    raw = (
        activations.detach().cpu()
        if isinstance(activations, torch.Tensor)
        else torch.from_numpy(np.asarray(activations))
    )
    if raw.dim() < 1 or raw.shape[0] < 2:
        raise ValueError(f"kernel_mi_bounds: need (N, ...) activations with N >= 2, got shape {tuple(raw.shape)}")
    h = raw.reshape(raw.shape[0], -1).double()
    if not torch.isfinite(h).all():
        raise ValueError("kernel_mi_bounds: activations hold NaN or inf")
    kl_scale, bd_scale = 2.0 * noise_var, 8.0 * noise_var
    upper = pairwise_mixture_term(h, kl_scale)
    lower = pairwise_mixture_term(h, bd_scale)
    if labels is None:
        return KernelMIBounds(upper=upper, lower=lower, noise_var=float(noise_var))
    y = check_labels(labels, n=h.shape[0])
    # H(T|Y=y) - H(noise) per class; the noise entropy cancels in every difference.
    cond_kl = cond_bd = 0.0
    for cls in np.unique(y):
        members = h[torch.from_numpy(y == cls)]
        weight = members.shape[0] / h.shape[0]
        cond_kl += weight * pairwise_mixture_term(members, kl_scale)
        cond_bd += weight * pairwise_mixture_term(members, bd_scale)
    # The mixture term is MI; entropy = noise entropy + term, so H_KL(T) - H_BD(T|y) = upper - cond_bd.
    return KernelMIBounds(
        upper=upper,
        lower=lower,
        label_upper=upper - cond_bd,
        label_lower=lower - cond_kl,
        noise_var=float(noise_var),
    )
