"""Export a backbone to ONNX for serving.

    python -m facevib.export runs/r100/backbone.pt --out model.onnx
    python -m facevib.export backbone.pth --network r100 --out r100.onnx               # arcface_torch
    python -m facevib.export runs/cellvib/backbone.pt --out m.onnx --uncertainty \\
        --calibrate /data/faces_emore --target-fpr 1e-4 --triton-repo triton_models

The default file is a drop-in for insightface-style clients: one input ``data`` (N, 3, 112, 112)
float32 RGB, (pixel - 127.5) / 127.5, dynamic N; one output ``embedding`` (N, D), not
normalised. --uncertainty adds a second output ``uncertainty`` (N,). Metadata (model,
preprocessing, config digest, calibrated threshold) is stored in the file's metadata_props.
"""

from __future__ import annotations

import argparse
import json
import sys

from facevib.cli import make_parser
from facevib.export.pipeline import export_model


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, prog="python -m facevib.export")
    parser.add_argument("model", help="facevib checkpoint / backbone.pt, or an arcface_torch backbone.pth")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--network", default=None, help="model name for a plain state dict, e.g. r100")
    parser.add_argument(
        "--uncertainty", action="store_true", help="add the per-image 'uncertainty' output (cellvib_/deepvib_ models)"
    )
    parser.add_argument(
        "--calibrate", default=None, metavar="DATA", help="folder of verification .bin files, or an IJB-B/C folder"
    )
    parser.add_argument("--target-fpr", type=float, default=None, help="FPR of the calibrated threshold (default 1e-4)")
    parser.add_argument("--triton-repo", default=None, metavar="DIR", help="also write a Triton model repository")
    parser.add_argument("--triton-name", default=None, help="Triton model name (default: the stem of --out)")
    parser.add_argument("--max-batch", type=int, default=64, help="Triton max_batch_size")
    parser.add_argument("--max-delay-us", type=int, default=5000, help="Triton max_queue_delay_microseconds")
    parser.add_argument(
        "--legacy-exporter",
        action="store_true",
        help="TorchScript exporter (dynamo=False): ~10x faster, allows --opset 17",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (the default exporter needs >= 18)")
    parser.add_argument("--json", action="store_true", help="print the written metadata as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Export; return 0, or 2 with a one-line error for a user mistake."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.target_fpr is not None and args.calibrate is None:
        parser.error("--target-fpr needs --calibrate DATA")
    for flag in ("triton_name", "max_batch", "max_delay_us"):
        if args.triton_repo is None and getattr(args, flag) != parser.get_default(flag):
            parser.error(f"--{flag.replace('_', '-')} needs --triton-repo DIR")
    try:
        result = export_model(
            args.model,
            args.out,
            network=args.network,
            uncertainty=args.uncertainty,
            calibration_data=args.calibrate,
            target_fpr=1e-4 if args.target_fpr is None else args.target_fpr,
            triton_repo=args.triton_repo,
            triton_name=args.triton_name,
            max_batch_size=args.max_batch,
            max_queue_delay_us=args.max_delay_us,
            dynamo=not args.legacy_exporter,
            opset=args.opset,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    meta = result.metadata
    if args.json:
        print(json.dumps(meta.as_dict(), indent=1))
    print(
        f"wrote {result.path}: {meta.model_name}, input data (N, 3, {meta.input_size}, {meta.input_size}), "
        f"outputs {' + '.join(meta.outputs)}, embedding_dim {meta.embedding_dim}"
    )
    if result.insightface_problems:
        print(f"not an insightface drop-in: {'; '.join(result.insightface_problems)}")
    else:
        print("insightface drop-in: one input, one output, no normalisation in the graph")
    if meta.calibration is not None:
        cal = meta.calibration
        note = "" if cal.resolved else " (NOT resolved: fewer than 1/target_fpr impostor pairs)"
        print(
            f"threshold {cal.threshold:.6f} at target FPR {cal.target_fpr:g}: FPR {cal.fpr:.3g}, TPR {cal.tpr:.4f} "
            f"on {cal.impostor_pairs} impostor / {cal.genuine_pairs} genuine pairs{note}"
        )
    if result.triton_dir is not None:
        print(f"wrote Triton model {result.triton_dir} (config.pbtxt, 1/model.onnx)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
