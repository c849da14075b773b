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
the padding. It does not depend on the batch: its interior value enters as the
convolution's bias and the frame is corrected in place, so the shift costs no
activation-sized pass. The BatchNorms' running statistics are updated exactly as each
module would update them itself (its momentum, or the cumulative average when momentum is
None). Merging trades activation passes for kernel passes, so cell blocks merge only where
:func:`merging_pays`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facevib.models.norm_stats import batch_norm_moments, update_running_stats

__all__ = ["BranchHead", "can_merge", "merged_branch_heads", "merging_pays"]


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


def merging_pays(x: Tensor, heads: Sequence[BranchHead]) -> bool:
    """Whether merging is expected to be faster than the layers one by one, for input ``x``.

    Merging trades passes over the activation (one input normalisation and its backward
    instead of one per head) for passes over the kernels (the scaled kernel, the taps of
    the constant image and their gradients, about eight per step). Measured per stage on
    CPU (``benchmarks/cell_blocks.py``, docs/results.md), it pays where the activation a
    kernel convolves, N * H * W values per input channel, is at least four times the stacked
    kernel, 9 * (output channels) per input channel; near one times it costs 3-20% more.
    Off the CPU every block merges: a pass over a kernel of a few MB costs a GPU microseconds,
    and the saved copy of the input that merging drops is what limits the batch there.
    """
    if x.device.type != "cpu":
        return True
    batch, _, height, width = x.shape
    return batch * height * width >= 4 * 9 * sum(head.conv.out_channels for head in heads)


def merged_branch_heads(x: Tensor, heads: Sequence[BranchHead]) -> list[Tensor]:
    """``[head.act(head.norm_out(head.conv(head.norm_in(x)))) for head in heads]``, in one pass.

    ``heads`` must satisfy :func:`can_merge`. Every parameter gets the gradient it gets from
    the separate layers, and every BatchNorm's running statistics get the update it would
    make itself.
    """
    normalised = _batch_normalise(x, [head.norm_in for head in heads], None, None, shared=True)
    params = [t for head in heads for t in (head.conv.weight, head.norm_in.weight, head.norm_in.bias, head.conv.bias)]
    features = _AffineConv.apply(normalised, *params)
    out_weight = torch.cat([head.norm_out.weight for head in heads])
    out_bias = torch.cat([head.norm_out.bias for head in heads])
    features = _batch_normalise(features, [head.norm_out for head in heads], out_weight, out_bias, shared=False)
    widths = [head.conv.out_channels for head in heads]
    return [F.prelu(part, head.act.weight) for part, head in zip(features.split(widths, dim=1), heads, strict=True)]


class _Head(NamedTuple):
    """One head's parameters inside :class:`_AffineConv`: conv kernel, BN1 scale and shift, conv bias."""

    kernel: Tensor
    scale: Tensor
    shift: Tensor
    bias: Tensor | None


def _split_heads(params: Sequence[Tensor | None]) -> list[_Head]:
    return [_Head(*params[i : i + 4]) for i in range(0, len(params), 4)]


class _AffineConv(torch.autograd.Function):
    """Every head's conv3x3(g * x^ + b, W) (+ conv bias), stacked on output channels, from x^ once.

    Forward is one convolution of x^ with the kernels W * g, written into one buffer; the
    constant image conv(b, W) enters as the convolution's bias (its interior value) plus a
    correction on the one-pixel frame, so no activation-sized pass is added for it. Backward
    is one ``convolution_backward`` (input, kernel and bias gradients); the frame's
    gradients are sums over its rows and columns. Each kernel gets one gradient,
    ``dK * g + b (x) dtaps``, written into ``dK`` in place, so no weight-sized tensor is
    kept for backward and none is accumulated twice.
    """

    @staticmethod
    def forward(ctx, x: Tensor, *params: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, *params)
        heads = _split_heads(params)
        taps = torch.cat([_kernel_taps(head, x.dtype) for head in heads])
        interior = taps.sum(dim=(1, 2))
        image = _constant_image(taps, x.shape[-2:]) - interior.view(-1, 1, 1)
        conv_bias = [head.bias if head.bias is not None else interior.new_zeros(head.kernel.shape[0]) for head in heads]
        out = F.conv2d(x, _scaled_kernels(heads, x.dtype), interior + torch.cat(conv_bias).to(x.dtype), padding=1)
        _add_on_frame(out, image)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *params = ctx.saved_tensors
        heads = _split_heads(params)
        kernel = _scaled_kernels(heads, grad.dtype)
        grad_x, grad_kernel, grad_sum = torch.ops.aten.convolution_backward(
            grad,
            x.to(grad.dtype),
            kernel,
            bias_sizes=[kernel.shape[0]],
            stride=[1, 1],
            padding=[1, 1],
            dilation=[1, 1],
            transposed=False,
            output_padding=[0, 0],
            groups=1,
            output_mask=[ctx.needs_input_grad[0], True, True],
        )
        grad_taps = _constant_image_backward(grad, grad_sum)
        grads = []
        offset = 0
        for head in heads:
            rows = slice(offset, offset + head.kernel.shape[0])
            offset = rows.stop
            grad_k, grad_t = grad_kernel[rows], grad_taps[rows]
            kernel = head.kernel.to(grad.dtype)
            grad_scale = (grad_k * kernel).sum(dim=(0, 2, 3))
            # taps[o, k] = sum_i W[o, i, k] b[i]: dL/db[i] = sum_o (W[o] @ dtaps[o])[i].
            grad_shift = torch.bmm(kernel.flatten(2), grad_t.flatten(1).unsqueeze(-1)).sum(dim=0).flatten()
            grad_kernel_total = grad_k.mul_(_input_channels(head.scale, grad.dtype))
            grad_kernel_total.addcmul_(_input_channels(head.shift, grad.dtype), grad_t.unsqueeze(1))
            grads += [
                grad_kernel_total.to(head.kernel.dtype),
                grad_scale.to(head.scale.dtype),
                grad_shift.to(head.shift.dtype),
                None if head.bias is None else grad_sum[rows].to(head.bias.dtype),
            ]
        return None if grad_x is None else grad_x.to(x.dtype), *grads


