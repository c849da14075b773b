"""What a threshold does to single-image scores: the single-image calibration vs the template one.

For an exported model and an IJB-B/C folder (with its 1:N files): the single-image threshold
(:func:`facevib.export.calibrate`, the default protocol) and the IJB 1:1 template threshold at
the same target FPR, each applied to the **single-image** pairs of the held-out identities
(every pair of images inside the held-out half, one image per side, no flip: what
``/v1/verify`` scores). Printed as a table with 95% Wilson intervals, and written as JSON.

    python benchmarks/calibration.py --model runs/demo/model.onnx --data data/synthetic/IJBC \\
        --target-fpr 1e-3 --out results/calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from facevib.eval.embed import Embedder
from facevib.eval.roc import tpr_at_fpr
from facevib.export.calibrate import calibrate, held_out_rates, identity_split_scores


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported .onnx file")
    parser.add_argument("--data", required=True, help="an IJB-B/C folder with its 1:N files")
    parser.add_argument("--target-fpr", type=float, default=1e-3)
    parser.add_argument("--images", type=int, default=4000, help="images sampled (whole identities)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="JSON file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    embedder = Embedder.from_onnx(args.model, device=args.device)
    split = identity_split_scores(embedder, args.data, max_images=args.images, progress=False)
    (single,) = tpr_at_fpr(*split.calibration, [args.target_fpr])
    template = calibrate(embedder, args.data, args.target_fpr, protocol="template", progress=False)
    rows = {}
    for name, threshold in (("single_image", single.threshold), ("template", template.threshold)):
        rows[name] = {
            "threshold": float(threshold),
            **asdict(held_out_rates(*split.held_out, threshold, split.identities[1])),
        }
    print(f"{args.model} on {args.data} ({embedder.backend}), target FPR {args.target_fpr:g}")
    print(
        f"{len(split.faces.images)} images; threshold from {split.identities[0]} identities, rates on {split.identities[1]}"
    )
    print("| calibrated on | threshold | single-image FPR [95%] | false accepts / impostor pairs | TPR [95%] |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['threshold']:.4f} | {row['fpr']:.2e} [{row['fpr_interval'][0]:.1e}, "
            f"{row['fpr_interval'][1]:.1e}] | {row['false_accepts']} / {row['impostor_pairs']} | "
            f"{100 * row['tpr']:.2f} [{100 * row['tpr_interval'][0]:.2f}, {100 * row['tpr_interval'][1]:.2f}] |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"target_fpr": args.target_fpr, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
