"""``python -m facevib.synth --out DIR``: write the synthetic identity set in the real formats.

A thin shell over :func:`facevib.synth.write_synthetic_dataset`; its options are the fields of
:class:`facevib.synth.SynthOptions`. User mistakes (out-of-range options) print one ``error:``
line and exit with status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from facevib.cli import Parser
from facevib.synth import SynthOptions, write_synthetic_dataset

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m facevib.synth`` argument parser (one flag per :class:`SynthOptions` field)."""
    parser = Parser(
        prog="python -m facevib.synth",
        description="Render synthetic identities and write them in the real formats: train.rec/idx + property "
        "(MS1M layout), lfw.bin / cfp_fp.bin / agedb_30.bin from held-out identities, and an IJB-C-style IJBC/ "
        "directory (loose crops, 5-point landmarks, detector scores, 1:1 pairs and 1:N galleries/probes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    for f in fields(SynthOptions):
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        metavar = "N" if isinstance(default, int) else "X"
        parser.add_argument(flag, type=type(default), default=default, metavar=metavar, help=f.metadata.get("help", ""))
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _print_summary(out: Path, summary: dict) -> None:
    train = summary["train"]
    print(f"wrote {out}: train.rec {train['images']} images of {train['identities']} identities")
    for name, info in summary.get("bins", {}).items():
        print(
            f"  {name}.bin: {info['pairs']} pairs ({info['same']} same) from {info['identities']} held-out identities"
        )
    if "ijb" in summary:
        ijb = summary["ijb"]
        print(
            f"  IJBC/: {ijb['images']} loose crops, {ijb['templates']} templates, {ijb['media']} media, "
            f"{ijb['pairs']} pairs ({ijb['genuine_pairs']} genuine) from {ijb['subjects']} held-out subjects"
        )
    print(
        f"  {summary['images_rendered']} images in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.0f}/s, {summary['workers']} workers)"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for user errors, reported on one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    options = {f.name: getattr(args, f.name) for f in fields(SynthOptions)}
    try:
        summary = write_synthetic_dataset(args.out, **options)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library's message layout
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
