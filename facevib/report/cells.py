"""Per-cell facts of a trained VIB model: output sizes, betas and the KL on held-out images.

The trainer logs every cell's KL summed over the cell's C x H x W outputs (the paper's upper
bound on I(Z_i; Z_{i-1}), in nats per sample). Cells at different depths have different
sizes, so the report divides by the element count; :func:`cell_statistics` measures those
counts on the model itself rather than assuming an architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facevib.data.transforms import images_to_tensor
from facevib.models import load_backbone
from facevib.models.vib import VIBCell

__all__ = ["CellStatistics", "cell_statistics"]


@dataclass(frozen=True)
class CellStatistics:
    """``elements[i]``: outputs per sample of cell ``i`` (depth order); ``betas[i]``: its KL
    weight; ``heldout_kl[i]``: its KL (nats per sample, summed over elements) averaged over
    the held-out images given."""

    elements: list[int]
    betas: list[float]
    heldout_kl: list[float]
    images: int


def cell_statistics(backbone: str | Path, images: np.ndarray, batch_size: int = 64) -> CellStatistics:
    """Measure the cells of ``backbone`` (a facevib checkpoint or ``backbone.pt``) on aligned
    ``(N, 112, 112, 3)`` uint8 RGB ``images`` in eval mode (deterministic means; the KL uses
    each cell's mu and sigma on these inputs).

    Raises:
        ValueError: the model has no VIB cells (a plain iResNet), or no images were given.
    """
    if len(images) == 0:
        raise ValueError("cell_statistics needs at least one image")
    model = load_backbone(Path(backbone)).eval()
    cells = [m for m in model.modules() if isinstance(m, VIBCell)]
    if not cells:
        raise ValueError(f"{backbone}: the model has no VIB cells, so there is no per-cell KL to measure")
    elements: list[int] = []
    hooks = [
        # The sigma branch's output has the cell's shape; it runs in depth order.
        cell.sigma.register_forward_hook(lambda _m, _i, out: elements.append(int(out[0].numel())))
        for cell in cells
    ]
    totals = torch.zeros(len(cells), dtype=torch.float64)
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                part = images[start : start + batch_size]
                _, kl = model(images_to_tensor(part), return_kl=True)
                totals += kl.double() * len(part)  # batch means -> sums
    finally:
        for hook in hooks:
            hook.remove()
    return CellStatistics(
        elements=elements[: len(cells)],
        betas=[float(b) for b in model.betas],
        heldout_kl=(totals / len(images)).tolist(),
        images=int(len(images)),
    )
