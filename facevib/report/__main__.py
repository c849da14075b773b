"""Put trained and evaluated models side by side in REPORT.md and report.html.

    python eval/report.py --run cellVIB=runs/demo/cellvib --run ArcFace=runs/demo/arcface \
        --data data/synthetic --onnx runs/demo/model.onnx --exchange runs/demo/http_exchange.json --out runs/demo

Each --run LABEL=DIR is a training output folder (train/arcface.py --output DIR) whose
evaluations live in DIR/eval (eval/verification.py and eval/ijb.py --out DIR/eval; uncertainty
fusion in DIR/eval/fusion); the ROC plot re-scores each run's cached IJB features. --data is
the data folder: its synth.json (a synthetic set) is described, and the first .bin set's images
are where the per-cell KL of VIB models is measured. --onnx and --exchange
add the exported model and the HTTP transcript (serve/exchange.py). Nothing is trained or
embedded here except that one KL measurement.

The command is ``python -m facevib.report``; ``eval/report.py`` is its wrapper under the mission's name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facevib.cli import make_parser


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = make_parser(__doc__, prog=prog)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a model's run folder")
    parser.add_argument("--out", required=True, help="folder for REPORT.md, report.html and plots/")
    parser.add_argument("--data", default=None, help="data folder (synth.json, *.bin, IJBC/)")
    parser.add_argument("--onnx", default=None, help="the exported model to describe")
    parser.add_argument("--exchange", default=None, help="HTTP transcript written by serve/exchange.py")
    parser.add_argument("--started-at", default=None, help="file holding the UNIX time the pipeline started")
    parser.add_argument(
        "--command", action="append", default=[], help="a command that produced the runs, shown in the report"
    )
    parser.add_argument("--kl-images", type=int, default=256, help="held-out images the per-cell KL is measured on")
    return parser


def _runs(specs: list[str], parser: argparse.ArgumentParser):
    from facevib.report.runs import read_run

    runs = []
    for spec in specs:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            parser.error(f"--run takes LABEL=DIR, got {spec!r}")
        runs.append(read_run(label, folder))
    return runs


def _heldout_images(data: Path | None, count: int):
    """The first ``count`` distinct images of the first .bin set in ``data`` (None without one)."""
    from facevib.eval.verification import list_bin_targets, load_bins, unique_images

    if data is None or count < 1 or not list_bin_targets(data):
        return None
    (first,) = load_bins(data, list_bin_targets(data)[:1])
    distinct, _ = unique_images(first.images)
    return first.images[distinct[:count]]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Write the report; 0, or 2 with a one-line error for a user mistake."""
    parser = get_args_parser(prog)
    args = parser.parse_args(argv)
    from facevib.report.build import ReportInputs, write_report

    try:
        runs = _runs(args.run, parser)
        data = Path(args.data) if args.data else None
        exchange = json.loads(Path(args.exchange).read_text(encoding="utf-8")) if args.exchange else None
        started = float(Path(args.started_at).read_text().strip()) if args.started_at else None
        inputs = ReportInputs(
            runs=runs,
            out=Path(args.out),
            data=data,
            onnx=Path(args.onnx) if args.onnx else None,
            exchange=exchange,
            started_at=started,
            commands=args.command,
        )
        markdown, page = write_report(inputs, _heldout_images(data, args.kl_images))
    except (FileNotFoundError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {markdown} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m facevib.report"))
