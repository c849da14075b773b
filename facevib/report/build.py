"""The comparison report: models trained and evaluated by the entry points, side by side.

:func:`write_report` reads run folders (:mod:`facevib.report.runs`), draws the figures
(:mod:`facevib.report.plots`), measures the cells of VIB models on held-out images
(:mod:`facevib.report.cells`), adds the exported model's metadata and an HTTP transcript
(:mod:`facevib.report.exchange`) when given, and writes ``REPORT.md`` and ``report.html``
with the same content (:mod:`facevib.report.document`). Nothing here trains or evaluates a
model: every number comes from a file an entry point wrote, so the report can be rebuilt
after any one step is rerun.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facevib.report import plots
from facevib.report.document import Block, Bullets, Code, Heading, Image, Paragraph, Table, write
from facevib.report.runs import RunResults
from facevib.report.stats import accuracy_interval, paired_difference, wilson_interval

__all__ = ["ReportInputs", "build_blocks", "write_report"]

_TABLE_FPRS = (1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class ReportInputs:
    """What the report is about. Only ``runs`` and ``out`` are required.

    Args:
        runs: the trained models, in table order (the first is the one exported and served).
        out: the folder of ``REPORT.md``, ``report.html`` and ``plots/``.
        data: the data folder (its ``synth.json``, when there is one, describes a synthetic set).
            The ROC curves are re-scored from each run's IJB feature cache and the protocol
            folder recorded in its ``ijbc.json``.
        onnx: the exported model, whose metadata (outputs, calibration) is reported.
        exchange: the transcript written by ``serve/exchange.py``.
        started_at: UNIX time the pipeline started (the report states the elapsed time).
        commands: the commands that produced the runs, shown verbatim.
    """

    runs: Sequence[RunResults]
    out: Path
    data: Path | None = None
    onnx: Path | None = None
    exchange: dict[str, Any] | None = None
    started_at: float | None = None
    commands: Sequence[str] = ()


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}"


def _interval(low: float, high: float) -> str:
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def _accuracy_cell(result: dict[str, Any] | None) -> str:
    if not result:
        return "-"
    (low, high), source = accuracy_interval(result["fold_accuracies"], result["pairs"])
    mark = "" if source == "folds" else " (p)"
    return f"{_pct(result['accuracy'])} ± {_pct(result['accuracy_std'])} {_interval(low, high)}{mark}"


def _tpr_point(summary: dict[str, Any] | None, fpr: float) -> dict[str, Any] | None:
    if not summary:
        return None
    for point in summary["tpr_at_fpr"]["exact"]:
        if math.isclose(point["target_fpr"], fpr, rel_tol=1e-9):
            return point
    return None


def _tpr_cell(summary: dict[str, Any] | None, fpr: float) -> str:
    point = _tpr_point(summary, fpr)
    if point is None:
        return "-"
    hits = int(round(point["tpr"] * point["genuine"]))
    low, high = wilson_interval(hits, point["genuine"])
    flag = "" if point["resolved"] else " (not resolved)"
    return f"{_pct(point['tpr'])} {_interval(low, high)}{flag}"


_BIN_ORDER = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")  # the order papers print them in


def _bin_names(runs: Sequence[RunResults]) -> list[str]:
    names = {n for run in runs for n in run.verification}
    return sorted(names, key=lambda n: (_BIN_ORDER.index(n) if n in _BIN_ORDER else len(_BIN_ORDER), n))


def _results_table(runs: Sequence[RunResults]) -> Table:
    fused = [run for run in runs if run.ijb_fusion]
    headers = ["set", "pairs (genuine / impostor)"]
    for run in runs:
        headers.append(run.label)
        if run in fused:
            headers.append(f"{run.label} + uncertainty fusion")
    rows: list[list[str]] = []
    for name in _bin_names(runs):
        first = next(run.verification[name] for run in runs if name in run.verification)
        row = [f"{name} accuracy %", f"{first['pairs']} ({first['genuine']} / {first['impostor']})"]
        for run in runs:
            row.append(_accuracy_cell(run.verification.get(name)))
            if run in fused:
                row.append("-")
        rows.append(row)
    ijb_first = next((run.ijb for run in runs if run.ijb), None)
    if ijb_first:
        target = ijb_first["target"]
        for fpr in _TABLE_FPRS:
            row = [
                f"{target} TPR % @ FPR={fpr:g}",
                f"{ijb_first['pairs']} ({ijb_first['genuine']} / {ijb_first['impostor']})",
            ]
            for run in runs:
                row.append(_tpr_cell(run.ijb, fpr))
                if run in fused:
                    row.append(_tpr_cell(run.ijb_fusion, fpr))
            rows.append(row)
    note = (
        "Accuracy: insightface's 10-fold protocol (threshold chosen on 9 folds, accuracy on the 10th), "
        "mean ± std over the folds, then a 95% interval in brackets: the Student-t interval of the mean over "
        "the identity-disjoint folds, which accounts for pairs sharing people and photos, or, marked (p), the "
        "Wilson interval over the pairs when that one is wider. "
        "TPR: exact threshold from the sorted impostor scores (accept iff cosine > threshold), "
        "95% Wilson interval over the genuine pairs (these share subjects, so read it as the least noise); "
        "'not resolved' means fewer than 1/FPR impostor pairs, so the threshold is the largest impostor "
        "score (FPR 0)."
    )
    return Table(headers, rows, note)


def _difference_lines(runs: Sequence[RunResults]) -> list[str]:
    """How far apart the first two models are: a paired interval over the folds per set."""
    if len(runs) < 2:
        return []
    a, b = runs[0], runs[1]
    lines = []
    for name in _bin_names(runs):
        ra, rb = a.verification.get(name), b.verification.get(name)
        if not (ra and rb) or ra["pairs"] != rb["pairs"]:
            continue
        mean, low, high = paired_difference(ra["fold_accuracies"], rb["fold_accuracies"])
        verdict = (
            "the interval holds 0: not told apart on this set"
            if low <= 0.0 <= high
            else f"{a.label if mean > 0 else b.label} is better on this set"
        )
        lines.append(
            f"{name}: {a.label} - {b.label} = {100 * mean:+.2f} points, 95% interval "
            f"[{100 * low:+.2f}, {100 * high:+.2f}] (paired over the same {len(ra['fold_accuracies'])} folds); {verdict}."
        )
    pa, pb = _tpr_point(a.ijb, 1e-4), _tpr_point(b.ijb, 1e-4)
    if pa and pb:
        lines.append(
            f"{a.ijb['target']} TPR@FPR=1e-4: {a.label} {_pct(pa['tpr'])}% vs {b.label} {_pct(pb['tpr'])}% "
            f"({100 * (pa['tpr'] - pb['tpr']):+.2f} points) on {pa['genuine']} genuine and {pa['impostors']} impostor pairs."
        )
    return lines


def _training_table(runs: Sequence[RunResults]) -> Table:
    rows = []
    for run in runs:
        cfg, last = run.config, (run.train[-1] if run.train else {})
        world = last.get("world_size") or cfg.get("run", {}).get("world_size")
        batch = cfg.get("data", {}).get("batch_size")
        rows.append(
            [
                run.label,
                f"`{run.model_name}`",
                str(run.steps),
                f"{batch} per rank" + (f" x {world}" if world else ""),
                f"{run.train_seconds():.0f} s",
                f"{last.get('samples_per_s', 0):.1f}",
                f"{last.get('margin_loss', float('nan')):.3f}",
                f"{last.get('kl_loss', 0.0):.3f}",
            ]
        )
    headers = [
        "model",
        "network",
        "steps",
        "batch",
        "time (logged steps)",
        "samples/s",
        "final margin loss",
        "final beta*KL",
    ]
    return Table(headers, rows)


def _kl_section(run: RunResults, out: Path, heldout_images: np.ndarray | None) -> list[Block]:
    """Per-cell KL against depth: logged during training, plus held-out when images are given."""
    from facevib.report.cells import cell_statistics

    logged = [r for r in run.train if r.get("kl_cells")]
    if not logged or not run.backbone.is_file() or heldout_images is None:
        return []
    stats = cell_statistics(run.backbone, heldout_images)
    picks = sorted({0, len(logged) // 2, len(logged) - 1})
    kl_by_step = {int(logged[i]["step"]): logged[i]["kl_cells"] for i in picks}
    path = plots.kl_per_cell(
        out / "plots" / "kl_per_cell.png", kl_by_step, stats.elements, stats.betas, run.label, stats.heldout_kl
    )
    first, last = np.asarray(logged[0]["kl_cells"]), np.asarray(logged[-1]["kl_cells"])
    elements = np.asarray(stats.elements, dtype=np.float64)
    heldout = np.asarray(stats.heldout_kl) / elements
    rows = [
        [
            str(i + 1),
            f"{stats.elements[i]:,}",
            f"{stats.betas[i]:.2e}",
            f"{first[i] / elements[i]:.3f}",
            f"{last[i] / elements[i]:.3f}",
            f"{heldout[i]:.3f}",
        ]
        for i in range(len(elements))
    ]
    table = Table(
        [
            "cell",
            "elements (C x H x W)",
            "beta_i",
            f"KL/element, step {int(logged[0]['step'])}",
            f"step {int(logged[-1]['step'])}",
            f"held-out ({stats.images} images)",
        ],
        rows,
    )
    return [
        Heading(f"{run.label}: KL per cell against depth"),
        Paragraph(
            "Each cell adds beta_i KL(N(mu, sigma^2) || N(0, I)), summed over its C x H x W outputs (an upper bound "
            "on the information the cell passes on, in nats). Divided by the element count so that cells of "
            "different sizes compare; a cell still at its initial sigma (softplus(-5)) holds about 5 nats per "
            "element. The trainer logs the per-cell KL (`kl_cells` in `metrics.jsonl`); the last column is "
            "measured here with the trained model in eval mode on held-out images."
        ),
        Image(
            path,
            f"{run.label}: KL per element of each cell (log scale) at three logged training steps (training "
            "batches, sampled cells) and on held-out images (dashed); grey bars: beta_i",
        ),
        table,
    ]


def _roc_section(runs: Sequence[RunResults], out: Path) -> list[Block]:
    """ROC curves of every model's IJB protocol (and of uncertainty fusion), re-scored from the
    feature caches ``eval/ijb.py`` wrote (no network runs here)."""
    from facevib.data.ijb import read_ijb
    from facevib.eval.ijb import evaluate_ijb, load_features

    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    styles: dict[str, str] = {}
    target = None
    for run in runs:
        if run.features is None:
            continue
        target = run.ijb["target"]
        ijb = read_ijb(Path(run.ijb["data_root"]), target, require_images=False)
        features = load_features(run.features)
        result = evaluate_ijb(ijb, features)
        curves[f"{run.label} (detector score)"] = (result.fpr, result.tpr)
        if run.ijb_fusion and features.uncertainty is not None:
            fused = evaluate_ijb(ijb, features, uncertainty_fusion=True)
            label = f"{run.label} + uncertainty fusion"
            curves[label] = (fused.fpr, fused.tpr)
            styles[label] = "--"
    if not curves:
        return []
    path = plots.roc_curves(out / "plots" / "roc.png", curves, f"{target} 1:1 verification ROC", styles=styles)
    return [
        Heading("ROC curves"),
        Image(path, f"{target} 1:1 ROC of every model, template pairs scored by cosine; dotted line: FPR 1e-4"),
    ]


def _embed_answer(result: dict[str, Any], photo: dict[str, Any]) -> str:
    """One /v1/embed answer in words (the detected face compared with the landmark one)."""
    if result.get("status") != "ok":
        return f"{result.get('status')}: {result.get('error', {}).get('message', '')}"
    face = result["faces"][0]
    what = f"ok: {photo['dimensions']}-d embedding, norm {face['norm']:.3f}"
    if face.get("uncertainty") is not None:
        what += f", uncertainty {face['uncertainty']:.4f}"
    detected = photo.get("detected")
    if face.get("det_score") is not None and detected:
        what += (
            f"; {detected['detector']} found the face (score {face['det_score']:.3f}), cosine "
            f"{detected['cosine_to_given_landmarks']:.4f} to the embedding from the given landmarks"
        )
    return what


def _calibration_text(calibration: dict[str, Any]) -> str:
    """The shipped threshold, the score it is for, and its rates on held-out identities."""
    protocol = calibration.get("protocol", "template")
    text = (
        f"Calibrated threshold ({protocol.replace('_', '-')} scores): cosine > {calibration['threshold']:.4f} for "
        f"target FPR {calibration['target_fpr']:g} (FPR {calibration['fpr']:.2e}, TPR {_pct(calibration['tpr'])}% on "
        f"{calibration['impostor_pairs']} impostor / {calibration['genuine_pairs']} genuine calibration pairs; "
        f"{calibration['source']})."
    )
    held = calibration.get("holdout")
    if held:
        fpr_low, fpr_high = held["fpr_interval"]
        tpr_low, tpr_high = held["tpr_interval"]
        people = f"{held['identities']} held-out identities" if held["identities"] else "the held-out half of the pairs"
        text += (
            f" On {people} the same threshold gives FPR {held['fpr']:.2e} (95% Wilson [{fpr_low:.1e}, {fpr_high:.1e}], "
            f"{held['false_accepts']} of {held['impostor_pairs']} impostor pairs) and TPR {_pct(held['tpr'])}% "
            f"([{_pct(tpr_low)}, {_pct(tpr_high)}]%, {held['genuine_pairs']} genuine pairs)."
        )
    if protocol != "single_image":
        text += " `/v1/verify` does not apply a template threshold to single-image scores."
    return text


def _exchange_section(inputs: ReportInputs) -> list[Block]:
    blocks: list[Block] = [Heading("The exported model, served")]
    if inputs.onnx is not None and inputs.onnx.is_file():
        from facevib.export import read_onnx_metadata

        meta = read_onnx_metadata(inputs.onnx).as_dict()
        calibration = meta.get("calibration") or {}
        text = (
            f"`{inputs.onnx}` ({inputs.onnx.stat().st_size / 1e6:.1f} MB): model `{meta.get('model_name')}`, "
            f"outputs {', '.join(f'`{o}`' for o in meta.get('outputs', []))}, embedding size {meta.get('embedding_dim')}."
        )
        if calibration:
            text += " " + _calibration_text(calibration)
        blocks.append(Paragraph(text))
    exchange = inputs.exchange
    if not exchange:
        return blocks if len(blocks) > 1 else []
    if exchange.get("server_command"):
        blocks.append(Paragraph("Server command (started for the exchange, stopped after it):"))
        blocks.append(Code(" ".join(exchange["server_command"]), "bash"))
    rows = []
    for call in exchange["calls"]:
        response = call["response"]
        sent = " vs ".join(call.get("images", []))
        if call["path"] == "/v1/verify":
            what = (
                f"score {response['score']:+.4f}, threshold {response['threshold']:+.4f} "
                f"({response['threshold_source']}), match {response['match']}"
            )
        elif call["path"] == "/v1/embed":
            what = _embed_answer(response["results"][0], exchange["photo"])
            detection = call["request"]["images"][0].get("aligned") is False
            sent += "" if detection else " with its 5 landmarks"
        elif call["path"] == "/health":
            what = f"{response.get('status')}, model {response.get('model')}"
        else:
            what = "model metadata (outputs, preprocessing, calibration)"
        rows.append([f"{call['method']} {call['path']}", sent, str(call["status"]), f"{call['ms']:.0f}", what])
    blocks.append(Table(["request", "sent", "status", "ms", "answer"], rows))
    calibration = (exchange.get("model") or {}).get("calibration") if isinstance(exchange.get("model"), dict) else None
    if calibration and exchange.get("verify"):
        rates = calibration.get("holdout") or calibration
        where = "on held-out identities" if calibration.get("holdout") else "on the calibration data"
        outcome = ", ".join(
            f"{kind} pair {'accepted' if v['match'] else 'rejected'}" for kind, v in exchange["verify"].items()
        )
        blocks.append(
            Paragraph(
                f"The pairs are the first genuine and the first impostor pair of the protocol file, not chosen by "
                f"result ({outcome}). At the calibrated threshold the model accepts {_pct(rates['tpr'])}% of "
                f"genuine pairs and {rates['fpr']:.1e} of impostor pairs {where}, so a rejected "
                "genuine pair is the expected outcome for most pairs at this training budget."
            )
        )
    verify = next((c for c in exchange["calls"] if c["path"] == "/v1/verify"), None)
    if verify:
        blocks.append(
            Paragraph(f"One exchange in full ({' vs '.join(verify.get('images', []))}; image data abbreviated):")
        )
        blocks.append(
            Code(f"POST /v1/verify\n{_compact_json(verify['request'])}\n\n{_compact_json(verify['response'])}", "json")
        )
    return blocks


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.e+-]+,\s*)*-?[\d.e+-]+)\s*\]")


def _compact_json(value: Any) -> str:
    """Indented JSON with lists of numbers (landmarks) kept on one line."""
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", json.dumps(value, indent=1)
    )


def _synthetic_description(data: Path | None) -> str:
    manifest = data / "synth.json" if data else None
    if not manifest or not manifest.is_file():
        return f"Data: `{data}`." if data else ""
    info = json.loads(manifest.read_text(encoding="utf-8"))
    opts, ids = info["options"], info["identities"]
    text = (
        f"Data: the synthetic identity set in `{data}` (seed {opts['seed']}): {ids['train']} training identities x "
        f"{opts['images_per_identity']} photos in `train.rec`; verification sets from held-out identities, "
        f"{opts['bin_images_per_identity']} photos each, paired 10 folds deep"
    )
    sets = [
        f"`{name}.bin` {opts[f'{name}_pairs']} pairs of {ids[name]} people"
        for name in ("lfw", "cfp_fp", "agedb_30")
        if ids.get(name)
    ]
    text += " (" + ", ".join(sets) + ")" if sets else ""
    if ids.get("ijbc"):
        text += (
            f"; an IJB-C-style folder of {ids['ijbc']} other held-out subjects, one gallery and "
            f"{opts['ijb_templates_per_identity'] - 1} probe templates each, every gallery against every probe."
        )
    return text


def _locations(inputs: ReportInputs) -> Table:
    rows = []
    for run in inputs.runs:
        rows += [
            [
                f"`{run.root}/metrics.jsonl`",
                f"{run.label}: one JSON line per logged step (loss, KL per cell, lr, samples/s)",
            ],
            [
                f"`{run.root}/tensorboard/`",
                f"{run.label}: TensorBoard events (`.venv/bin/tensorboard --logdir {run.root}`)",
            ],
            [f"`{run.root}/checkpoint_*.pt`", f"{run.label}: resumable checkpoints (`--resume latest`)"],
            [f"`{run.root}/backbone.pt`", f"{run.label}: the trained backbone, input of eval/ and export"],
            [f"`{run.root}/config.json`", f"{run.label}: the resolved training config"],
            [
                f"`{run.root}/eval/`",
                f"{run.label}: `verification.json`, `ijbc.json`, `ijbc_features.npz` (feature cache), `ijbc_roc.png`",
            ],
        ]
    if inputs.onnx is not None:
        rows.append(
            [
                f"`{inputs.onnx}`",
                "the exported model (embedding + uncertainty outputs, calibrated threshold in its metadata)",
            ]
        )
    rows.append([f"`{inputs.out}/http_exchange.json`", "the HTTP transcript (and `http_exchange.server.log`)"])
    rows.append([f"`{inputs.out}/plots/`", "the figures of this report"])
    return Table(["path", "what"], rows)


_SCALE_UP = """# training data: MS1MV3 (insightface's faces_emore layout: train.rec, train.idx, property, *.bin)
#   put it anywhere, e.g. data/ms1m-retinaface-t1/, and point the config at it:
.venv/bin/python -m facevib.data inspect data/ms1m-retinaface-t1
.venv/bin/torchrun --nproc_per_node=8 train/arcface.py configs/ms1mv3_r100_cellvib.py \\
    --set data.rec=data/ms1m-retinaface-t1 --set data.val_dir=data/ms1m-retinaface-t1 --output runs/ms1mv3_r100_cellvib
