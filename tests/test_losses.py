"""Margin losses against closed-form references, gradcheck, and edge cases at cos = +-1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facevib.losses import CombinedMarginLoss, margin_logits

S = 64.0


def _cosines(rows: int, cols: int, low: float = -0.8, high: float = 0.9, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rows * 31 + cols)
    return low + (high - low) * torch.rand(rows, cols, generator=gen, dtype=dtype)


def _reference(cos: torch.Tensor, labels: torch.Tensor, s: float, m2: float, m3: float) -> torch.Tensor:
    """Written as arcface_torch's ``ArcFace`` head (easy_margin=False) writes it, plus CosFace's m3.

    The target logit is formed by the cos/sin addition formula, cos(theta) cos(m2) -
    sin(theta) sin(m2), and below th = cos(pi - m2) by ``cos - mm`` with mm = sin(pi - m2) m2:
    no acos, and a boundary stated on the cosine, so it shares no step with the code under test.
    """
    out = cos.double().clone() * s
    cos_m, sin_m = math.cos(m2), math.sin(m2)
    th, mm = math.cos(math.pi - m2), math.sin(math.pi - m2) * m2
    for row, label in enumerate(labels.tolist()):
        if label == -1:
            continue
        c = cos[row, label].item()
        sine = math.sqrt(max(0.0, 1.0 - c * c))
        phi = c * cos_m - sine * sin_m if c > th else c - mm
        out[row, label] = s * (phi - m3)
    return out


def test_zero_margin_is_scaled_cosine_softmax():
    cos = _cosines(6, 10)
    labels = torch.tensor([0, 3, 9, -1, 5, 2])
    logits = CombinedMarginLoss(s=S, m1=1.0, m2=0.0, m3=0.0)(cos, labels)
    assert torch.equal(logits, cos * S)
    valid = labels != -1
    torch.testing.assert_close(
        F.cross_entropy(logits[valid], labels[valid]), F.cross_entropy(S * cos[valid], labels[valid])
    )


@pytest.mark.parametrize(
    ("m1", "m2", "m3"),
    [(1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 0.4, 0.15), (1.0, 0.3, 0.2), (1.0, 1.2, 0.0)],
    ids=["arcface", "cosface", "combined", "arc+cos", "wide-arc"],
)
def test_logits_match_arcface_torch_form(m1, m2, m3):
    cos = _cosines(8, 7, low=-0.99, high=0.99)
    cos[0, 1] = -0.95  # theta + m2 > pi for arcface: the fallback branch
    labels = torch.tensor([1, 0, 6, -1, 3, 2, -1, 4])
    logits = CombinedMarginLoss(S, m1, m2, m3)(cos, labels)
    torch.testing.assert_close(logits.double(), _reference(cos, labels, S, m2, m3), rtol=1e-5, atol=2e-4)


def test_fallback_keeps_target_logit_decreasing_in_theta():
    cos = torch.linspace(0.999, -0.999, 2001).unsqueeze(1)
    phi = margin_logits(cos, torch.zeros(2001, dtype=torch.long), s=1.0, m2=0.5)[:, 0]
    assert (phi[1:] < phi[:-1]).all()
    # arcface_torch's th/mm constants: below cos(pi - m), phi = cos - sin(pi - m) * m.
    boundary = math.cos(math.pi - 0.5)
    below = cos[:, 0] < boundary
    torch.testing.assert_close(phi[below], cos[below, 0] - math.sin(math.pi - 0.5) * 0.5)


def test_rows_without_target_and_input_are_untouched():
    cos = _cosines(4, 5)
    original = cos.clone()
    labels = torch.tensor([-1, 2, -1, 4])
    logits = CombinedMarginLoss()(cos, labels)
    assert torch.equal(cos, original)
    assert torch.equal(logits[[0, 2]], S * cos[[0, 2]])
    assert torch.equal(logits[1, [0, 1, 3, 4]], S * cos[1, [0, 1, 3, 4]])


@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 0.4, 0.15)])
def test_gradcheck_float64(m1, m2, m3):
    # cos in [-0.8, 0.9]: theta + m stays below pi, away from the fallback's kink.
    cos = _cosines(5, 6, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([0, 5, -1, 2, 3])
    loss = CombinedMarginLoss(s=4.0, m1=m1, m2=m2, m3=m3)
    assert torch.autograd.gradcheck(lambda c: loss(c, labels), (cos,))
    assert torch.autograd.gradcheck(lambda c: F.cross_entropy(loss(c, labels), labels, ignore_index=-1), (cos,))


def test_true_margin_gradient_and_arcface_torch_detached_variant():
    cos = torch.tensor([[0.6, 0.1], [0.2, 0.3]], requires_grad=True)
    labels = torch.tensor([0, -1])
    CombinedMarginLoss(S, m2=0.5)(cos, labels).sum().backward()
    c, m = 0.6, 0.5
    true_target = S * (math.cos(m) + math.sin(m) * c / math.sqrt(1 - c * c))  # d/dc cos(acos c + m)
    expected = torch.tensor([[true_target, S], [S, S]])
    torch.testing.assert_close(cos.grad, expected)

    detached_cos = cos.detach().clone().requires_grad_(True)
    detached = CombinedMarginLoss(S, m2=0.5, detach_margin=True)(detached_cos, labels)
    torch.testing.assert_close(detached, CombinedMarginLoss(S, m2=0.5)(cos.detach(), labels))
    detached.sum().backward()
    torch.testing.assert_close(detached_cos.grad, torch.full((2, 2), S))  # margin as a constant


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 0.4, 0.15)])
def test_no_nan_at_cos_plus_minus_one(dtype, m1, m2, m3):
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.5], [1.0, 1.0, -1.0]], dtype=dtype, requires_grad=True)
    labels = torch.tensor([0, 0, 2])
    logits = CombinedMarginLoss(S, m1, m2, m3)(cos, labels)
    assert logits.dtype == dtype
    # theta is taken on cos clamped to 1 -/+ 1e-6, i.e. moved by at most acos(1 - 1e-6) ~ sqrt(2e-6),
    # which moves s * cos(m1 theta + m2) by at most s * m1 * sqrt(2e-6); bfloat16 adds its rounding.
    clamp_shift = S * m1 * math.sqrt(2e-6)
    torch.testing.assert_close(
        logits.double(),
        _reference(cos, labels, S, m2, m3),
        rtol=2**-8 if dtype == torch.bfloat16 else 1e-6,
        atol=clamp_shift,
    )
    F.cross_entropy(logits.float(), labels).backward()
    assert torch.isfinite(cos.grad).all()


def test_bad_arguments_raise_value_error():
    for kwargs, match in (
        ({"s": 0.0}, "s must be > 0"),
        ({"m1": 0.0}, "m1 must be 1"),
        ({"m1": 0.9}, "m1 must be 1, got 0.9"),
        ({"m2": 3.5}, "3.5"),
        ({"m3": float("inf")}, "m3"),
    ):
        with pytest.raises(ValueError, match=match):
            CombinedMarginLoss(**kwargs)
    loss = CombinedMarginLoss()
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        loss(torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError):  # a label below -1 is not silently treated as "not in shard"
        loss(torch.zeros(2, 3), torch.tensor([0, -2]))
