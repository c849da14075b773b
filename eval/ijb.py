"""IJB-B / IJB-C 1:1 verification (and 1:N identification when its meta files are present).

    python eval/ijb.py --target IJBC --data-root /data/IJB_release/IJBC --model run/backbone.pt --out results/
    python eval/ijb.py --target IJBC --data-root ... --model model.onnx --out results/ --device cuda
    python eval/ijb.py --target IJBC --data-root ... --features results/ijbc_features.npz --out results/rescored

Embeds every loose crop (aligned from its 5 landmarks, image + flip), caches the features to
--features (default OUT/<target>_features.npz), aggregates templates weighted by detector score
(optionally also by the model's uncertainty: --uncertainty-fusion), scores all template pairs,
and reports TPR at FPR 1e-6 ... 1e-1 both exactly and at the nearest ROC point (what published
tables use). Writes OUT/<target>.json and OUT/<target>_roc.png and prints a table.
An existing --features file is re-scored without running the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facevib.cli import make_parser
from facevib.data.ijb import IJB_TARGETS, IJBSet, read_ijb
from facevib.eval.embed import load_embedder
from facevib.eval.ijb import ImageFeatures, embed_ijb, evaluate_ijb, load_features, save_features
from facevib.eval.report import ijb_table, save_roc_png, write_json


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--target", default="IJBC", type=str.upper, choices=IJB_TARGETS, help="IJBC or IJBB")
    parser.add_argument("--data-root", required=True, help="the IJBC/IJBB folder (meta/, loose_crop/) or its parent")
    parser.add_argument("--model", default=None, help="facevib checkpoint, arcface_torch state dict, or .onnx")
    parser.add_argument("--network", default=None, help="model name for a plain state dict, e.g. r100")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--features", default=None, help="feature cache: re-scored if it exists, written after embedding otherwise"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--workers", type=int, default=None, help="image-loading threads (default: up to 8)")
    parser.add_argument(
        "--uncertainty-fusion",
        action="store_true",
        help="weight images by detector score x exp(-2 u), u = the model's per-image uncertainty (VIB models)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _image_features(args: argparse.Namespace, ijb: IJBSet, cache: Path) -> ImageFeatures:
    """Cached features when the cache exists (and fits --model), else embed and cache."""
    if cache.is_file():
        features = load_features(cache)
        if args.model is not None and features.model != str(Path(args.model).resolve()):
            raise ValueError(
                f"{cache} holds features of {features.model or 'an unrecorded model'}, not of {args.model}: "
                "drop --model to re-score it, or pass another --features file to embed anew"
            )
        print(f"re-scoring cached features {cache} ({features.model or 'model not recorded'})", file=sys.stderr)
        return features
    if args.model is None:
        raise ValueError(f"--model is needed: there is no feature cache at {cache}")
    embedder = load_embedder(args.model, device=args.device, batch_size=args.batch_size, network=args.network)
    print(f"embedding with {embedder.backend}", file=sys.stderr)
    features = embed_ijb(
        ijb,
        embedder,
        with_uncertainty=args.uncertainty_fusion,
        progress=not args.no_progress,
        workers=args.workers,
        model_name=str(Path(args.model).resolve()),
    )
    save_features(cache, features)
    print(f"cached features to {cache}", file=sys.stderr)
    return features


def main(argv: list[str] | None = None) -> int:
    """Evaluate; return 0, or 2 with a one-line error for a user mistake."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    name = args.target.lower()
    cache = Path(args.features) if args.features else out / f"{name}_features.npz"
    try:
        ijb = read_ijb(args.data_root, args.target, require_images=not cache.is_file())
        features = _image_features(args, ijb, cache)
        result = evaluate_ijb(ijb, features, uncertainty_fusion=args.uncertainty_fusion, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    summary = dict(result.summary, features=str(cache))
    print(ijb_table(summary))
    label = f"{args.target} ({'uncertainty fusion' if args.uncertainty_fusion else 'detector score'})"
    png = save_roc_png(out / f"{name}_roc.png", {label: (result.fpr, result.tpr)}, title=f"ROC on {args.target}")
    path = write_json(out / f"{name}.json", summary)
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
