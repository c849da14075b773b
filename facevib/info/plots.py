"""Figures of the information plane (bits): per-layer depth profiles (cellVIB Fig. 6), I(Z;Y)
against I(Z;X) across runs (cellVIB Fig. 5), and per-layer paths over training (binning paper)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from facevib.info.entropy import to_bits
from facevib.info.plane import InfoPlane

__all__ = ["plot_depth", "plot_paths", "plot_plane"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(plane: InfoPlane) -> str:
    return plane.model if plane.beta is None else f"{plane.model} beta={plane.beta:g}"


def plot_depth(planes: Sequence[InfoPlane], path: str | Path) -> Path:
    """I(Z_i; X) bound (KL, log scale) and I(Z_i; Y) (held-out solid, probe-train dotted) against depth."""
    plt = _pyplot()
    fig, (ax_x, ax_y) = plt.subplots(1, 2, figsize=(11, 4.2))
    for plane in planes:
        cells = [(layer.depth, to_bits(layer.kl_bound)) for layer in plane.layers if layer.kl_bound is not None]
        (line,) = ax_y.plot(
            [layer.depth for layer in plane.layers],
            [to_bits(layer.label_mi_test) for layer in plane.layers],
            marker="o",
            label=_label(plane),
        )
        ax_y.plot(
            [layer.depth for layer in plane.layers],
            [to_bits(layer.label_mi_train) for layer in plane.layers],
            linestyle=":",
            color=line.get_color(),
        )
        if cells:
            ax_x.plot(*zip(*cells, strict=True), marker="o", color=line.get_color(), label=_label(plane))
        kernel = [(layer.depth, to_bits(layer.kernel.upper)) for layer in plane.layers if layer.kernel is not None]
        if kernel:  # kernel upper bound (noisy layer), dashed: defined for deterministic layers too
            ax_x.plot(*zip(*kernel, strict=True), linestyle="--", marker="x", color=line.get_color())
    ax_x.set_yscale("log")
    ax_x.set(
        xlabel="layer (depth)",
        ylabel="upper bound [bits]",
        title="I(Z; X): cell KL (solid), kernel upper bound (dashed)",
    )
    h_y = to_bits(planes[0].h_y) if planes else None
    if h_y is not None:
        ax_y.axhline(h_y, color="grey", linewidth=0.8, linestyle="--")
    ax_y.set(
        xlabel="layer (depth)", ylabel="H(Y) - CE [bits]", title="I(Z; Y) lower bound (held-out; dotted: probe train)"
    )
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_x, ax_y):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_y.legend(fontsize=7)
    return _save(fig, path)


def plot_plane(planes: Sequence[InfoPlane], path: str | Path) -> Path:
    """One point per run: I(Z; Y) lower bound (held-out) against the I(Z; X) bound of its last cell."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    by_model: dict[str, list[tuple[float, float, float | None]]] = {}
    for plane in planes:
        bound, i_zy = plane.point
        if bound is not None:
            by_model.setdefault(plane.model, []).append((to_bits(bound), to_bits(i_zy), plane.beta))
    for model, points in by_model.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
        for x, y, beta in points:
            if beta is not None:
                ax.annotate(f"{beta:g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set(xlabel="I(Z; X) upper bound (last cell KL) [bits]", ylabel="I(Z; Y) lower bound, held-out [bits]")
    ax.set_title("information plane across runs (labels: beta)", fontsize=9)
    ax.grid(alpha=0.3)
    if by_model:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_paths(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Per-layer paths over training steps (colour = step), two planes side by side.

    Left, the binning paper's: binning I(T; Y) against I(X; T); points where the layer is
    saturated at log N are crosses (no signal there). Right, the variational one: held-out
    H(Y) - CE against the cell's KL bound (log scale), for VIB cells. ``history`` holds
    :class:`~facevib.info.recorder.InfoPlaneRecorder` records.
    """
    plt = _pyplot()
    fig, (ax_bin, ax_vib) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [record["step"] for record in history]
    cmap = plt.get_cmap("viridis")
    low, span = (min(steps), max(1, max(steps) - min(steps))) if steps else (0, 1)
    layers = history[0]["layers"] if history else {}

    def path_of(ax: Any, name: str, k: int, xy: Any, marker: Any) -> None:
        points = [xy(r["layers"][name]) for r in history]
        ax.plot([p[0] for p in points], [p[1] for p in points], color="grey", linewidth=0.6, alpha=0.6)
        for r, (x, y) in zip(history, points, strict=True):
            color = cmap((r["step"] - low) / span)
            ax.scatter(x, y, color=color, marker=marker(r["layers"][name]), s=18, zorder=3)
        ax.annotate(name, points[-1], fontsize=6, textcoords="offset points", xytext=(3, -3 - 2 * k))

    for k, (name, layer) in enumerate(layers.items()):
        if layer["binning"]["i_ty"] is not None:
            path_of(
                ax_bin,
                name,
                k,
                lambda rec: (to_bits(rec["binning"]["i_xt"]), to_bits(rec["binning"]["i_ty"])),
                lambda rec: "x" if rec["binning"]["saturated"] else "o",
            )
        if layer["kl_bound"] is not None:
            path_of(
                ax_vib, name, k, lambda rec: (to_bits(rec["kl_bound"]), to_bits(rec["label_mi_test"])), lambda rec: "o"
            )
    ax_bin.set(xlabel="I(X; T) binning [bits]", ylabel="I(T; Y) binning [bits]")
    ax_bin.set_title("binning paths (colour: step; x: saturated at log N)", fontsize=9)
    ax_vib.set(xlabel="I(Z_i; Z_{i-1}) upper bound, KL [bits]", ylabel="I(Z; Y) lower bound, held-out [bits]")
    ax_vib.set_title("VIB-cell paths (colour: step)", fontsize=9)
    if any(layer["kl_bound"] is not None for layer in layers.values()):
        ax_vib.set_xscale("log")
    for ax in (ax_bin, ax_vib):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