.venv/bin/torchrun --nproc_per_node=8 train/arcface.py configs/ms1mv3_r100_arcface.py \\
    --set data.rec=data/ms1m-retinaface-t1 --set data.val_dir=data/ms1m-retinaface-t1 --output runs/ms1mv3_r100_arcface
# the five verification sets and IJB-C (insightface's IJB_release/IJBC: meta/ + loose_crop/)
.venv/bin/python eval/verification.py --model runs/ms1mv3_r100_cellvib/backbone.pt --data-dir data/ms1m-retinaface-t1 \\
    --out runs/ms1mv3_r100_cellvib/eval
.venv/bin/python eval/ijb.py --target IJBC --data-root data/IJB_release/IJBC --model runs/ms1mv3_r100_cellvib/backbone.pt \\
    --out runs/ms1mv3_r100_cellvib/eval/fusion --features runs/ms1mv3_r100_cellvib/eval/ijbc_features.npz --uncertainty-fusion
.venv/bin/python eval/ijb.py --target IJBC --data-root data/IJB_release/IJBC \\
    --features runs/ms1mv3_r100_cellvib/eval/ijbc_features.npz --out runs/ms1mv3_r100_cellvib/eval
# export with a threshold calibrated on IJB-C at FPR 1e-4, serve, and rebuild this report
.venv/bin/python -m facevib.export runs/ms1mv3_r100_cellvib/backbone.pt --out runs/ms1mv3_r100_cellvib/model.onnx \\
    --uncertainty --calibrate data/IJB_release/IJBC --target-fpr 1e-4
