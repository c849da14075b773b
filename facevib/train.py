"""Train a face-recognition backbone with an ArcFace head and Partial FC: ``python -m facevib.train``.

    torchrun --nproc_per_node=8 -m facevib.train configs/ms1mv3_r100_cellvib.py
    torchrun --nproc_per_node=8 train/arcface.py configs/ms1mv3_r100_cellvib.py   # the same, as a script
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        train/arcface.py configs/ms1mv3_r100_cellvib.py --set data.batch_size=64
    python -m facevib.train configs/synthetic_r18_cellvib.py          # one CPU process

Add ``--resume latest`` to continue from the newest checkpoint in the run folder (what an
elastic restart under ``torchrun --max-restarts=N`` needs). This module only parses arguments
and calls the engine; what a run does is in facevib.engine.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from torch.distributed.elastic.multiprocessing.errors import record

from facevib.cli import add_config_arguments, make_parser
from facevib.config import ConfigError, apply_overrides, load_config, validate
from facevib.distributed import init_distributed, shutdown_distributed
from facevib.engine import Trainer
from facevib.engine.trainer import NonFiniteLossError

# The user's mistakes: one line, exit status 2, no traceback. Everything else is a bug or a
# fault (a corrupt record, a dead peer) and keeps its traceback.
USER_MISTAKES = (ConfigError, FileNotFoundError)


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The training command's parser; ``prog`` names the command in one-line errors."""
    parser = make_parser(__doc__, prog=prog)
    add_config_arguments(parser, "configs/ms1mv3_r100_cellvib.py", "optim.lr=0.05")
    parser.add_argument("--resume", default=None, help="'latest' (newest checkpoint in run.output, if any) or a path")
    parser.add_argument("--output", default=None, help="shorthand for --set run.output=DIR")
    return parser


def _one_line(exc: BaseException) -> str:
    """The user-facing message of ``exc``.

    An error raised in a DataLoader worker arrives wrapped, with the worker's traceback in
    its message; the original message (file, key, byte offset) is its last line.
    """
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def _rank() -> str:
    return os.environ.get("RANK", "0")


@record
def _train(args: argparse.Namespace) -> int:
    """Train; return 2 for the user's mistakes (printed once, by rank 0) and 1 when the loss
    stayed non-finite. Any other exception propagates: ``@record`` writes it to
    torchelastic's error file (``TORCHELASTIC_ERROR_FILE``), so the launcher names the failing
    rank and shows its traceback in its summary."""
    is_main = _rank() == "0"
    try:
        cfg = load_config(args.config)
        overrides = list(args.overrides) + ([f"run.output={args.output}"] if args.output else [])
        validate(apply_overrides(cfg, overrides))
        env = init_distributed(cfg.run.device)
        Trainer(cfg, env, resume=args.resume).fit()
    except USER_MISTAKES as exc:
        # Every rank reads the same configuration and meets the same mistake: one line suffices.
        if is_main:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        if is_main:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse arguments, train, return a process exit code.

    An unexpected exception on any rank is printed by that rank, every line prefixed
    ``[rank r]``, traceback first and the message last; the exit status is then 1."""
    args = get_args_parser(prog).parse_args(argv)
    try:
        return _train(args)
    except Exception as exc:
        prefix = f"[rank {_rank()}] "
        lines = "".join(traceback.format_exception(exc)).rstrip("\n").splitlines()
        lines.append(f"error: {type(exc).__name__}: {_one_line(exc)}")
        print("\n".join(prefix + line for line in lines), file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main(prog="python -m facevib.train"))
