"""The VIB cell of cellVIB (§3 of the paper), as pure functions plus one thin Module.

cellVIB: Zhai, Ju, Lan, Xiao, "Cell Variational Information Bottleneck Network", arXiv:2403.15082
(the arXiv version was withdrawn).

A VIB cell turns a deterministic transform F_mu into a Gaussian one (paper eq. 1-3):

    mu = F_mu(x),  sigma = softplus(F_sigma(x) + b),  x~ = mu + eps * sigma,  eps ~ N(0, I)

with F_sigma a second, cheaper transform of the same output shape and b a learnable
per-channel bias initialised to -5 so that sigma starts tiny (softplus(-5) ~ 0.0067) and
training begins from the deterministic network. Each cell contributes the KL term of
eq. 4, KL(N(mu, sigma^2) || N(0, I)), summed over every element of a sample (the sum is
what makes it an upper bound on I(x~_i; x~_{i-1})) and averaged over the batch.

In eval mode the cell returns exactly ``mu`` and does not run F_sigma, so an exported
graph holds no sigma ops. The cell hands its KL back to the caller; nothing is stored on
the module between calls.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SIGMA_BIAS_INIT",
    "VIBCell",
    "gaussian_kl",
    "reparameterize",
    "softplus_sigma",
]

SIGMA_BIAS_INIT = -5.0

# Below this pre-activation softplus(z) == exp(z) to float32 precision, so log(softplus(z))
# == z; using z directly there keeps log-sigma finite when softplus underflows (z < -103),
# which happens to a cell whose beta is 0 (the last cell of the paper's linear schedule):
# nothing then stops training from driving its sigma to zero.
_LOG_SOFTPLUS_LINEAR_BELOW = -20.0


def softplus_sigma(pre: Tensor) -> tuple[Tensor, Tensor]:
    """sigma = softplus(pre) and log(sigma), both finite with finite gradients for any ``pre``.

    Args:
        pre: sigma pre-activation ``F_sigma(x) + b``, any shape and floating dtype.

    Returns:
        ``(sigma, log_sigma)``. ``sigma`` has ``pre``'s dtype (it multiplies the noise);
        ``log_sigma`` is float32 or wider, because it feeds KL sums over up to ~10^5
        elements per sample that overflow float16.
    """
    pre_wide = pre.to(torch.promote_types(pre.dtype, torch.float32))
    sigma_wide = F.softplus(pre_wide)
    # The clamp only matters in the branch torch.where discards; without it that branch is
    # log(0) = -inf whose backward (0 / 0) would poison the gradient with NaN.
    log_sigma = torch.where(
        pre_wide < _LOG_SOFTPLUS_LINEAR_BELOW,
        pre_wide,
        torch.log(sigma_wide.clamp_min(torch.finfo(sigma_wide.dtype).tiny)),
    )
    return sigma_wide.to(pre.dtype), log_sigma


def gaussian_kl(mu: Tensor, log_sigma: Tensor, reduction: Literal["batchmean", "none"] = "batchmean") -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) in nats, summed over every non-batch element.

    Per sample: 0.5 * sum(mu^2 + sigma^2 - 2 log sigma - 1) (paper eq. 4, diagonal
    Gaussians). Dimension 0 is the batch.

    Args:
        mu: means, shape (B, ...).
        log_sigma: log standard deviations, same shape as ``mu``.
        reduction: ``"batchmean"`` returns a scalar (mean over the batch of the per-sample
            sums, what the training loss weights by beta); ``"none"`` returns shape (B,).

    Returns:
        float32 (or wider) KL, a scalar or (B,).
    """
    if mu.shape != log_sigma.shape:
        raise ValueError(f"gaussian_kl: mu shape {tuple(mu.shape)} != log_sigma shape {tuple(log_sigma.shape)}")
    if reduction not in ("batchmean", "none"):
        raise ValueError(f"gaussian_kl: unknown reduction {reduction!r} (expected 'batchmean' or 'none')")
    wide = torch.promote_types(torch.promote_types(mu.dtype, log_sigma.dtype), torch.float32)
    mu_w = mu.to(wide)
    log_sigma_w = log_sigma.to(wide)
    elementwise = 0.5 * (mu_w.square() + torch.exp(2.0 * log_sigma_w) - 2.0 * log_sigma_w - 1.0)
    per_sample = elementwise.flatten(1).sum(dim=1)
    return per_sample.mean() if reduction == "batchmean" else per_sample