.venv/bin/python serve/app.py --model runs/ms1mv3_r100_cellvib/model.onnx --host 0.0.0.0 --port 8000
.venv/bin/python eval/report.py --run cellVIB=runs/ms1mv3_r100_cellvib --run ArcFace=runs/ms1mv3_r100_arcface \\
    --data data/ms1m-retinaface-t1 --onnx runs/ms1mv3_r100_cellvib/model.onnx --out runs/ms1mv3_report"""


_MEANING = (
    "Accuracy (the five .bin sets): share of pairs classified right by one cosine threshold chosen on the other "
    "folds. Published MS1M models sit at 99.8 (LFW) to ~93 (CPLFW); the synthetic sets are harder per pair "
    "for a model trained minutes on 100 identities, so only the comparison between rows means something here.",
    "TPR@FPR (IJB-B/C 1:1): share of genuine template pairs accepted at the threshold that accepts the given "
    "share of impostor pairs. FPR 1e-4 needs >= 10,000 impostor pairs to be measured at all; IJB-C has 15.7M pairs.",
    "Uncertainty fusion: templates are averaged with image weights detector score x exp(-2 (u - min u)), u the "
    "model's mean log sigma over its last cells; the protocol column (detector score only) is insightface's.",
    "The 95% intervals: with 3,000 pairs an accuracy near 90% is known to about +-1 point; a difference between "
    "two models smaller than that is not evidence either way.",
)


def build_blocks(inputs: ReportInputs, heldout_images: np.ndarray | None = None) -> list[Block]:
    """The report as blocks (see :mod:`facevib.report.document`)."""
    runs = list(inputs.runs)
    out = inputs.out
    labels = " vs ".join(run.label for run in runs)
    blocks: list[Block] = [Heading(f"facevib report: {labels}", 1)]
    intro = []
    if inputs.started_at:
        minutes = (time.time() - inputs.started_at) / 60.0
        intro.append(f"Pipeline wall time up to this report: {minutes:.1f} min.")
    steps = sorted({run.steps for run in runs})
    intro.append(
        "Every model trained with the same budget: "
        + ", ".join(f"{run.label} `{run.model_name}` {run.steps} steps" for run in runs)
        + ("." if len(steps) == 1 else " (budgets differ!).")
    )
    description = _synthetic_description(inputs.data)
    if description:
        intro.append(description)
    blocks.append(Paragraph(" ".join(intro)))
    if inputs.commands:
        blocks.append(Paragraph("Produced by:"))
        blocks.append(Code("\n".join(inputs.commands), "bash"))

    blocks += [Heading("Results"), _results_table(runs)]
    differences = _difference_lines(runs)
    if differences:
        blocks.append(Bullets(differences))

    blocks.append(Heading("Training"))
    curves = plots.training_curves(out / "plots" / "training_curves.png", {run.label: run.train for run in runs})
    blocks += [
        Image(curves, "Training curves: classification loss of every model, and the weighted KL term of VIB models"),
        _training_table(runs),
    ]
    for run in runs:
        if any(r.get("kl_cells") for r in run.train):
            blocks += _kl_section(run, out, heldout_images)
    blocks += _roc_section(runs, out)
    blocks += _exchange_section(inputs)
    blocks += [Heading("Where everything is"), _locations(inputs)]
    blocks += [
        Heading("The same on MS1M and IJB-C"),
        Paragraph("Same entry points, real data (paths are examples; see README.md for the data layout):"),
        Code(_SCALE_UP, "bash"),
        Heading("What the numbers mean"),
        Bullets(list(_MEANING)),
    ]
    return blocks


def write_report(inputs: ReportInputs, heldout_images: np.ndarray | None = None) -> tuple[Path, Path]:
    """Write ``REPORT.md`` and ``report.html`` into ``inputs.out``; returns their paths.

    ``heldout_images``: aligned crops the per-cell KL is measured on (e.g. a .bin set's
    images); without them that column and figure are left out.
    """
    inputs.out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(inputs, heldout_images)
    markdown, page = inputs.out / "REPORT.md", inputs.out / "report.html"
    title = "facevib report: " + " vs ".join(run.label for run in inputs.runs)
    write(blocks, markdown, page, title)
    return markdown, page
