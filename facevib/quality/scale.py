"""The [0, 1] scale of a served quality: the empirical CDF of a calibration set, as a graph op.

A raw score ``x`` maps to the fraction of calibration faces scoring below it, interpolated
linearly between the calibration quantiles ``a_0 <= ... <= a_K`` at ``0, 1/K, ..., 1``:

    q(x) = (1/K) * sum_k clip((x - a_k) / (a_{k+1} - a_k), 0, 1)

which is 0 at or below the calibration minimum, 1 at or above its maximum, and k/K at ``a_k``.
It is built from Sub, Div, Clip and ReduceMean, so it exports to any ONNX opset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_KNOTS", "EmpiricalCDF", "quantile_knots"]

DEFAULT_KNOTS = 100
_MIN_STEP = 1e-12  # a zero-width interval (tied quantiles) becomes a step


def quantile_knots(scores: np.ndarray, knots: int = DEFAULT_KNOTS) -> np.ndarray:
    """The ``knots + 1`` quantiles of ``scores`` at ``0, 1/knots, ..., 1`` (float64).

    Raises:
        ValueError: fewer than two finite scores, or ``knots < 1``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if knots < 1 or scores.size < 2 or not np.all(np.isfinite(scores)):
        raise ValueError(f"the scale needs >= 2 finite calibration scores and >= 1 knot, got {scores.size}, {knots}")
    return np.quantile(scores, np.linspace(0.0, 1.0, knots + 1))


class EmpiricalCDF(nn.Module):
    """raw score (N,) -> quality in [0, 1] (N,), from the calibration quantiles (see the module docstring)."""

    def __init__(self, quantiles: np.ndarray) -> None:
        super().__init__()
        quantiles = np.asarray(quantiles, dtype=np.float64)
        if quantiles.ndim != 1 or quantiles.size < 2 or np.any(np.diff(quantiles) < 0):
            raise ValueError(f"quantiles must be a non-decreasing 1-D array of >= 2 values, got {quantiles.shape}")
        self.register_buffer("low", torch.tensor(quantiles[:-1], dtype=torch.float32))
        self.register_buffer("width", torch.tensor(np.maximum(np.diff(quantiles), _MIN_STEP), dtype=torch.float32))

    def forward(self, raw: Tensor) -> Tensor:
        steps = ((raw[:, None] - self.low) / self.width).clamp(0.0, 1.0)
        return steps.mean(dim=1)
