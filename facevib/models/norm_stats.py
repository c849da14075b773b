"""Training-mode BatchNorm with its batch statistics in hand: forward, running update, backward.

A fused node that applies a BatchNorm itself (:mod:`facevib.models.vib`,
:mod:`facevib.models.shared_input`) needs the batch mean and 1/std the normalisation used,
so that backward can rebuild the output in one pass (``x * scale + shift``) and
differentiate it with ATen's BatchNorm backward kernel, instead of re-running the
BatchNorm and its autograd graph. ``F.batch_norm`` returns only the output; run with
momentum 1 on scratch running buffers it also leaves the batch mean and unbiased variance
there, and the module's own
running statistics are then updated exactly as ``norm(x)`` would (its momentum, or the
cumulative average when momentum is None).

Backward of y = w * (x - m) * r + b over the N elements of each channel (r = 1/std), which
the kernel computes from the kept m and r:

    dL/db = sum(g),  dL/dw = r * (sum(g * x) - m * sum(g)),
    dL/dx = w * r * (g - sum(g) / N - x^ * (dL/dw) / N),  x^ = (x - m) * r.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchStats",
    "batch_norm_backward",
    "batch_norm_moments",
    "batch_norm_train",
    "channel_view",
    "update_running_stats",
]


class BatchStats(NamedTuple):
    """Per-channel batch mean and 1/sqrt(biased var + eps) of one BatchNorm call."""

    mean: Tensor
    invstd: Tensor

    def affine(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift) with ``norm(x) = x * scale + shift`` per channel."""
        scale = weight * self.invstd
        return scale, bias - self.mean * scale


def channel_view(values: Tensor, ndim: int) -> Tensor:
    """Per-channel ``values`` (C,) shaped to broadcast along dim 1 of an ``ndim``-d tensor."""
    return values.view(1, -1, *([1] * (ndim - 2)))


def batch_norm_moments(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode ``F.batch_norm(x, ...)`` and x's batch mean and unbiased variance (C,)."""
    channels = x.shape[1]
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    mean = torch.zeros(channels, dtype=stats_dtype, device=x.device)
    var = torch.ones(channels, dtype=stats_dtype, device=x.device)
    out = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=1.0, eps=eps)
    return out, mean, var


def batch_norm_train(
    x: Tensor, norm: nn.Module, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, BatchStats]:
    """``norm(x)`` in training mode with the given affine parameters, and its batch statistics.

    The module's running statistics get the update ``norm(x)`` would give them.
    """
    out, mean, var = batch_norm_moments(x, weight, bias, norm.eps)
    update_running_stats(norm, mean, var)
    count = x.numel() // x.shape[1]
    # var is the unbiased estimate the running statistics take; the normalisation used the
    # biased one.
    invstd = torch.rsqrt(var * ((count - 1) / count) + norm.eps)
    return out, BatchStats(mean, invstd)


@torch.no_grad()
def update_running_stats(norm: nn.Module, mean: Tensor, var: Tensor) -> None:
    """What ``norm(x)`` does to its buffers in training, given x's batch mean and unbiased var."""
    if not norm.track_running_stats or norm.running_mean is None or norm.running_var is None:
        return
    factor = norm.momentum
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if factor is None:
            factor = 1.0 / float(norm.num_batches_tracked)
    norm.running_mean.mul_(1.0 - factor).add_(mean.to(norm.running_mean.dtype), alpha=factor)
    norm.running_var.mul_(1.0 - factor).add_(var.to(norm.running_var.dtype), alpha=factor)


def batch_norm_backward(grad: Tensor, x: Tensor, weight: Tensor, stats: BatchStats) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dx, dL/dw, dL/db)`` of a training-mode BatchNorm (module docstring), from its
    input ``x``, the gradient ``grad`` of its output and its :class:`BatchStats`.

    ATen's own BatchNorm backward with the kept statistics: one reduction pass over
    ``grad`` and ``x`` and one pass writing dL/dx, where the same formula written with
    tensor ops takes five.
    """
    return torch.ops.aten.native_batch_norm_backward(
        grad, x, weight, None, None, stats.mean.to(x.dtype), stats.invstd.to(x.dtype), True, 0.0, [True, True, True]
    )
