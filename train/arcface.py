"""Train a face-recognition backbone with an ArcFace head and Partial FC.

    torchrun --nproc_per_node=8 train/arcface.py configs/ms1mv3_r100_cellvib.py
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        train/arcface.py configs/ms1mv3_r100_cellvib.py --set data.batch_size=64
    python train/arcface.py configs/synthetic_r18_cellvib.py          # one CPU process

Add ``--resume latest`` to continue from the newest checkpoint in the run folder (what an
elastic restart under ``torchrun --max-restarts=N`` needs). The command is
``python -m facevib.train``; this script is its wrapper under the mission's name.
"""

from __future__ import annotations

import sys

from facevib.train import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
