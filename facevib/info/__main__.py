"""Information plane of facevib models, per layer and across runs (cellVIB Figs. 5-6).

    python eval/infoplane.py --model runs/digits_cellvib/backbone.pt --data digits --out results/infoplane
    python eval/infoplane.py --model b1e-4/backbone.pt b1e-3/backbone.pt b1e-2/backbone.pt --data digits --out res/
    python eval/infoplane.py --model run/backbone.pt --data /data/faces_emore --out res/ --max-classes 50
    python eval/infoplane.py --model run/backbone.pt --data /data/lfw.bin --out res/

For every representation layer: the VIB cell's KL (upper bound on I(Z_i; Z_{i-1})), a
lower bound on I(Z_i; Y) = H(Y) - cross-entropy of a probe (fitted on one half of the
samples, scored on the other; a classifier's output uses its own logits), and the binning
estimate with its saturation flag; with --kernel-noise-var, the Kolchinsky-Tracey bounds on
the layer plus Gaussian noise; with --jsd-steps, a JSD critic's bound between adjacent
layers (the IFM paper's estimator). --data is `digits` (scikit-learn's load_digits, the
classification experiments' split), a RecordIO folder (identities split across the two
halves) or a verification .bin (label = same identity). Writes OUT/infoplane.json,
OUT/infoplane_depth.png and, with several --model (runs at different beta),
OUT/infoplane_beta.png; prints a table in bits.

The command is ``python -m facevib.info``; ``eval/infoplane.py`` is its wrapper under the mission's name.
"""

from __future__ import annotations

import argparse
import sys

from facevib.cli import make_parser
from facevib.info.analysis import analyze_checkpoints, default_device, format_table
from facevib.info.sources import load_samples


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = make_parser(__doc__, prog=prog)
    parser.add_argument("--model", nargs="+", required=True, help="facevib checkpoint(s) (backbone.pt)")
    parser.add_argument("--data", required=True, help="'digits', a RecordIO folder, or a verification .bin")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bin-size", type=float, default=0.67, help="binning width (0.67 as in the binning paper)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="digits: held-out fraction")
    parser.add_argument("--seed", type=int, default=0, help="digits: split seed")
    parser.add_argument("--max-classes", type=int, default=50, help="RecordIO: identities used")
    parser.add_argument("--per-class", type=int, default=8, help="RecordIO: images per identity")
    parser.add_argument("--max-pairs", type=int, default=600, help=".bin: pairs used")
    parser.add_argument(
        "--kernel-noise-var",
        type=float,
        default=None,
        help="add Kolchinsky-Tracey kernel bounds with Gaussian noise of this variance on each layer",
    )
    parser.add_argument(
        "--jsd-steps", type=int, default=0, help="train a JSD critic between adjacent layers this many steps (0: off)"
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Measure and write; return 0, or 2 with a one-line error for a user mistake."""
    parser = get_args_parser(prog)
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_classes", "per_class", "max_pairs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.jsd_steps < 0:
        parser.error(f"--jsd-steps must be >= 0, got {args.jsd_steps}")
    if args.kernel_noise_var is not None and not args.kernel_noise_var > 0:
        parser.error(f"--kernel-noise-var must be > 0, got {args.kernel_noise_var}")
    if not args.bin_size > 0:
        parser.error(f"--bin-size must be > 0, got {args.bin_size}")
    try:
        train, test, description = load_samples(
            args.data,
            test_fraction=args.test_fraction,
            seed=args.seed,
            max_classes=args.max_classes,
            per_class=args.per_class,
            max_pairs=args.max_pairs,
        )
        planes, files = analyze_checkpoints(
            args.model,
            train,
            test,
            args.out,
            data_description=description,
            device=args.device or default_device(),
            batch_size=args.batch_size,
            bin_size=args.bin_size,
            jsd_steps=args.jsd_steps,
            kernel_noise_var=args.kernel_noise_var,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"data: {description}")
    print(format_table(planes))
    print("wrote " + ", ".join(str(path) for path in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m facevib.info"))
