"""Run one of the cellVIB / IFM papers' classification experiments on one process.

    python train/classic.py configs/classic/mnist_mlp_cellvib.py --set data.root=/data/mnist
    python train/classic.py configs/classic/cifar10_noise_cellvib.py \\
        --set data.root=/data/cifar10 --set data.label_noise=0.5 --set run.device=cuda
    python train/classic.py configs/classic/shifted_digits_ifm.py     # offline data, CPU

Writes <run.output>/metrics.json (history and accuracies) and backbone.pt.
"""

from __future__ import annotations

import argparse
import sys

from facevib.cli import add_config_arguments, make_parser
from facevib.config import apply_overrides
from facevib.experiments import load_classic_config, run_experiment, validate_classic


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_config_arguments(parser, "configs/classic/mnist_mlp_cellvib.py", "data.root=/data/mnist")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, return a process exit code (2 for configuration or data mistakes)."""
    args = get_args_parser().parse_args(argv)
    try:
        cfg = validate_classic(apply_overrides(load_classic_config(args.config), args.overrides))
        run_experiment(cfg, stream=sys.stdout)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
