"""``python -m facevib.data {pack,inspect}``: pack and look at face sets.

Each subcommand is a thin shell over a library function (``facevib.data.pack``,
``facevib.data.inspect``); the synthetic set is written by ``python -m facevib.synth``. User mistakes (missing folders, bad
landmark lines, unreadable images, out-of-range options) print one ``error:`` line and
exit with status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facevib.cli import Parser

__all__ = ["main", "build_parser"]


def _pack(args: argparse.Namespace) -> int:
    from facevib.data.pack import pack_folder

    if not args.detect and (args.detector != "mtcnn" or args.min_face_size is not None):
        raise ValueError("--detector and --min-face-size only apply with --detect")
    detector = None
    if args.detect:
        from facevib.detect import load_detector

        detector = load_detector(args.detector)
    summary = pack_folder(
        args.image_dir,
        args.out_prefix,
        landmarks=args.landmarks,
        quality=args.quality,
        threads=args.threads,
        progress=None if args.progress == "auto" else args.progress == "on",
        detector=detector,
        min_face_size=args.min_face_size,
    )
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        how = "aligned with norm_crop" if summary["aligned"] else "already aligned"
        if "detection" in summary:
            how = f"aligned on the largest face found by {summary['detection']['detector']}"
        print(f"packed {summary['images']} images of {summary['identities']} identities ({how}) into {summary['rec']}")
        if "detection" in summary:
            found = summary["detection"]
            print(
                f"  no face found in {found['without_face']} of {found['photos']} photos "
                f"(listed in {found['no_face_list']}); {found['several_faces']} photos had several faces"
            )
            if found["dropped_identities"]:
                names = ", ".join(found["dropped_identities"][:5])
                print(f"  {len(found['dropped_identities'])} identities had no photo with a face: {names}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from facevib.data.inspect import bin_sheet, contact_sheet, summarize_bin, summarize_rec

    if str(args.prefix).endswith(".bin"):
        summary, images = summarize_bin(args.prefix)
        if args.sheet:
            from facevib.data.bins import read_bin

            bin_sheet(images, read_bin(args.prefix).issame, args.sheet, pairs=args.identities)
    else:
        summary = summarize_rec(args.prefix)
        if args.sheet:
            contact_sheet(summary, args.sheet, identities=args.identities, per_identity=args.per_identity)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=1))
    else:
        print("\n".join(summary.lines()))
    if args.sheet:
        print(f"contact sheet   {args.sheet}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m facevib.data`` argument parser."""
    parser = Parser(
        prog="python -m facevib.data",
        description="Pack and inspect face-recognition data sets (RecordIO, .bin, IJB).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pack,inspect}")

    pack = sub.add_parser(
        "pack",
        help="pack an image folder (one sub-folder per identity) into MS1M-style RecordIO",
        description="Pack IMAGE_DIR/<identity>/<image> into OUT_PREFIX.rec/.idx + property (labels in sorted folder "
        "order; OUT_PREFIX.identities.tsv maps them back). Without --landmarks the images must be aligned 112x112 "
        "crops; with it every image is aligned to the ArcFace template first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pack.add_argument("image_dir", type=Path, help="folder with one sub-folder of images per identity")
    pack.add_argument("out_prefix", type=Path, help="output prefix: writes OUT_PREFIX.rec and OUT_PREFIX.idx")
    pack.add_argument(
        "--landmarks",
        type=Path,
        help="text file, one line per image: 'relative/path x1 y1 ... x5 y5 [score]' (ArcFace order) or "
        "'relative/path x1 y1 x2 y2 x3 y3' (eyes, mouth centre); '#' starts a comment",
    )
    pack.add_argument(
        "--detect",
        action="store_true",
        help="the images are raw photos: align each on its largest detected face (no landmarks file needed); "
        "photos without a face are listed in OUT_PREFIX.no_face.txt",
    )
    pack.add_argument(
        "--detector", default="mtcnn", help="with --detect: mtcnn (built in) or the path of an SCRFD det_*.onnx"
    )
    pack.add_argument(
        "--min-face-size",
        type=float,
        default=None,
        help="with --detect: smallest face in pixels; None: the detector's own (20 for mtcnn)",
    )
    pack.add_argument("--quality", type=int, default=95, help="JPEG quality of the packed crops")
    pack.add_argument(
        "--threads", type=int, default=None, help="decode/align threads (default: one per CPU, at most 8)"
    )
    pack.add_argument(
        "--progress", choices=("auto", "on", "off"), default="auto", help="progress bar (auto: on a terminal)"
    )
    pack.add_argument("--json", action="store_true", help="print the summary as JSON")
    pack.set_defaults(run=_pack)

    inspect = sub.add_parser(
        "inspect",
        help="summarise a RecordIO set or a .bin file, optionally with a contact sheet",
        description="Print record/image/identity counts, the header layout, the label range, images per identity "
        "and property consistency of a RecordIO set (PREFIX: a directory with train.rec, a prefix or a .rec path), "
        "or the pair counts of a verification .bin.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    inspect.add_argument("prefix", type=Path, help="directory, prefix, .rec path, or .bin file")
    inspect.add_argument("--sheet", type=Path, help="write a contact-sheet PNG here")
    inspect.add_argument("--identities", type=int, default=8, help="identities (rows) on the sheet; pairs for a .bin")
    inspect.add_argument("--per-identity", type=int, default=8, help="images per identity on the sheet")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for user errors, reported on one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library's message layout
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
