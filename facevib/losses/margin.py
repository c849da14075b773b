"""Additive angular / cosine margins for face recognition (ArcFace, CosFace, combined).

For the target class of each sample the cosine c = cos(theta) becomes

    phi(theta) = cos(m1 * theta + m2) - m3

(SphereFace m1, ArcFace m2, CosFace m3); other classes keep c; everything is then scaled by
s and fed to softmax cross-entropy. ArcFace is (1, 0.5, 0), CosFace (1, 0, 0.4). Only m1 = 1
is accepted: the continuation below is derived at theta = pi - m2, the point where
cos(theta + m2) turns, and for m1 != 1 that point and the slope there are different
(SphereFace needs its own piecewise psi(theta)); rather than a silently wrong logit, such
margins are refused.

Numerics. theta = acos(c) is taken on c clamped to [-1 + eps, 1 - eps]: acos' derivative
-1/sqrt(1 - c^2) is infinite at c = +-1, the clamp bounds it by 1/sqrt(2 eps). It moves theta
by up to acos(1 - eps) ~ sqrt(2 eps) = 1.4e-3 rad, so the margin logit s * cos(m1 * theta + m2)
moves by up to about s * m1 * sqrt(2 eps) * sin(m2): 0.043 for ArcFace (s = 64, m2 = 0.5,
eps = 1e-6) at c = 1, negligible against the margin itself. Outside the clamp the gradient is
0, never NaN. One code path covers every (m1, m2, m3); the cos/sin addition formula would
need the same clamp for sqrt(1 - c^2). When m2 = 0
(CosFace, or no margin) phi = c - m3 is computed directly, exact at c = +-1.

Fallback (arcface_torch's "th/mm" trick, easy_margin=False): cos(m1 theta + m2) stops
decreasing once m1 theta + m2 > pi, so a worse target angle would earn a *larger* logit.
There phi = c - m3 - m2 * sin(m2) instead: the first-order expansion of
cos(theta + m2) = c - m2 sin(theta) taken at the boundary theta = pi - m2, where
sin(theta) = sin(m2). phi then keeps decreasing in theta (it jumps down by
1 - cos(m2) - m2 sin(m2) ~ 0.12 for m2 = 0.5 at the boundary, where it is not differentiable).

Gradient. By default the margin is differentiated: d phi / d c =
m1 sin(m1 theta + m2) / sin(theta). arcface_torch's current ``CombinedMarginLoss``/``ArcFace``
instead compute acos, the added margin and cos in place under ``torch.no_grad()``, so the
target logit's gradient with respect to c is s, as if the margin were a constant offset
(a straight-through estimator). ``detach_margin=True`` reproduces that: same forward
values (ours keep the fallback, which their no_grad ArcFace branch omits), gradient s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["CombinedMarginLoss", "margin_logits", "target_margin"]

COS_CLAMP_EPS = 1e-6


def target_margin(cos: Tensor, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, eps: float = COS_CLAMP_EPS) -> Tensor:
    """phi(theta) for target cosines ``cos`` (any shape), with the fallback described above.

    Computed in float32 or wider (cos may arrive in bfloat16 from an autocast classifier);
    the result has that wider dtype.
    """
    wide = cos.to(torch.promote_types(cos.dtype, torch.float32))
    if m1 == 1.0 and m2 == 0.0:
        return wide - m3
    theta = torch.acos(wide.clamp(-1.0 + eps, 1.0 - eps))
    angle = m1 * theta + m2
    fallback = wide - m3 - m2 * math.sin(m2)
    return torch.where(angle <= math.pi, torch.cos(angle) - m3, fallback)


def margin_logits(
    cos: Tensor,
    labels: Tensor,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    detach_margin: bool = False,
) -> Tensor:
    """Margin-adjusted, scaled logits; the functional form of :class:`CombinedMarginLoss`.

    Args:
        cos: (B, C) cosines between L2-normalised embeddings and class centres.
        labels: (B,) integer target column per row, or -1 when the target class is not in
            this shard's C columns (Partial FC); such rows are only scaled. Labels must lie
            in [-1, C); any other value fails inside ``torch.gather``.
        s, m1, m2, m3: scale and margins (see module docstring).
        detach_margin: arcface_torch's no-grad margin (gradient s instead of s * phi'(c)).

    Returns:
        (B, C) logits ``s * cos`` with the target entries replaced by ``s * phi``; the input
        is not modified.
    """
    if cos.dim() != 2:
        raise ValueError(f"cos must be (B, C), got shape {tuple(cos.shape)}")
    if labels.shape != (cos.shape[0],):
        raise ValueError(f"labels must have shape ({cos.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    in_shard = labels != -1
    # Rows without a target gather column 0 and write it back unchanged; keeping every row
    # (instead of indexing the valid ones) avoids a data-dependent shape and a host sync.
    column = torch.where(in_shard, labels, torch.zeros_like(labels)).long().unsqueeze(1)
    target = cos.gather(1, column)
    phi = target_margin(target, m1, m2, m3)
    if detach_margin:
        phi = target + (phi - target).detach()
    adjusted = torch.where(in_shard.unsqueeze(1), phi.to(cos.dtype), target)
    return cos.scatter(1, column, adjusted) * s


class CombinedMarginLoss(nn.Module):
    """cos(m1 theta + m2) - m3 target margin with scale s (ArcFace m2, CosFace m3).

    ``forward(cos, labels)`` returns the (B, C) logits for softmax cross-entropy; labels of
    -1 mark rows whose target class lives in another shard. See the module docstring for
    the numerics, the theta + m > pi fallback and ``detach_margin``.

    Args:
        s: logit scale (64 in ArcFace).
        m1: multiplicative angular margin (SphereFace); only 1 (none) is supported.
        m2: additive angular margin (ArcFace 0.5), in [0, pi).
        m3: additive cosine margin (CosFace 0.4).
        detach_margin: reproduce arcface_torch's margin under ``no_grad``.
    """

    def __init__(
        self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, detach_margin: bool = False
    ) -> None:
        super().__init__()
        for field, value in (("s", s), ("m1", m1), ("m2", m2), ("m3", m3)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"CombinedMarginLoss: {field} must be a finite number, got {value!r}")
        if s <= 0:
            raise ValueError(f"CombinedMarginLoss: s must be > 0, got {s}")
        if m1 != 1.0:
            raise ValueError(
                f"CombinedMarginLoss: m1 must be 1, got {m1} (the theta + m2 > pi continuation "
                "holds only for m1 = 1; multiplicative SphereFace margins are not supported)"
            )
        if not 0.0 <= m2 < math.pi:
            raise ValueError(f"CombinedMarginLoss: m2 must be in [0, pi), got {m2}")
        self.s = float(s)
        self.m1 = float(m1)
        self.m2 = float(m2)
        self.m3 = float(m3)
        self.detach_margin = detach_margin

    def phi(self, target_cos: Tensor) -> Tensor:
        """The unscaled target logit cos(m1 theta + m2) - m3 of target cosines (any shape);
        see :func:`target_margin`. Fused losses (Partial FC) call this on the targets only."""
        return target_margin(target_cos, self.m1, self.m2, self.m3)

    def forward(self, cos: Tensor, labels: Tensor) -> Tensor:
        """Margin-adjusted, scaled logits (B, C); see :func:`margin_logits`."""
        return margin_logits(cos, labels, self.s, self.m1, self.m2, self.m3, self.detach_margin)

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, detach_margin={self.detach_margin}"
