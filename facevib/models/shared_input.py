"""Branches that read the same input, run as one: BN -> conv3x3 -> BN -> PReLU, merged.

The mean and sigma branches of an iResNet VIB cell both start ``BN -> conv3x3 -> BN ->
PReLU`` on the block input, with their own parameters. Run separately, the input is
normalised twice (two batch-statistics passes and two saved copies of the normalised
input) and the sigma branch's narrow convolution (a quarter of the channels) runs at a
fraction of the efficiency of a wide one. :func:`merged_branch_heads` computes every
branch's ``PReLU(BN2(conv(BN1(x))))`` with one normalisation of ``x``, one convolution
with the branches' output channels stacked, and one second BatchNorm over all of them.

The mathematics is unchanged. With x^ = (x - mean) / sqrt(var + eps) the batch-normalised
input, branch i's convolution input is g_i * x^ + b_i (per input channel), and a
convolution is linear, so

    conv(g_i * x^ + b_i, W_i) = conv(x^, W_i * g_i) + conv(b_i, W_i)

where conv(b_i, W_i) is the convolution of the constant image b_i with the same zero
padding: constant inside, different on the one-pixel frame a 3x3 kernel overlaps with
the padding. It does not depend on the batch, so it is computed once on a 3x3 image and
broadcast. The BatchNorms' running statistics are updated exactly as each module would
update them itself (its momentum, or the cumulative average when momentum is None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BranchHead", "can_merge", "merged_branch_heads"]


class BranchHead(NamedTuple):
    """The first four layers of a branch: BatchNorm2d, 3x3 conv (stride 1), BatchNorm2d, PReLU."""

    norm_in: nn.BatchNorm2d
    conv: nn.Conv2d
    norm_out: nn.BatchNorm2d
    act: nn.PReLU


def can_merge(heads: Sequence[BranchHead]) -> bool:
    """Whether :func:`merged_branch_heads` computes exactly what the heads compute one by one.

    Needs training-mode affine BatchNorms (batch statistics; the running-statistics update
    is replayed per module) with one ``eps`` per position, and 3x3, stride-1, padding-1,
    ungrouped, zero-padded convolutions (the frame of the bias image is 1 pixel wide).
    """
    if not heads:
        return False
    for head in heads:
        norms_ok = all(
            type(norm) is nn.BatchNorm2d and norm.training and norm.affine for norm in (head.norm_in, head.norm_out)
        )
        conv = head.conv
        conv_ok = (
            type(conv) is nn.Conv2d
            and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1)
            and conv.padding == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
        )
        if not (norms_ok and conv_ok and type(head.act) is nn.PReLU):
            return False
    first = heads[0]
    return all(
        head.norm_in.eps == first.norm_in.eps
        and head.norm_out.eps == first.norm_out.eps
        and head.norm_in.num_features == first.norm_in.num_features
        for head in heads
    )


def merged_branch_heads(x: Tensor, heads: Sequence[BranchHead]) -> list[Tensor]:
    """``[head.act(head.norm_out(head.conv(head.norm_in(x)))) for head in heads]``, in one pass.

    ``heads`` must satisfy :func:`can_merge`. Every parameter gets the gradient it gets from
    the separate layers, and every BatchNorm's running statistics get the update it would
    make itself.
    """
    normalised = _batch_normalise(x, [head.norm_in for head in heads], None, None, shared=True)
    weight = torch.cat([head.conv.weight * head.norm_in.weight.view(1, -1, 1, 1) for head in heads])
    features = F.conv2d(normalised, weight, padding=1) + _bias_image(heads, x.shape[-2:], normalised.dtype)
    out_weight = torch.cat([head.norm_out.weight for head in heads])
    out_bias = torch.cat([head.norm_out.bias for head in heads])
    features = _batch_normalise(features, [head.norm_out for head in heads], out_weight, out_bias, shared=False)
    widths = [head.conv.out_channels for head in heads]
    return [F.prelu(part, head.act.weight) for part, head in zip(features.split(widths, dim=1), heads, strict=True)]


def _bias_image(heads: Sequence[BranchHead], size: torch.Size, dtype: torch.dtype) -> Tensor:
    """conv(b_i, W_i) (+ the conv's own bias) for every head, stacked: shape (1, sum C_out, H, W).

    On an H x W image a 3x3 zero-padded convolution of a constant is constant except on the
    one-pixel frame, so it is computed on a (min(H, 3), min(W, 3)) image and its middle
    row and column are repeated.
    """
    height, width = size
    small = (min(height, 3), min(width, 3))
    parts = []
    for head in heads:
        constant = head.norm_in.bias.view(1, -1, 1, 1).expand(1, -1, *small)
        parts.append(F.conv2d(constant.to(dtype), head.conv.weight.to(dtype), head.conv.bias, padding=1))
    image = torch.cat(parts, dim=1)
    rows = _frame_index(height, image.device)
    cols = _frame_index(width, image.device)
    return image.index_select(2, rows).index_select(3, cols)


def _frame_index(length: int, device: torch.device) -> Tensor:
    """Indices into a (<= 3)-long axis that rebuild a ``length``-long one: 0, 1, ..., 1, 2."""
    if length <= 3:
        return torch.arange(length, device=device)
    index = torch.ones(length, dtype=torch.long, device=device)
    index[0] = 0
    index[-1] = 2
    return index


def _batch_normalise(
    x: Tensor, norms: Sequence[nn.BatchNorm2d], weight: Tensor | None, bias: Tensor | None, *, shared: bool
) -> Tensor:
    """Batch-normalise ``x`` once and replay each norm's running-statistics update.

    ``shared``: every norm covers all channels of ``x`` (each gets the same update);
    otherwise they cover consecutive channel blocks. The batch mean and unbiased variance
    come out of ``F.batch_norm`` itself, run with momentum 1 on scratch buffers.
    """
    channels = x.shape[1]
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    mean = torch.zeros(channels, dtype=stats_dtype, device=x.device)
    var = torch.ones(channels, dtype=stats_dtype, device=x.device)
    out = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=1.0, eps=norms[0].eps)
    offset = 0
    for norm in norms:
        width = norm.num_features
        if shared:
            _update_running_stats(norm, mean, var)
        else:
            _update_running_stats(norm, mean[offset : offset + width], var[offset : offset + width])
            offset += width
    return out


@torch.no_grad()
def _update_running_stats(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor) -> None:
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
