"""Evaluation output: plain-text tables, JSON files and ROC plots.

matplotlib is imported only when a plot is drawn, and through its object-oriented API with
the Agg canvas, so no global backend is switched and no display is needed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_table", "verification_table", "ijb_table", "write_json", "save_roc_png"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}"


def verification_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per verification set: accuracy mean +- std, TAR@FAR, norms."""
    rows = []
    for name, r in results.items():
        tar = _percent(r["tar_at_far"]) + ("" if r["far_resolved"] else " (*)")
        rows.append(
            [
                name,
                r["pairs"],
                f"{_percent(r['accuracy'])} +- {_percent(r['accuracy_std'])}",
                tar,
                f"{r['embedding_norm']:.3f}",
                f"{r['xnorm']:.3f}" if "xnorm" in r else "-",
            ]
        )
    far = next(iter(results.values()))["far"] if results else 1e-3
    table = format_table(["set", "pairs", "accuracy %", f"TAR@FAR={far:g} %", "norm(img+flip)", "xnorm"], rows)
    if any(not r["far_resolved"] for r in results.values()):
        table += f"\n(*) fewer than {1 / far:g} impostor pairs: FAR {far:g} not resolved, TAR taken at FAR 0"
    return table


def ijb_table(summary: Mapping[str, Any]) -> str:
    """TPR (%) at each FPR, exact and nearest-ROC-point rows, plus 1:N when present."""
    exact = summary["tpr_at_fpr"]["exact"]
    nearest = summary["tpr_at_fpr"]["nearest_roc_point"]
    headers = ["TPR % @ FPR"] + [f"{p['target_fpr']:.0e}" for p in exact]
    rows = [
        [f"{summary['target']} exact"] + [_percent(p["tpr"]) + ("" if p["resolved"] else "*") for p in exact],
        [f"{summary['target']} nearest ROC point"] + [_percent(p["tpr"]) for p in nearest],
    ]
    text = format_table(headers, rows)
    if any(not p["resolved"] for p in exact):
        text += f"\n* fewer than 1/FPR impostor pairs ({summary['impostor']}): TPR taken at FPR 0"
    one_to_n = summary.get("one_to_n")
    if one_to_n:
        fpirs = [p["fpir"] for p in one_to_n["mean"]["tpir_at_fpir"]]
        ranks = [k for k in one_to_n["mean"] if k.startswith("rank_")]
        rows = []
        for name, r in one_to_n.items():
            points = {p["fpir"]: p["tpir"] for p in r["tpir_at_fpir"]}
            rows.append([name] + [_percent(r.get(k)) for k in ranks] + [_percent(points.get(f)) for f in fpirs])
        headers = ["1:N gallery"] + [k.replace("_", "-") + " %" for k in ranks]
        headers += [f"TPIR@FPIR={f:g} %" for f in fpirs]
        text += "\n\n" + format_table(headers, rows)
    return text


def _jsonable(value: Any) -> Any:
    """Plain Python values; non-finite floats become strings ("-inf"), which JSON lacks."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def save_roc_png(
    path: str | os.PathLike,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str = "ROC",
    fprs: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
) -> Path:
    """Plot ROC curves (log FPR axis over ``fprs``' range) to a PNG file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (fpr, tpr) in curves.items():
        positive = fpr > 0  # a log axis cannot show FPR 0
        axes.plot(fpr[positive], tpr[positive], lw=1, label=label)
    axes.set_xscale("log")
    axes.set_xlim(min(fprs), max(fprs))
    axes.set_ylim(0.0, 1.0)
    axes.set_xticks(list(fprs))
    axes.grid(linestyle="--", linewidth=0.5)
    axes.set_xlabel("False Positive Rate")
    axes.set_ylabel("True Positive Rate")
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.savefig(path, format="png")
    return path
