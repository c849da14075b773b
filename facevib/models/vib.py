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

from facevib.models.norm_stats import BatchStats, batch_norm_backward, batch_norm_train, channel_view

__all__ = [
    "SIGMA_BIAS_INIT",
    "VIBCell",
    "gaussian_kl",
    "keeps_noise",
    "reparameterize",
    "softplus_sigma",
    "vib_sample",
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


def _wide_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or wider when an input is (float64): where the sample and the KL are formed."""
    wide = torch.float32
    for dtype in dtypes:
        wide = torch.promote_types(wide, dtype)
    return wide


def _default_generator(device: torch.device) -> torch.Generator:
    """torch's global generator of ``device`` (what ``torch.randn_like`` would use)."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    raise ValueError(f"VIB cell: no default generator for device type {device.type!r}; pass one")


def _channel_shape(ndim: int, channel_dim: int) -> list[int]:
    shape = [1] * ndim
    shape[channel_dim] = -1
    return shape


def _draw_noise(like: Tensor, dtype: torch.dtype, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        # The global generator through randn_like: torch.randn with a generator argument
        # takes only concrete sizes, so a dynamic-shape trace (a second batch size) would
        # fail. Contiguous, so it draws the values randn(like.shape) would.
        return torch.randn_like(like, dtype=dtype, memory_format=torch.contiguous_format)
    return torch.randn(like.shape, dtype=dtype, device=like.device, generator=generator)


def keeps_noise(device: torch.device) -> bool:
    """Whether the fused node keeps eps for backward on ``device`` (else it redraws it).

    On the CPU a standard normal costs ~10 ns per element (torch's mt19937 generator is
    serial): redrawing it in backward made it the largest single cost of a cell, while 4
    bytes per element stay within the saved-memory budget there. On CUDA the Philox
    generator redraws for almost nothing and the saved bytes decide the batch size.
    """
    return device.type == "cpu"


class _FusedVIBSample(torch.autograd.Function):
    """sigma = softplus(pre + b), x~ = mu + eps * sigma and the batch-mean KL in one node.

    Composed from autograd ops, a cell keeps about five activation-sized float32 tensors
    for backward (softplus' input, log's input, the noise, sigma, mu^2's input, exp's
    output). This node keeps the sigma pre-activation (the output of F_sigma, before the
    bias), ``mu`` when the KL needs its gradient, and either eps (on the CPU) or the
    generator state it was drawn from, from which backward redraws it, as fused dropout
    regenerates its mask (see :func:`keeps_noise`). Backward applies the closed-form
    derivatives (z = pre + b, s = sigmoid(z)):

        dx~/dmu = 1,  dx~/dz = eps * s,
        dKL/dmu = mu / B,  dKL/dz = (sigma * s - dlog sigma/dz) / B,
        dlog sigma/dz = s / sigma  (= 1 where log sigma = z, see below).

    When both transforms end in a BatchNorm (the iResNet blocks: ``bn3`` of each branch),
    the node takes the BatchNorms' *inputs* and runs them itself: a BatchNorm keeps its
    input for backward anyway, so keeping its output (mu, pre) too would hold two copies
    of each branch's last activation. It keeps their batch statistics (two numbers per
    channel); backward rebuilds each output in one pass and differentiates the
    normalisations in closed form (:mod:`facevib.models.norm_stats`). The softplus bias b
    is added inside the sigma BatchNorm's shift, which saves a pass.

    log sigma is log(softplus(z)), except where softplus underflows float32 (z < -87):
    there it is z, its limit (log(softplus(z)) = z - e^z/2 + ...). ``min(log(max(sigma,
    tiny)), z)`` picks between them without a branch, because log(softplus(z)) < z.

    The BatchNorms, the sample and the KL are computed in float32 (or float64) whatever
    the inputs' dtype: under bfloat16 autocast, mu + eps * sigma rounded to bfloat16 would
    lose a noise of sigma ~ 0.0067 on most |mu| >= 1 (half a bfloat16 ulp is 0.0039 on
    [1, 2)).
    """

    @staticmethod
    def forward(
        ctx,
        mu_in: Tensor,
        pre_in: Tensor,
        bias: Tensor,
        mean_norm_weight: Tensor | None,
        mean_norm_bias: Tensor | None,
        sigma_norm_weight: Tensor | None,
        sigma_norm_bias: Tensor | None,
        norms: tuple[nn.Module | None, nn.Module | None],
        channel_dim: int,
        generator: torch.Generator,
        want_kl: bool,
        keep_noise: bool,
    ) -> tuple[Tensor, Tensor]:
        mean_norm, sigma_norm = norms
        wide = _wide_dtype(mu_in.dtype, pre_in.dtype)
        with torch.autocast(mu_in.device.type, enabled=False):
            mu, mean_stats = _normalise(mu_in.to(wide), mean_norm, mean_norm_weight, mean_norm_bias, None, 0)
            z, sigma_stats = _normalise(
                pre_in.to(wide), sigma_norm, sigma_norm_weight, sigma_norm_bias, bias.to(wide), channel_dim
            )
            sigma = F.softplus(z)
            state = None if keep_noise else generator.get_state()
            noise = _draw_noise(mu, wide, generator)
            if want_kl:
                log_sigma = sigma.clamp_min(torch.finfo(wide).tiny).log_()
                log_sigma = torch.minimum(log_sigma, z, out=log_sigma)
                # KL = 0.5 / B * (sum mu^2 + sum (sigma^2 - 2 log sigma - 1)); both sums add
                # non-negative terms, so neither cancels when sigma -> 1 and mu -> 0.
                excess = log_sigma.mul_(-2.0).addcmul_(sigma, sigma).sub_(1.0)
                kl = (torch.linalg.vector_norm(mu).square() + excess.sum()) * (0.5 / mu.shape[0])
            else:
                kl = mu.new_zeros(())
            # A normalised (or widened) mu is this node's own tensor and nothing reads it
            # after the KL: sampling into it writes no new activation-sized buffer.
            sample = torch.addcmul(mu, noise, sigma) if mu is mu_in else mu.addcmul_(noise, sigma)
        # mu is needed only for the KL's gradient, or to differentiate its BatchNorm.
        keep_mu = want_kl or mean_norm is not None
        ctx.save_for_backward(
            pre_in,
            bias,
            mu_in if keep_mu else None,
            noise if keep_noise else None,
            mean_norm_weight,
            mean_norm_bias,
            sigma_norm_weight,
            sigma_norm_bias,
        )
        ctx.stats = (mean_stats, sigma_stats)
        ctx.channel_dim = channel_dim
        ctx.want_kl = want_kl
        ctx.mu_dtype = mu_in.dtype
        ctx.generator_device = generator.device
        ctx.generator_state = state
        return sample, kl

    @staticmethod
    def backward(ctx, grad_sample: Tensor, grad_kl: Tensor):
        pre_in, bias, mu_in, noise, mean_weight, mean_bias, sigma_weight, sigma_bias = ctx.saved_tensors
        mean_stats, sigma_stats = ctx.stats
        wide = grad_sample.dtype
        pre = pre_in.to(wide)
        z = _rebuild(pre, sigma_stats, sigma_weight, sigma_bias, bias.to(wide), ctx.channel_dim)
        slope = torch.sigmoid(z)  # d sigma / dz
        if noise is None:
            generator = torch.Generator(device=ctx.generator_device)
            generator.set_state(ctx.generator_state)
            noise = _draw_noise(pre, wide, generator)
        grad_z = noise * grad_sample
        mu = None if mu_in is None else mu_in.to(wide)
        grad_mu = grad_sample
        if ctx.want_kl:
            per_sample = grad_kl.to(wide) / pre.shape[0]
            sigma = F.softplus(z)
            # s * (eps * g + c * sigma) - c * dlog sigma / dz, with c = dL/dKL / B.
            grad_z.addcmul_(sigma, per_sample).mul_(slope)
            # Below float32's smallest normal sigma the forward took log sigma = z: slope 1.
            dlog_sigma = slope.div_(sigma).masked_fill_(sigma < torch.finfo(wide).tiny, 1.0)
            grad_z.addcmul_(dlog_sigma, per_sample, value=-1.0)
            grad_mu = _add_scaled_mean(grad_sample, mu, mean_stats, mean_weight, mean_bias, per_sample)
        else:
            grad_z.mul_(slope)
        grad_pre_in, grad_sigma_w, grad_sigma_b = _through_norm(grad_z, pre, sigma_weight, sigma_stats)
        # The softplus bias is part of the sigma BatchNorm's shift: the same gradient.
        grad_bias = grad_sigma_b
        if grad_bias is None:
            grad_bias = grad_z.sum(dim=[d for d in range(pre.dim()) if d != ctx.channel_dim % pre.dim()])
        grad_mu_in, grad_mean_w, grad_mean_b = _through_norm(grad_mu, mu, mean_weight, mean_stats)
        return (
            grad_mu_in.to(ctx.mu_dtype) if ctx.needs_input_grad[0] else None,
            grad_pre_in.to(pre_in.dtype) if ctx.needs_input_grad[1] else None,
            grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None,
            _cast_like(grad_mean_w, mean_weight),
            _cast_like(grad_mean_b, mean_bias),
            _cast_like(grad_sigma_w, sigma_weight),
            _cast_like(grad_sigma_b, sigma_bias),
            None,
            None,
            None,
            None,
            None,
        )


def _normalise(
    x: Tensor,
    norm: nn.Module | None,
    weight: Tensor | None,
    norm_bias: Tensor | None,
    extra_bias: Tensor | None,
    channel_dim: int,
) -> tuple[Tensor, BatchStats | None]:
    """``norm(x) + extra_bias`` (per channel) and the norm's batch statistics; ``x`` (+ bias) without a norm."""
    if norm is None:
        if extra_bias is None:
            return x, None
        return x + extra_bias.view(_channel_shape(x.dim(), channel_dim)), None
    shift = norm_bias.to(x.dtype) if extra_bias is None else norm_bias.to(x.dtype) + extra_bias
    return batch_norm_train(x, norm, weight.to(x.dtype), shift)


def _rebuild(
    x: Tensor,
    stats: BatchStats | None,
    weight: Tensor | None,
    norm_bias: Tensor | None,
    extra_bias: Tensor,
    channel_dim: int,
) -> Tensor:
    """:func:`_normalise`'s output again, in one pass, from the kept input and statistics."""
    if stats is None:
        return x + extra_bias.view(_channel_shape(x.dim(), channel_dim))
    scale, shift = stats.affine(weight.to(x.dtype), norm_bias.to(x.dtype) + extra_bias)
    return torch.addcmul(channel_view(shift, x.dim()), x, channel_view(scale, x.dim()))


def _add_scaled_mean(
    grad: Tensor, mu: Tensor, stats: BatchStats | None, weight: Tensor | None, bias: Tensor | None, factor: Tensor
) -> Tensor:
    """grad + factor * mu, with mu = norm(mu_in) rebuilt from ``stats`` when there is a norm."""
    if stats is None:
        return torch.addcmul(grad, mu, factor)
    scale, shift = stats.affine(weight.to(mu.dtype), bias.to(mu.dtype))
    out = torch.addcmul(grad, mu, channel_view(scale * factor, mu.dim()))
    return out.add_(channel_view(shift * factor, mu.dim()))


def _through_norm(
    grad: Tensor, x: Tensor | None, weight: Tensor | None, stats: BatchStats | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradient of the norm's input, weight and bias, given the gradient of its output."""
    if stats is None:
        return grad, None, None
    return batch_norm_backward(grad, x, weight.to(x.dtype), stats)


def _cast_like(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    return None if grad is None or like is None else grad.to(like.dtype)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fusable_norm(module: nn.Module | None) -> bool:
    """A training-mode affine BatchNorm whose batch statistics the node can recompute."""
    return isinstance(module, _BATCH_NORMS) and module.training and module.affine


def vib_sample(
    mu: Tensor,
    pre: Tensor,
    bias: Tensor,
    *,
    channel_dim: int = 1,
    generator: torch.Generator | None = None,
    return_kl: bool = True,
    mean_norm: nn.Module | None = None,
    sigma_norm: nn.Module | None = None,
    keep_noise: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """x~ = mu + eps * softplus(pre + b) and KL(N(mu, sigma^2) || N(0, I)) in one autograd node.

    Equal to ``reparameterize(mu, softplus_sigma(pre + b)[0])`` and
    ``gaussian_kl(mu, softplus_sigma(pre + b)[1])`` with the same noise, but backward keeps
    only ``pre``, ``mu`` (when ``return_kl``) and eps or the generator's state.

    Args:
        mu: means F_mu(x), shape (B, ...); with ``mean_norm``, that norm's input.
        pre: sigma pre-activation F_sigma(x) without the bias, shape of ``mu``; with
            ``sigma_norm``, that norm's input.
        bias: per-channel softplus bias b, shape (C,) with C = ``mu.shape[channel_dim]``.
        channel_dim: the dimension ``bias`` runs along.
        generator: where eps comes from; default torch's global generator of ``mu``'s device,
            so ``torch.manual_seed`` makes the sample reproducible as before.
        return_kl: compute the KL (otherwise a zero scalar is returned and ``mu`` is not kept).
        mean_norm, sigma_norm: training-mode affine BatchNorms that end F_mu and F_sigma,
            applied inside the node (so their outputs are not kept for backward); a norm
            whose channels are not dimension 1 (``channel_dim``) is applied before it.
        keep_noise: keep eps for backward (True) or redraw it from the generator's state
            (False); default :func:`keeps_noise` of the device. The result is the same.

    Returns:
        ``(sample, kl)``: the sample in float32 (float64 for float64 inputs), whatever the
        autocast dtype; the KL a float32 (float64) scalar, per-sample sum, batch mean.
    """
    if mu.shape != pre.shape:
        raise ValueError(f"vib_sample: mu shape {tuple(mu.shape)} != sigma pre-activation shape {tuple(pre.shape)}")
    if bias.dim() != 1 or bias.numel() != mu.shape[channel_dim]:
        raise ValueError(
            f"vib_sample: bias of shape {tuple(bias.shape)} for {mu.shape[channel_dim]} channels (dim {channel_dim})"
        )
    for name, norm in (("mean_norm", mean_norm), ("sigma_norm", sigma_norm)):
        if norm is not None and not _fusable_norm(norm):
            raise ValueError(f"vib_sample: {name} must be an affine BatchNorm in training mode, got {norm}")
    if torch.compiler.is_compiling():
        # Under torch.compile the same math as plain ops, which the compiler fuses and
        # whose saved tensors its partitioner chooses; the node's generator-state
        # handling is not traceable and would break the graph at every cell.
        return _vib_sample_ops(mu, pre, bias, channel_dim, generator, return_kl, mean_norm, sigma_norm)
    generator = _default_generator(mu.device) if generator is None else generator
    if channel_dim % mu.dim() != 1:  # the node folds b into a BatchNorm's shift along dim 1
        mu = mu if mean_norm is None else mean_norm(mu)
        pre = pre if sigma_norm is None else sigma_norm(pre)
        mean_norm = sigma_norm = None
    return _FusedVIBSample.apply(
        mu,
        pre,
        bias,
        None if mean_norm is None else mean_norm.weight,
        None if mean_norm is None else mean_norm.bias,
        None if sigma_norm is None else sigma_norm.weight,
        None if sigma_norm is None else sigma_norm.bias,
        (mean_norm, sigma_norm),
        channel_dim,
        generator,
        return_kl,
        keeps_noise(mu.device) if keep_noise is None else keep_noise,
    )


def _vib_sample_ops(
    mu: Tensor,
    pre: Tensor,
    bias: Tensor,
    channel_dim: int,
    generator: torch.Generator | None,
    want_kl: bool,
    mean_norm: nn.Module | None,
    sigma_norm: nn.Module | None,
) -> tuple[Tensor, Tensor]:
    """:func:`vib_sample` as ordinary autograd ops (what torch.compile traces)."""
    mu = mu if mean_norm is None else mean_norm(mu)
    pre = pre if sigma_norm is None else sigma_norm(pre)
    wide = _wide_dtype(mu.dtype, pre.dtype)
    z = pre.to(wide) + bias.to(wide).view(_channel_shape(pre.dim(), channel_dim))
    sigma = F.softplus(z)
    noise = _draw_noise(mu, wide, generator)
    sample = torch.addcmul(mu.to(wide), noise, sigma)
    if not want_kl:
        return sample, sample.new_zeros(())
    log_sigma = torch.minimum(torch.log(sigma.clamp_min(torch.finfo(wide).tiny)), z)
    return sample, gaussian_kl(mu, log_sigma)


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

    def forward_with_mean(
        self, x: Tensor, mu: Tensor, return_kl: bool = False, mean_norm: nn.Module | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x~ given the cell input ``x`` and an already computed mean ``mu = F_mu(x)``.

        Training: ``mu + eps * sigma`` through :func:`vib_sample` (float32 under autocast,
        eps from torch's global generator of the device). Eval: ``mu`` itself; F_sigma runs
        only when ``return_kl`` asks for the KL. Returns ``(x~, kl)`` with ``kl`` a float32
        scalar (per-sample sum, batch mean) when ``return_kl``.

        ``mean_norm``: the BatchNorm that ends F_mu, not yet applied to ``mu``; in training
        the fused node applies it (and a BatchNorm ending F_sigma), so that neither output
        is kept for backward beside the input its BatchNorm keeps.
        """
        if self.training:
            sigma_in, sigma_norm = self._sigma_until_norm(x)
            return self.sample(mu, sigma_in, return_kl, mean_norm, sigma_norm)
        if mean_norm is not None:
            mu = mean_norm(mu)
        if not return_kl:
            return mu
        return mu, gaussian_kl(mu, self.log_sigma(x))

    def sample(
        self,
        mu: Tensor,
        sigma_in: Tensor,
        return_kl: bool = False,
        mean_norm: nn.Module | None = None,
        sigma_norm: nn.Module | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The training-mode sample given ``mu`` and F_sigma's output, each before its final
        norm (``mean_norm`` / ``sigma_norm``, applied here; ``None`` when already applied).

        For owners that compute F_sigma themselves (the iResNet blocks run both branches'
        first layers as one); :meth:`forward_with_mean` is this after running F_sigma.
        """
        if mean_norm is not None and not _fusable_norm(mean_norm):
            mu, mean_norm = mean_norm(mu), None
        if sigma_norm is not None and not _fusable_norm(sigma_norm):
            sigma_in, sigma_norm = sigma_norm(sigma_in), None
        sample, kl = vib_sample(
            mu,
            sigma_in,
            self.bias,
            channel_dim=self.channel_dim,
            return_kl=return_kl,
            mean_norm=mean_norm,
            sigma_norm=sigma_norm,
        )
        return (sample, kl) if return_kl else sample

    def _sigma_until_norm(self, x: Tensor) -> tuple[Tensor, nn.Module | None]:
        """``(input of F_sigma's final BatchNorm, that norm)`` when F_sigma is a Sequential
        ending in a fusable one, else ``(F_sigma(x), None)``."""
        if isinstance(self.sigma, nn.Sequential) and len(self.sigma) > 1 and _fusable_norm(self.sigma[-1]):
            for layer in list(self.sigma)[:-1]:
                x = layer(x)
            return x, self.sigma[-1]
        return self.sigma(x), None

    def pre_sigma(self, x: Tensor) -> Tensor:
        """F_sigma(x) + b, the softplus argument."""
        pre = self.sigma(x)
        shape = [1] * pre.dim()
        shape[self.channel_dim] = -1
        return pre + self.bias.view(shape)

    def log_sigma(self, x: Tensor) -> Tensor:
        """log sigma(x), float32 or wider; no sampling (used for uncertainty scores)."""
        return softplus_sigma(self.pre_sigma(x))[1]
