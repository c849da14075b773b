"""Export a backbone to ONNX for serving.

    python -m facevib.export runs/r100/backbone.pt --out model.onnx
    python -m facevib.export backbone.pth --network r100 --out r100.onnx               # arcface_torch
    python -m facevib.export runs/cellvib/backbone.pt --out m.onnx --uncertainty \\
        --calibrate /data/faces_emore --target-fpr 1e-4 --triton-repo triton_models
    python -m facevib.export backbone.pt --out m.onnx --calibrate-identification /data/IJBC --target-fpir 1e-2
    python -m facevib.export backbone.pt --out m16.onnx --fp16 --calibrate /data/IJBC --device cuda

The default file is a drop-in for insightface-style clients: one input ``data`` (N, 3, 112, 112)
float32 RGB, (pixel - 127.5) / 127.5, dynamic N; one output ``embedding`` (N, D), not
normalised. --uncertainty adds an output ``uncertainty`` (N,), --quality one named ``quality`` (N,).
--fp16 writes a float16 graph with the same float32 interface, checked against the float32 graph on
face crops. Metadata (model, preprocessing, config digest, calibrated threshold) is stored in
the file's metadata_props.
"""

from __future__ import annotations

import argparse
import json
import sys

from facevib.cli import make_parser
from facevib.export.pipeline import export_model
from facevib.export.precision import FP16_MIN_COSINE
from facevib.onnx_meta import PROTOCOLS


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, prog="python -m facevib.export")
    parser.add_argument("model", help="facevib checkpoint / backbone.pt, or an arcface_torch backbone.pth")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--network", default=None, help="model name for a plain state dict, e.g. r100")
    parser.add_argument(
        "--uncertainty", action="store_true", help="add the per-image 'uncertainty' output (cellvib_/deepvib_ models)"
    )
    parser.add_argument(
        "--quality",
        default=None,
        metavar="NAME",
        help="add a per-face 'quality' output in [0, 1]: norm, pfe or cr_fiqa (docs/quality.md says which won)",
    )
    parser.add_argument(
        "--quality-file",
        default=None,
        metavar="FILE",
        help="the quality_heads.pt written by benchmarks/quality.py (head weights and the [0, 1] scale)",
    )
    parser.add_argument(
        "--calibrate",
        default=None,
        metavar="DATA",
        help="labelled faces: an IJB-B/C folder, a RecordIO set or image folder of held-out identities, or .bin files",
    )
    parser.add_argument("--target-fpr", type=float, default=None, help="FPR of the calibrated threshold (default 1e-4)")
    parser.add_argument(
        "--calibration-protocol",
        choices=PROTOCOLS,
        default=None,
        help="single_image (default: the score /v1/verify computes) or template (IJB 1:1 templates; not served)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        metavar="N",
        help="images sampled from the labelled set, whole identities (default 4000: ~8M pairs)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where calibration and the --fp16 parity check run the exported file: auto (default), cpu, cuda, cuda:N",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while calibrating")
    parser.add_argument(
        "--calibrate-identification",
        default=None,
        metavar="DATA",
        help="IJB-B/C folder with 1:N gallery and probe files: store the open-set (1:N search) threshold",
    )
    parser.add_argument(
        "--target-fpir", type=float, default=None, help="FPIR of the identification threshold (default 1e-2)"
    )
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
    _add_precision_arguments(parser)
    return parser


def _add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """--fp16 and its parity check (facevib.export.precision)."""
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="float16 graph (float32 input and outputs), refused unless its embeddings match the float32 graph's",
    )
    parser.add_argument(
        "--parity-data",
        default=None,
        metavar="DATA",
        help="labelled faces for the --fp16 parity check (any --calibrate kind; default: the --calibrate data)",
    )
    parser.add_argument(
        "--fp16-min-cosine",
        type=float,
        default=None,
        help=f"smallest float16-vs-float32 cosine the --fp16 export accepts (default {FP16_MIN_COSINE})",
    )