def _input_channels(values: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-input-channel ``values`` shaped (1, C, 1, 1) to scale a conv kernel."""
    return values.to(dtype).view(1, -1, 1, 1)


def _scaled_kernels(heads: Sequence[_Head], dtype: torch.dtype) -> Tensor:
    """cat_i(W_i * g_i), g_i scaling W_i's input channels, written straight into one buffer."""
    first = heads[0].kernel
    out = torch.empty((sum(head.kernel.shape[0] for head in heads), *first.shape[1:]), dtype=dtype, device=first.device)
    offset = 0
    for head in heads:
        rows = head.kernel.shape[0]
        torch.mul(head.kernel.to(dtype), _input_channels(head.scale, dtype), out=out[offset : offset + rows])
        offset += rows
    return out


def _kernel_taps(head: _Head, dtype: torch.dtype) -> Tensor:
    """taps[o, k, l] = sum_i W[o, i, k, l] b[i]: the kernel applied to the constant image b, (O, 3, 3)."""
    kernel = head.kernel.to(dtype)
    # A matrix-vector product reads the kernel once; (W * b).sum(1) would write a copy of it.
    return torch.matmul(head.shift.to(dtype), kernel.flatten(2)).view(-1, 3, 3)


def _constant_image(taps: Tensor, size: torch.Size) -> Tensor:
    """conv(b, W) for every output channel, (O, H, W), from the taps (:func:`_kernel_taps`).

    Output pixel (h, w) of a 3x3 convolution with zero padding 1 sees the taps (k, l) with
    0 <= h + k - 1 < H and 0 <= w + l - 1 < W.
    """
    height, width = size
    return torch.einsum("hk,okl,wl->ohw", _taps_seen(height, taps), taps, _taps_seen(width, taps))


def _add_on_frame(out: Tensor, image: Tensor) -> None:
    """``out += image`` in place, for an image that is zero off the one-pixel frame."""
    height, width = image.shape[-2:]
    if height <= 2 or width <= 2:
        out.add_(image)  # every pixel is on the frame
        return
    out[:, :, 0].add_(image[:, 0])
    out[:, :, -1].add_(image[:, -1])
    out[:, :, 1:-1, 0].add_(image[:, 1:-1, 0])
    out[:, :, 1:-1, -1].add_(image[:, 1:-1, -1])


# Row k of the matrix: which of (first row, every row, last row) the taps of kernel row k
# see: all but the first (k = 0), all (k = 1), all but the last (k = 2). Same for columns.
_SEEN_FROM_EDGES = ((-1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 1.0, -1.0))


def _constant_image_backward(grad: Tensor, grad_sum: Tensor) -> Tensor:
    """dL/dtaps (O, 3, 3) of :func:`_constant_image` broadcast over the batch, from the frame.

    dL/dtaps[o, k, l] sums grad over the pixels tap (k, l) sees, which is every pixel less
    the first or last row and column: it needs only the total (``grad_sum``), the edge rows
    and columns and the corners.
    """
    # Slices, not an index list: they reduce in place, where an index list gathers a copy.
    first_row, last_row = grad[:, :, 0].sum(dim=0), grad[:, :, -1].sum(dim=0)  # (O, W)
    first_col, last_col = grad[:, :, :, 0].sum(dim=(0, 2)), grad[:, :, :, -1].sum(dim=(0, 2))  # (O,)
    sums = torch.stack(
        [
            torch.stack([first_row[:, 0], first_row.sum(-1), first_row[:, -1]], dim=1),
            torch.stack([first_col, grad_sum, last_col], dim=1),
            torch.stack([last_row[:, 0], last_row.sum(-1), last_row[:, -1]], dim=1),
        ],
        dim=1,
    )  # sums[o, r, c]: r, c in (first, all, last)
    seen = torch.tensor(_SEEN_FROM_EDGES, dtype=sums.dtype, device=sums.device)
    return torch.einsum("kr,orc,lc->okl", seen, sums, seen)


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
