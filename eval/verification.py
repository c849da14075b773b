"""Verification accuracy on LFW-style .bin sets (insightface's 10-fold protocol).

    python eval/verification.py --model run/backbone.pt --data-dir /data/faces_emore --out results/
    python eval/verification.py --model model.onnx --data-dir /data/faces_emore --targets lfw,cfp_fp --out results/
    python eval/verification.py --model backbone.pth --network r100 --data-dir ... --out ...   # arcface_torch

Prints a table (accuracy mean +- std over 10 folds, TAR@FAR=1e-3, mean embedding norms) and
writes OUT/verification.json. The protocol is documented in facevib/eval/verification.py.
"""

from __future__ import annotations

import argparse
import sys

from facevib.cli import make_parser
from facevib.eval.embed import load_embedder
from facevib.eval.report import verification_table, write_json
from facevib.eval.verification import evaluate_bins, load_bins

DEFAULT_TARGETS = "lfw,cfp_fp,agedb_30,calfw,cplfw"


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--model", required=True, help="facevib checkpoint, arcface_torch state dict, or .onnx")
    parser.add_argument("--network", default=None, help="model name for a plain state dict, e.g. r100")
    parser.add_argument("--data-dir", required=True, help="folder holding <target>.bin files")
    parser.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated set names (default: every .bin present, e.g. {DEFAULT_TARGETS})",
    )
    parser.add_argument("--out", required=True, help="output folder for verification.json")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--n-folds", type=int, default=10, help="folds of the threshold cross-validation")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate; return 0, or 2 with a one-line error for a user mistake."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    try:
        bins = load_bins(args.data_dir, targets)
        embedder = load_embedder(args.model, device=args.device, batch_size=args.batch_size, network=args.network)
        results = evaluate_bins(embedder, bins, n_folds=args.n_folds)
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"model {args.model} on {embedder.backend}")
    print(verification_table(results))
    path = write_json(
        f"{args.out}/verification.json",
        {"model": args.model, "backend": embedder.backend, "n_folds": args.n_folds, "results": results},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
