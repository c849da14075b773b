"""Which per-face quality score predicts verification errors: error-versus-discard curves, one command.

From nothing (or from ``--checkpoint``): render a synthetic training set, train a small cellVIB
r18 on it (``configs/synthetic_r18_cellvib.py``), fit the PFE and CR-FIQA heads on its frozen
embeddings of the TRAINING identities, then render held-out identities (the ``quality`` split
of :mod:`facevib.synth.nuisance`: clean photos plus blur, noise, occlusion, pose and low
resolution at 3 levels each), score every pair and draw, per candidate of
:mod:`facevib.quality.scores`, FNMR versus the fraction of lowest-quality genuine pairs
discarded (:mod:`facevib.quality.curves`: threshold fixed at FMR 1e-3 on the full set first,
pair quality = the lower of the two faces').

Winner rule: a candidate beats random discard when its area gain over random (the expected
flat curve) is at least ``--sigmas`` (4) bootstrap standard errors of that gain (identities
resampled, paired with random); among those, the lowest area wins. No winner is a result.

Writes ``--out`` (JSON: curves, areas, standard errors, head checks, per-nuisance quality) and
``quality_heads.pt`` beside it: every candidate's head weights and calibration quantiles, the
file ``python -m facevib.export --quality NAME --quality-file ...`` reads.

    python benchmarks/quality.py --work runs/quality --out runs/quality/quality.json
    python benchmarks/quality.py --tiny --work /tmp/q --out /tmp/q/quality.json   # the test's run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facevib.data.datasets import MXFaceDataset
from facevib.engine.checkpoint import latest_checkpoint
from facevib.eval.verification import l2_normalize
from facevib.models import load_backbone
from facevib.quality.curves import AREA_LIMIT, DISCARD_GRID, bootstrap_areas, threshold_at_fmr
from facevib.quality.features import embed_faces
from facevib.quality.heads import constant_objective, improvement, objective, split_by_identity, train_head
from facevib.quality.scale import quantile_knots
from facevib.quality.scores import CANDIDATES, candidate_scores
from facevib.quality.testset import render_test_set, score_pairs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic_r18_cellvib.py"
HEADS_FILE = "quality_heads.pt"
# (train identities, images each, steps, test identities, bootstrap resamples, head epochs, model overrides)
SIZES = {
    "full": (200, 16, 160, 200, 200, 30, ()),
    "tiny": (10, 4, 6, 8, 20, 3, ("model.kwargs.layers=(1, 1, 1, 1)", "model.kwargs.widths=(8, 8, 16, 16)")),
}


def train_model(work: Path, size: str, seed: int) -> Path:
    """Render the training set into ``work/train`` and train into ``work/run``; returns the run folder."""
    from facevib.synth import write_synthetic_dataset
    from facevib.train import main as train_main

    identities, per_identity, steps, _, _, _, model = SIZES[size]
    data, run = work / "train", work / "run"
    write_synthetic_dataset(
        data,
        identities=identities,
        images_per_identity=per_identity,
        seed=seed,
        lfw_identities=0,
        cfp_fp_identities=0,
        agedb_30_identities=0,
        ijb_identities=0,
        workers=1,
    )
    overrides = [
        f"data.rec={data}",
        "data.val_targets=[]",
        "data.num_workers=0",
        "run.epochs=0",
        f"run.total_steps={steps}",
        f"run.output={run}",
        "run.device=cpu",
        "run.log_every=50",
        f"run.checkpoint_every={steps}",
        "schedule.warmup_steps=2" if size == "tiny" else "schedule.warmup_steps=20",
        *model,
    ]
    argv = [str(CONFIG), *[arg for item in overrides for arg in ("--set", item)]]
    if train_main(argv) != 0:
        raise RuntimeError(f"training into {run} failed (see its output above)")
    return run


def class_centres(run: Path) -> np.ndarray:
    """The Partial FC weight (classes, D) of the run's latest checkpoint, read by torch's DCP converter."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        raise FileNotFoundError(f"{run}: no checkpoint_* folder (the CR-FIQA head needs the Partial FC centres)")
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(checkpoint / "partial_fc", Path(tmp) / "pfc.pt")
        return torch.load(Path(tmp) / "pfc.pt")["weight"].float().numpy()


