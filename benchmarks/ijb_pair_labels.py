"""Single-image calibration of an IJB folder without its 1:N files: identities derived from the pair labels.

For an exported model and an IJB-B/C folder that has its 1:N files, the images are read twice:
with the 1:N files' subjects, and from a view of the folder without them, where the identities
are the connected components of the genuine template pairs
(:func:`facevib.export.labelled.template_pair_identities`). It reports how the two labellings
agree (identities, subjects split or merged) and the single-image threshold at the target FPR
under each, over ``--seeds`` random identity splits, with the derived threshold's FPR counted
on the held-out half with the 1:N subjects as the truth. Printed as a table, written as JSON.

    python benchmarks/ijb_pair_labels.py --model r18_random.onnx --data /tmp/syn60/IJBC --target-fpr 1e-3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from facevib.eval.embed import Embedder
from facevib.eval.roc import tpr_at_fpr
from facevib.export.calibrate import embed_single, identity_pair_scores, split_halves
from facevib.export.labelled import read_labelled_images


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported .onnx file")
    parser.add_argument("--data", required=True, help="an IJB-C folder with its 1:N files (the IJBC folder itself)")
    parser.add_argument("--target-fpr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=8, help="random identity splits per labelling")
    parser.add_argument("--images", type=int, default=4000, help="images read (whole identities)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="JSON file to write")
    return parser


def _without_1n(data: Path, folder: Path) -> Path:
    """A view of ``data`` (symlinks) without its 1:N gallery and probe files."""
    view = folder / data.name
    (view / "meta").mkdir(parents=True)
    (view / "loose_crop").symlink_to((data / "loose_crop").resolve())
    for path in (data / "meta").iterdir():
        if "_1N_" not in path.name:
            (view / "meta" / path.name).symlink_to(path.resolve())
    return view


def _threshold(unit: np.ndarray, identities: np.ndarray, members: np.ndarray, target: float) -> float:
    rows = np.flatnonzero(np.isin(identities, members))
    (point,) = tpr_at_fpr(*identity_pair_scores(unit[rows], identities[rows]), [target])
    return float(point.threshold)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = Path(args.data)
    truth = read_labelled_images(data, max_images=args.images)
    with tempfile.TemporaryDirectory() as folder:
        derived = read_labelled_images(_without_1n(data, Path(folder)), max_images=args.images)
    if not np.array_equal(truth.images, derived.images):
        print("the two readings sampled different images: raise --images above the folder's size", file=sys.stderr)
        return 2
    pairs = set(zip(derived.identities.tolist(), truth.identities.tolist(), strict=True))
    agreement = {
        "images": int(len(truth.images)),
        "subjects": int(np.unique(truth.identities).size),
        "derived_identities": int(np.unique(derived.identities).size),
        "derived_identities_with_several_subjects": sum(
            1 for d in {d for d, _ in pairs} if sum(1 for a, _ in pairs if a == d) > 1
        ),
        "subjects_split_over_several_identities": sum(
            1 for s in {s for _, s in pairs} if sum(1 for _, b in pairs if b == s) > 1
        ),
        "derived_source": derived.source,
    }
    unit = embed_single(Embedder.from_onnx(args.model, device=args.device), truth.images, progress=False)
    rows: dict[str, list[float]] = {"1:N subjects": [], "derived from pair labels": []}
    held_fpr = []
    for seed in range(args.seeds):
        for name, identities in (("1:N subjects", truth.identities), ("derived from pair labels", derived.identities)):
            first, second = split_halves(np.unique(identities), seed)
            rows[name].append(_threshold(unit, identities, first, args.target_fpr))
        # The derived threshold on the held-out derived half, judged with the 1:N subjects.
        held = np.flatnonzero(np.isin(derived.identities, second))
        scores, same = identity_pair_scores(unit[held], truth.identities[held])
        held_fpr.append(float(np.mean(scores[~same] > rows["derived from pair labels"][-1])))
    print(json.dumps(agreement, indent=1))
    print(f"\nthreshold at target FPR {args.target_fpr:g} over {args.seeds} identity splits")
    print(f"{'labelling':<26} {'seed 0':>9} {'mean':>9} {'sd':>9}")
    for name, values in rows.items():
        print(f"{name:<26} {values[0]:>9.5f} {np.mean(values):>9.5f} {np.std(values, ddof=1):>9.5f}")
    print(f"derived threshold's held-out FPR (1:N truth): mean {np.mean(held_fpr):.3g} over the splits")
    if args.out:
        result = {"agreement": agreement, "thresholds": rows, "derived_held_out_fpr": held_fpr, "args": vars(args)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
