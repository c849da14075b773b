"""The report's figures: training curves, KL per cell against depth, ROC curves of several models.

matplotlib is imported when a figure is drawn, through its object-oriented API on the Agg
canvas (no global backend switch, no display needed), as in :mod:`facevib.eval.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["training_curves", "kl_per_cell", "roc_curves"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def training_curves(path: Path, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Margin (ArcFace) loss of every run, and the weighted KL term of those that have one,
    against the training step. ``runs`` maps a label to its ``metrics.jsonl`` train records."""
    figure = _figure(10.0, 3.8)
    loss_axes, kl_axes = figure.subplots(1, 2)
    for label, records in runs.items():
        steps = [r["step"] for r in records]
        loss_axes.plot(steps, [r["margin_loss"] for r in records], marker=".", label=label)
        kl = [r.get("kl_loss", 0.0) for r in records]
        if any(kl):
            kl_axes.plot(steps, kl, marker=".", label=label)
    loss_axes.set_title("classification loss (ArcFace margin, Partial FC)")
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss (nats)")
    loss_axes.grid(linestyle="--", linewidth=0.5)
    loss_axes.legend()
    kl_axes.set_title("weighted KL term  sum_i beta_i KL_i")
    kl_axes.set_xlabel("step")
    kl_axes.set_ylabel("nats per sample")
    kl_axes.grid(linestyle="--", linewidth=0.5)
    if kl_axes.lines:
        kl_axes.legend()
    else:
        kl_axes.text(0.5, 0.5, "no VIB cells in these runs", ha="center", va="center", transform=kl_axes.transAxes)
    return _save(figure, path)


def kl_per_cell(
    path: Path,
    kl_by_step: Mapping[int, Sequence[float]],
    elements: Sequence[int],
    betas: Sequence[float],
    label: str,
    heldout: Sequence[float] | None = None,
) -> Path:
    """KL per element of every cell (log scale) against the cell's depth, one line per logged
    step, with the cell's beta on a second axis.

    ``kl_by_step[step][i]`` is cell ``i``'s KL summed over its ``elements[i]`` outputs (as the
    trainer logs it); dividing by the element count makes cells of different sizes comparable
    (a cell at its initial sigma, softplus(-5), holds about 5 nats per element). ``heldout``,
    the same sums measured on held-out images with the final model, is drawn dashed.
    """
    figure = _figure(7.0, 4.2)
    axes = figure.add_subplot()
    depth = np.arange(1, len(elements) + 1)
    colours = _sequential_colours(len(kl_by_step))
    for colour, (step, kl) in zip(colours, sorted(kl_by_step.items()), strict=True):
        per_element = np.asarray(kl, dtype=np.float64) / np.asarray(elements, dtype=np.float64)
        axes.plot(depth, per_element, marker="o", color=colour, label=f"step {step}")
    if heldout is not None:
        per_element = np.asarray(heldout, dtype=np.float64) / np.asarray(elements, dtype=np.float64)
        axes.plot(depth, per_element, marker="s", color="black", linestyle="--", label="held-out, final model")
    axes.set_yscale("log")
    axes.set_xticks(depth)
    axes.set_xlabel("cell (depth: 1 = first residual block)")
    axes.set_ylabel("KL per element (nats)")
    axes.set_title(f"{label}: KL(N(mu, sigma^2) || N(0, I)) per cell")
    axes.grid(linestyle="--", linewidth=0.5)
    beta_axes = axes.twinx()
    beta_axes.bar(depth, betas, width=0.35, color="0.8", zorder=0, label="beta_i (right axis)")
    beta_axes.set_ylabel("beta_i")
    beta_axes.set_ylim(0, max(max(betas), 1e-12) * 1.15)
    axes.set_zorder(beta_axes.get_zorder() + 1)  # lines above the bars
    axes.patch.set_visible(False)
    handles, labels = axes.get_legend_handles_labels()
    bar_handles, bar_labels = beta_axes.get_legend_handles_labels()
    # Lower right: deep cells keep high KL (small beta), so that corner is where lines are not.
    axes.legend(handles + bar_handles, labels + bar_labels, loc="lower right", fontsize="small")
    return _save(figure, path)


def _sequential_colours(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.15 + 0.7 * i / max(count - 1, 1)) for i in range(count)]


def roc_curves(
    path: Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    mark_fpr: float = 1e-4,
    styles: Mapping[str, str] | None = None,
) -> Path:
    """ROC curves (log FPR) of several models in one plot, with a vertical line at ``mark_fpr``.

    The x range starts at the smallest non-zero FPR any curve reaches (1 / impostor pairs), so
    the plot never suggests resolution the data do not have.
    """
    figure = _figure(6.4, 4.8)
    axes = figure.add_subplot()
    smallest = 1.0
    for label, (fpr, tpr) in curves.items():
        positive = fpr > 0  # a log axis cannot show FPR 0
        if positive.any():
            smallest = min(smallest, float(fpr[positive].min()))
        axes.plot(fpr[positive], tpr[positive], lw=1.4, linestyle=(styles or {}).get(label, "-"), label=label)
    low = 10.0 ** math.floor(math.log10(smallest))
    axes.set_xscale("log")
    axes.set_xlim(low, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.axvline(mark_fpr, color="0.4", linestyle=":", linewidth=1)
    axes.text(mark_fpr, 0.02, f" FPR {mark_fpr:g}", color="0.3", fontsize="small")
    axes.grid(linestyle="--", linewidth=0.5)
    axes.set_xlabel("False Positive Rate")
    axes.set_ylabel("True Positive Rate")
    axes.set_title(title)
    axes.legend(loc="lower right")
    return _save(figure, path)
