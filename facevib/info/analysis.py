"""What ``eval/infoplane.py`` does: measure checkpoints' information planes, write JSON + PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from facevib.info.entropy import to_bits
from facevib.info.plane import InfoPlane, Samples, measure_plane
from facevib.info.plots import plot_depth, plot_plane

__all__ = ["analyze_checkpoints", "default_device", "format_table"]


def analyze_checkpoints(
    checkpoints: Sequence[str | Path],
    train: Samples,
    test: Samples,
    out_dir: str | Path,
    *,
    data_description: str = "",
    device: str = "cpu",
    batch_size: int = 128,
    bin_size: float = 0.67,
    jsd_steps: int = 0,
    kernel_noise_var: float | None = None,
) -> tuple[list[InfoPlane], dict[str, Path]]:
    """Load each checkpoint (``facevib.models.load_backbone``), measure it, write the outputs.

    Writes ``infoplane.json`` (every layer of every model, nats and bits of the plotted
    values), ``infoplane_depth.png`` (Fig. 6 style) and, with two or more models,
    ``infoplane_beta.png`` (Fig. 5 style) to ``out_dir``.

    Raises:
        FileNotFoundError / ValueError: from loading a checkpoint (naming it) or measuring.
    """
    from facevib.models import load_backbone

    planes: list[InfoPlane] = []
    records: list[dict[str, Any]] = []
    for checkpoint in checkpoints:
        model = load_backbone(checkpoint).to(device)
        try:
            plane = measure_plane(
                model,
                train,
                test,
                batch_size=batch_size,
                bin_size=bin_size,
                jsd_steps=jsd_steps,
                kernel_noise_var=kernel_noise_var,
            )
        except ValueError as err:
            raise ValueError(f"{checkpoint}: {err}") from err
        planes.append(plane)
        records.append({"checkpoint": str(checkpoint), **plane.to_dict()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "infoplane.json", "depth": plot_depth(planes, out / "infoplane_depth.png")}
    if len(planes) >= 2:
        files["plane"] = plot_plane(planes, out / "infoplane_beta.png")
    payload = {"units": "nats", "data": data_description, "bin_size": bin_size, "models": records}
    files["json"].write_text(json.dumps(payload, indent=1) + "\n")
    return planes, files


def format_table(planes: Sequence[InfoPlane]) -> str:
    """Per-layer table in bits: KL bound, I(Z;Y) train / held-out, binning I(X;T), saturation."""
    with_jsd = any(layer.jsd_prev is not None for plane in planes for layer in plane.layers)
    head = f"{'model':<24} {'layer':<12} {'KL bound':>10} {'I(Z;Y) tr':>10} {'I(Z;Y) te':>10} {'bin I(X;T)':>10}"
    with_kernel = any(layer.kernel is not None for plane in planes for layer in plane.layers)
    lines = [head + (f" {'JSD prev':>9}" if with_jsd else "") + (f" {'kernel I(X;T)':>15}" if with_kernel else "")]
    for plane in planes:
        label = plane.model if plane.beta is None else f"{plane.model} b={plane.beta:g}"
        for layer in plane.layers:
            kl = "-" if layer.kl_bound is None else f"{to_bits(layer.kl_bound):.2f}"
            sat = " sat" if layer.binning.saturated else ""
            row = (
                f"{label:<24} {layer.name:<12} {kl:>10} {to_bits(layer.label_mi_train):>10.3f} "
                f"{to_bits(layer.label_mi_test):>10.3f} {to_bits(layer.binning.i_xt):>10.2f}"
            )
            if with_jsd:
                row += f" {'-' if layer.jsd_prev is None else f'{to_bits(layer.jsd_prev):.3f}':>9}"
            if with_kernel:
                k = layer.kernel
                row += f" {'-' if k is None else f'{to_bits(k.lower):.2f}-{to_bits(k.upper):.2f}':>15}"
            lines.append(row + sat)
    lines.append(f"(bits; H(Y) held-out = {to_bits(planes[0].h_y):.3f}; 'sat' = binning at log N, no signal)")
    return "\n".join(lines)


def default_device() -> str:
    """``cuda`` when available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