def fit_heads(
    model, train_data: Path, centres: np.ndarray, seed: int, epochs: int
) -> tuple[dict, dict, np.ndarray, Any]:
    """Heads fitted on 80% of the training identities, their own objective on the other 20%, and
    the training faces' features (the calibration set of the [0, 1] scale)."""
    dataset = MXFaceDataset(train_data, train=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = dataset.labels.copy()
    features = embed_faces(model, images)
    fit, check = split_by_identity(labels, 0.2, seed)
    x, y, w = torch.from_numpy(features.embedding), torch.from_numpy(labels), torch.from_numpy(centres)
    heads, checks = {}, {}
    for name in ("pfe", "cr_fiqa"):
        head = train_head(name, features.embedding[fit], labels[fit], centres=centres, seed=seed, epochs=epochs)
        losses = objective(head, x[check], y[check], w)
        baseline = constant_objective(name, (x[fit], y[fit]), (x[check], y[check]), w)
        gain, se = improvement(losses, baseline)
        checks[name] = {
            "heldout_loss": float(losses.mean()),
            "constant_loss": float(baseline.mean()),
            "gain": gain,
            "gain_se": se,
            "items": int(losses.numel()),
        }
        heads[name] = head
    return heads, checks, labels, features


def quality_by_condition(scores: dict[str, np.ndarray], knots: dict[str, np.ndarray], test) -> dict[str, Any]:
    """Mean quality on the [0, 1] scale per (nuisance, level), per candidate."""
    out: dict[str, Any] = {}
    for name, raw in scores.items():
        scaled = np.interp(raw, knots[name], np.linspace(0, 1, len(knots[name])))
        out[name] = {
            f"{nuisance}{level}": float(scaled[(test.nuisance == nuisance) & (test.level == level)].mean())
            for nuisance, level in sorted(set(zip(test.nuisance.tolist(), test.level.tolist(), strict=True)))
        }
    return out


def choose_winner(results: dict[str, Any], sigmas: float) -> str | None:
    """The lowest-area candidate whose gain over random is >= ``sigmas`` standard errors, or None."""
    passing = [
        name
        for name, r in results.items()
        if name != "random" and r["gain_se"] > 0 and r["gain_over_random"] >= sigmas * r["gain_se"]
    ]
    return min(passing, key=lambda name: results[name]["area"]) if passing else None


def _table(results: dict[str, Any], winner: str | None, sigmas: float) -> str:
    marks = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]
    columns = [int(round(m * 100)) for m in marks]
    head = f"{'candidate':<12}{'area':>9}{'+-se':>9}{'gain/se':>9}" + "".join(f"{f'F@{c}%':>9}" for c in columns)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        ratio = r["gain_over_random"] / r["gain_se"] if r["gain_se"] > 0 else float("nan")
        curve = np.asarray(r["curve"])
        cells = "".join(f"{curve[int(np.argmin(np.abs(DISCARD_GRID - m)))]:>9.4f}" for m in marks)
        lines.append(f"{name:<12}{r['area']:>9.5f}{r['area_se']:>9.5f}{ratio:>9.1f}{cells}")
    lines.append(
        f"area = integral of FNMR over discard 0..{AREA_LIMIT:g}; F@k% = FNMR with k% lowest pairs discarded; "
        f"winner rule: gain over random >= {sigmas:g} se -> {winner or 'none'}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the training set, the run and the heads")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (quality_heads.pt is written beside it)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained run folder to use instead of training")
    parser.add_argument("--train-data", type=Path, default=None, help="the training set of --checkpoint (train.rec)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run for the test suite")
    parser.add_argument("--identities", type=int, default=None, help="held-out test identities (default by size)")
    parser.add_argument("--clean-photos", type=int, default=None, help="clean photos per test identity (3; tiny 2)")
    parser.add_argument("--fmr", type=float, default=1e-3, help="FMR of the fixed threshold")
    parser.add_argument("--sigmas", type=float, default=4.0, help="standard errors a winner must beat random by")
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default by size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) != (args.train_data is None):
        parser.error("--checkpoint and --train-data go together (the heads train on the checkpoint's training set)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = "tiny" if args.tiny else "full"
    _, _, _, test_identities, resamples, head_epochs, _ = SIZES[size]
    test_identities = args.identities or test_identities
    resamples = args.resamples or resamples
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        run = args.checkpoint or train_model(args.work, size, args.seed)
        train_data = args.train_data or args.work / "train"
        model = load_backbone(run / "backbone.pt")
        centres = class_centres(run)
    except (FileNotFoundError, ValueError) as err:
        print(f"quality.py: error: {err}", file=sys.stderr)
        return 2
    heads, head_checks, _, train_features = fit_heads(model, train_data, centres, args.seed, head_epochs)
    betas = model.betas.double().numpy()
    train_scores = candidate_scores(train_features, betas, heads, args.seed)
    knots = {name: quantile_knots(values) for name, values in train_scores.items()}

    test = render_test_set(args.seed, test_identities, args.clean_photos or (2 if args.tiny else 3))
    features = embed_faces(model, test.images)
    scores = candidate_scores(features, betas, heads, args.seed + 1)
    pairs, genuine, impostor = score_pairs(l2_normalize(features.embedding), test.identity)
    threshold = threshold_at_fmr(impostor, args.fmr)
    # Ties (none expected for continuous scores) fall in a random order, not the render order.
    shuffle = np.random.default_rng(args.seed + 2).permutation(len(pairs))
    pairs, genuine = pairs[shuffle], genuine[shuffle]
    pair_quality = {name: np.minimum(s[pairs[:, 0]], s[pairs[:, 1]]) for name, s in scores.items()}
    curves = bootstrap_areas(
        genuine, test.identity[pairs[:, 0]], pair_quality, threshold, resamples=resamples, seed=args.seed
    )
    results = {
        name: {
            "curve": c.curve.tolist(),
            "area": c.area,
            "area_se": c.area_se,
            "gain_over_random": c.gain_over_random,
            "gain_se": c.gain_se,
        }
        for name, c in curves.items()
    }
    winner = choose_winner(results, args.sigmas)
    print(
        f"{model.name}: {len(test.images)} held-out faces of {test_identities} identities, {len(genuine)} genuine / "
        f"{len(impostor)} impostor pairs, threshold {threshold:.4f} at FMR {args.fmr:g}, FNMR {np.mean(genuine <= threshold):.4f}"
    )
    print(_table(results, winner, args.sigmas))
    for name, check in head_checks.items():
        print(
            f"head {name}: own loss on held-out training identities {check['heldout_loss']:.5f} vs constant "
            f"{check['constant_loss']:.5f} (gain {check['gain']:.5f} +- {check['gain_se']:.5f}, {check['items']} items)"
        )
    heads_path = args.out.parent / HEADS_FILE
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "winner": winner,
            "embedding_dim": int(model.embedding_dim),
            "heads": {name: head.state_dict() for name, head in heads.items()},
            "knots": {name: torch.from_numpy(k) for name, k in knots.items() if name in CANDIDATES},
            "calibration": f"{len(train_features.embedding)} training faces of {train_data}",
            "model": str(run / "backbone.pt"),
        },
        heads_path,
    )
    report = {
        "command": " ".join(["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": str(run / "backbone.pt"),
        "model_name": model.name,
        "test": {
            "identities": test_identities,
            "faces": len(test.images),
            "genuine_pairs": len(genuine),
            "impostor_pairs": len(impostor),
        },
        "fmr": args.fmr,
        "threshold": threshold,
        "fnmr_full": float(np.mean(genuine <= threshold)),
        "grid": DISCARD_GRID.tolist(),
        "area_limit": AREA_LIMIT,
        "resamples": resamples,
        "sigmas": args.sigmas,
        "winner": winner,
        "candidates": results,
        "head_checks": head_checks,
        "quality_by_condition": quality_by_condition(scores, knots, test),
        "heads_file": str(heads_path),
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} and {heads_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
