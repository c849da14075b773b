"""Per-cell KL weights beta_i (cellVIB, eq. 6 and §4.4).

cellVIB: Zhai, Ju, Lan, Xiao, "Cell Variational Information Bottleneck Network", arXiv:2403.15082
(the arXiv version was withdrawn).

The face-recognition setting of the paper lets beta_i "uniformly decrease with the depth i"
from 1e-3 at the first cell to 0 at the last; that is the ``"linear"`` schedule with the
defaults below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["BETA_MAX", "BETA_MIN", "BetaSpec", "beta_schedule"]

BETA_MAX = 1e-3
BETA_MIN = 0.0

BetaSpec = str | float | Sequence[float]
"""``"linear"``, ``"constant"``, a number (every cell gets it) or one value per cell."""


def beta_schedule(
    spec: BetaSpec, num_cells: int, beta_max: float = BETA_MAX, beta_min: float = BETA_MIN
) -> torch.Tensor:
    """beta_i for ``num_cells`` cells ordered by depth, as a float32 tensor (num_cells,).

    Args:
        spec: ``"linear"``: beta_max at the first cell down to beta_min at the last
            (a single cell gets beta_max); ``"constant"``: beta_max everywhere; a number:
            that value everywhere; a sequence: the values themselves, one per cell.
        num_cells: number of VIB cells (0 for a model without cells).
        beta_max: first-cell weight of ``"linear"``, the value of ``"constant"``.
        beta_min: last-cell weight of ``"linear"``.

    Raises:
        ValueError: unknown spec, wrong length, or a negative / non-finite weight.
    """
    if num_cells < 0:
        raise ValueError(f"beta_schedule: num_cells must be >= 0, got {num_cells}")
    for field, value in (("beta_max", beta_max), ("beta_min", beta_min)):
        if not _is_weight(value):
            raise ValueError(f"beta_schedule: {field} must be a finite number >= 0, got {value!r}")
    if beta_min > beta_max:
        raise ValueError(f"beta_schedule: beta_min {beta_min} > beta_max {beta_max}")
    if isinstance(spec, str):
        if spec == "linear":
            return torch.linspace(beta_max, beta_min, num_cells, dtype=torch.float64).float()
        if spec == "constant":
            return torch.full((num_cells,), float(beta_max))
        raise ValueError(
            f"beta_schedule: unknown schedule {spec!r} (expected 'linear', 'constant', a number or a list)"
        )
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        if not _is_weight(spec):
            raise ValueError(f"beta_schedule: a constant beta must be a finite number >= 0, got {spec!r}")
        return torch.full((num_cells,), float(spec))
    if isinstance(spec, Sequence):
        values = list(spec)
        if len(values) != num_cells:
            raise ValueError(
                f"beta_schedule: explicit beta list has {len(values)} values but the model has {num_cells} cells"
            )
        bad = [v for v in values if not _is_weight(v)]
        if bad:
            raise ValueError(f"beta_schedule: beta values must be finite numbers >= 0, got {bad[0]!r}")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    raise ValueError(f"beta_schedule: unsupported beta spec {spec!r}")


def _is_weight(value: object) -> bool:
    """A finite, non-negative real number (bools excluded: True is not a weight)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