def reparameterize(mu: Tensor, sigma: Tensor) -> Tensor:
    """One reparameterised sample mu + eps * sigma, eps ~ N(0, I) (paper eq. 3).

    The noise comes from torch's global generator (seed it with ``torch.manual_seed``),
    so gradients flow to ``mu`` and ``sigma`` and the sample is reproducible.
    """
    return torch.addcmul(mu, torch.randn_like(mu), sigma)


class VIBCell(nn.Module):
    """Gaussian wrapper around a mean transform: sample in training, exactly the mean in eval.

    Args:
        mean: F_mu. ``None`` when the owner computes mu itself and calls
            :meth:`forward_with_mean`; the iResNet blocks and head do that so their mean
            layers keep arcface_torch's state_dict key names.
        sigma: F_sigma, output shape equal to F_mu's; usually cheaper (paper §3.1).
        num_channels: size of ``channel_dim`` of the output (one bias per channel).
        channel_dim: the channel dimension of the output, 1 for (B, C, H, W) feature maps,
            -1 for (B, D) vectors and (B, L, E) token sequences. Must not be the batch dim 0.
        bias_init: initial value of b; -5 as in the paper so sigma starts near 0.0067.
    """

    def __init__(
        self,
        mean: nn.Module | None,
        sigma: nn.Module,
        num_channels: int,
        *,
        channel_dim: int = 1,
        bias_init: float = SIGMA_BIAS_INIT,
    ) -> None:
        super().__init__()
        if num_channels <= 0:
            raise ValueError(f"VIBCell: num_channels must be positive, got {num_channels}")
        if channel_dim == 0:
            raise ValueError("VIBCell: channel_dim 0 is the batch dimension")
        self.mean = mean
        self.sigma = sigma
        self.bias = nn.Parameter(torch.full((num_channels,), float(bias_init)))
        self.channel_dim = channel_dim

    def forward(self, x: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x~ for input ``x`` (and the batch-mean KL when ``return_kl``)."""
        if self.mean is None:
            raise ValueError("VIBCell was built with mean=None; call forward_with_mean(x, mu)")
        return self.forward_with_mean(x, self.mean(x), return_kl)

    def forward_with_mean(self, x: Tensor, mu: Tensor, return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x~ given the cell input ``x`` and an already computed mean ``mu = F_mu(x)``.

        Training: ``mu + eps * sigma``. Eval: ``mu`` itself; F_sigma runs only when
        ``return_kl`` asks for the KL. Returns ``(x~, kl)`` with ``kl`` a float32 scalar
        (per-sample sum, batch mean) when ``return_kl``.
        """
        if not self.training and not return_kl:
            return mu
        sigma, log_sigma = softplus_sigma(self.pre_sigma(x))
        out = reparameterize(mu, sigma.to(mu.dtype)) if self.training else mu
        if return_kl:
            return out, gaussian_kl(mu, log_sigma)
        return out

    def pre_sigma(self, x: Tensor) -> Tensor:
        """F_sigma(x) + b, the softplus argument."""
        pre = self.sigma(x)
        shape = [1] * pre.dim()
        shape[self.channel_dim] = -1
        return pre + self.bias.view(shape)

    def log_sigma(self, x: Tensor) -> Tensor:
        """log sigma(x), float32 or wider; no sampling (used for uncertainty scores)."""
        return softplus_sigma(self.pre_sigma(x))[1]
