"""``python -m facevib.detect {detect,convert}``: find faces in photos; rebuild MTCNN's ONNX files.

``detect PHOTO...`` prints one JSON line per photo (its faces: box, landmarks, score).
``convert --wheel W --out DIR`` writes ``pnet/rnet/onet.onnx`` from the facenet-pytorch wheel
(``make detector-weights`` runs it; it needs torch and onnx). User mistakes print one
``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facevib.cli import make_parser

__all__ = ["build_parser", "main"]


def _detect(args: argparse.Namespace) -> int:
    from facevib.data.imagecodec import decode_rgb
    from facevib.detect import load_detector

    detector = load_detector(args.detector, device=args.device)
    for warning in detector.describe().get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    for path in args.photos:
        try:
            image = decode_rgb(Path(path).read_bytes())
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        faces = detector.detect(
            image, min_face_size=args.min_face_size, threshold=args.threshold, max_faces=args.max_faces
        )
        print(json.dumps({"photo": str(path), "faces": [face.to_dict() for face in faces]}))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from facevib.detect.convert import convert

    for path in convert(args.wheel, args.out):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__.split("\n")[0], prog="python -m facevib.detect")
    sub = parser.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect", help="print the faces of each photo as JSON lines")
    detect.add_argument("photos", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    detect.add_argument("--detector", default="mtcnn", help="mtcnn (built in) or the path of an SCRFD det_*.onnx")
    detect.add_argument("--min-face-size", type=float, default=None, help="smallest face in pixels")
    detect.add_argument("--threshold", type=float, default=None, help="smallest face score kept")
    detect.add_argument("--max-faces", type=int, default=None, help="keep at most this many faces, largest first")
    detect.add_argument(
        "--device", default="auto", help="auto (CUDA when onnxruntime has it, the default), cpu, cuda or cuda:N"
    )
    detect.set_defaults(run=_detect)
    convert = sub.add_parser("convert", help="build MTCNN's ONNX files from the facenet-pytorch 2.6.0 wheel")
    convert.add_argument("--wheel", type=Path, required=True, help="facenet_pytorch-2.6.0-py3-none-any.whl")
    convert.add_argument("--out", type=Path, required=True, help="output folder")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
