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
the padding. It does not depend on the batch, so it is computed once, from the kernel's
taps, and broadcast. The BatchNorms' running statistics are updated exactly as each module would
update them itself (its momentum, or the cumulative average when momentum is None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facevib.models.norm_stats import batch_norm_moments, update_running_stats

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
    params = [t for head in heads for t in (head.conv.weight, head.norm_in.weight)]
    features = _StackedConv.apply(normalised, *params) + _bias_image(heads, x.shape[-2:], normalised.dtype)
    out_weight = torch.cat([head.norm_out.weight for head in heads])
    out_bias = torch.cat([head.norm_out.bias for head in heads])
    features = _batch_normalise(features, [head.norm_out for head in heads], out_weight, out_bias, shared=False)
    widths = [head.conv.out_channels for head in heads]
    return [F.prelu(part, head.act.weight) for part, head in zip(features.split(widths, dim=1), heads, strict=True)]


def _stacked_weight(params: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """cat_i(W_i * g_i), g_i scaling W_i's input channels; ``params`` = (W_1, g_1, W_2, g_2, ...)."""
    pairs = zip(params[0::2], params[1::2], strict=True)
    return torch.cat([weight.to(dtype) * scale.to(dtype).view(1, -1, 1, 1) for weight, scale in pairs])


class _StackedConv(torch.autograd.Function):
    """conv3x3(x, cat_i(W_i * g_i)), padding 1, keeping x and the parameters for backward.

    Autograd through the product would keep the stacked kernel, a weight-sized tensor per
    block (80 MB over cellVIB-r50, as much as its batch-8 noise); backward rebuilds it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, *params: Tensor) -> Tensor:
        ctx.save_for_backward(x, *params)
        return F.conv2d(x, _stacked_weight(params, x.dtype), padding=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *params = ctx.saved_tensors
        weight = _stacked_weight(params, grad.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=1).to(x.dtype)
        grad_weight = torch.nn.grad.conv2d_weight(x.to(grad.dtype), weight.shape, grad, padding=1)
        grads = []
        offset = 0
        for kernel, scale in zip(params[0::2], params[1::2], strict=True):
            part = grad_weight[offset : offset + kernel.shape[0]]
            offset += kernel.shape[0]
            grads.append((part * scale.to(part.dtype).view(1, -1, 1, 1)).to(kernel.dtype))
            grads.append((part * kernel.to(part.dtype)).sum(dim=(0, 2, 3)).to(scale.dtype))
        return grad_x, *grads


def _bias_image(heads: Sequence[BranchHead], size: torch.Size, dtype: torch.dtype) -> Tensor:
    """conv(b_i, W_i) (+ the conv's own bias) for every head, stacked: shape (1, sum C_out, H, W).

    Output pixel (h, w) of a 3x3 convolution with zero padding 1 sees the taps (k, l) with
    0 <= h + k - 1 < H and 0 <= w + l - 1 < W; on a constant image b it is the sum of those
    taps of sum_i W[:, i] * b_i.
    """
    height, width = size
    parts = []
    for head in heads:
        # A product and a sum, not an einsum: einsum would keep a reshaped copy of the kernel
        # for backward, a weight-sized tensor per block.
        taps = (head.conv.weight.to(dtype) * head.norm_in.bias.to(dtype).view(1, -1, 1, 1)).sum(dim=1)
        image = torch.einsum("hk,okl,wl->ohw", _taps_seen(height, taps), taps, _taps_seen(width, taps))
        if head.conv.bias is not None:
            image = image + head.conv.bias.to(dtype).view(-1, 1, 1)
        parts.append(image)
    return torch.cat(parts).unsqueeze(0)


def _taps_seen(length: int, like: Tensor) -> Tensor:
    """(length, 3) 0/1 matrix: which of a 3-tap kernel's taps land inside a zero-padded axis."""
    position = torch.arange(length, device=like.device).view(-1, 1)
    tap = torch.arange(3, device=like.device).view(1, -1)
    return ((position + tap - 1 >= 0) & (position + tap - 1 < length)).to(like.dtype)


def _batch_normalise(
    x: Tensor, norms: Sequence[nn.BatchNorm2d], weight: Tensor | None, bias: Tensor | None, *, shared: bool
) -> Tensor:
    """Batch-normalise ``x`` once and replay each norm's running-statistics update.

    ``shared``: every norm covers all channels of ``x`` (each gets the same update);
    otherwise they cover consecutive channel blocks.
    """
    out, mean, var = batch_norm_moments(x, weight, bias, norms[0].eps)
    offset = 0
    for norm in norms:
        if shared:
            update_running_stats(norm, mean, var)
        else:
            width = norm.num_features
            update_running_stats(norm, mean[offset : offset + width], var[offset : offset + width])
            offset += width
    return out