def main(argv: list[str] | None = None) -> int:
    """Export; return 0, or 2 with a one-line error for a user mistake."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for flag in ("target_fpr", "calibration_protocol", "calibration_images", "device"):
        runs_model = args.calibrate_identification is not None or args.fp16  # --device runs these too
        calibrating = args.calibrate is not None or (flag == "device" and runs_model)
        if getattr(args, flag) is not None and not calibrating:
            parser.error(f"--{flag.replace('_', '-')} needs --calibrate DATA")
    if args.calibration_images is not None and args.calibration_images < 4:
        parser.error(f"--calibration-images must be >= 4, got {args.calibration_images}")
    if (args.quality is None) != (args.quality_file is None):
        parser.error("--quality NAME and --quality-file FILE go together")
    if args.target_fpir is not None and args.calibrate_identification is None:
        parser.error("--target-fpir needs --calibrate-identification DATA")
    for flag in ("parity_data", "fp16_min_cosine"):
        if getattr(args, flag) is not None and not args.fp16:
            parser.error(f"--{flag.replace('_', '-')} needs --fp16")
    for flag in ("triton_name", "max_batch", "max_delay_us"):
        if args.triton_repo is None and getattr(args, flag) != parser.get_default(flag):
            parser.error(f"--{flag.replace('_', '-')} needs --triton-repo DIR")
    try:
        result = export_model(
            args.model,
            args.out,
            network=args.network,
            uncertainty=args.uncertainty,
            quality=args.quality,
            quality_file=args.quality_file,
            calibration_data=args.calibrate,
            target_fpr=1e-4 if args.target_fpr is None else args.target_fpr,
            calibration_protocol=args.calibration_protocol or "single_image",
            calibration_images=args.calibration_images or 4000,
            device=args.device or "auto",
            progress=not args.no_progress,
            identification_data=args.calibrate_identification,
            target_fpir=1e-2 if args.target_fpir is None else args.target_fpir,
            triton_repo=args.triton_repo,
            triton_name=args.triton_name,
            max_batch_size=args.max_batch,
            max_queue_delay_us=args.max_delay_us,
            dynamo=not args.legacy_exporter,
            opset=args.opset,
            fp16=args.fp16,
            parity_data=args.parity_data,
            fp16_min_cosine=FP16_MIN_COSINE if args.fp16_min_cosine is None else args.fp16_min_cosine,
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
    parity = meta.precision.parity if meta.precision is not None else None
    if parity is not None:
        print(
            f"float16 graph (float32 input and outputs): cosine to the float32 graph min {parity.min_cosine:.6f}, "
            f"mean {parity.mean_cosine:.6f} on {parity.images} crops (bound {parity.bound:g}) on {parity.provider}"
        )
        if parity.provider != "CUDAExecutionProvider":
            print(f"note: {parity.note}")
    if result.insightface_problems:
        print(f"not an insightface drop-in: {'; '.join(result.insightface_problems)}")
    else:
        print("insightface drop-in: one input, one output, no normalisation in the graph")
    if meta.calibration is not None:
        cal = meta.calibration
        note = "" if cal.resolved else " (NOT resolved: fewer than 1/target_fpr impostor pairs)"
        print(
            f"{cal.protocol} threshold {cal.threshold:.6f} at target FPR {cal.target_fpr:g}: FPR {cal.fpr:.3g}, "
            f"TPR {cal.tpr:.4f} on {cal.impostor_pairs} impostor / {cal.genuine_pairs} genuine pairs{note} "
            f"(ran on {result.calibration_backend})"
        )
        if cal.holdout is not None:
            held = cal.holdout
            print(
                f"held out ({held.identities or 'unknown'} identities): FPR {held.fpr:.3g} "
                f"[{held.fpr_interval[0]:.3g}, {held.fpr_interval[1]:.3g}] on {held.impostor_pairs} impostor pairs, "
                f"TPR {held.tpr:.4f} [{held.tpr_interval[0]:.4f}, {held.tpr_interval[1]:.4f}] on "
                f"{held.genuine_pairs} genuine pairs (95% Wilson)"
            )
        if not cal.single_image:
            print("template threshold: /v1/verify will not apply it to single-image scores")
    if meta.identification is not None:
        ident = meta.identification
        note = "" if ident.resolved else " (NOT resolved: fewer than 1/target_fpir non-mated searches)"
        print(
            f"1:N threshold {ident.threshold:.6f} at target FPIR {ident.target_fpir:g}: FPIR {ident.fpir:.3g}, "
            f"TPIR {ident.tpir:.4f} on {ident.non_mated} non-mated / {ident.mated} mated searches{note}"
        )
    if result.triton_dir is not None:
        print(f"wrote Triton model {result.triton_dir} (config.pbtxt, 1/model.onnx)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
