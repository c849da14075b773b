"""Verification accuracy on LFW-style .bin sets (insightface's 10-fold protocol).

    python eval/verification.py --model run/backbone.pt --data-dir /data/faces_emore --out results/
    python eval/verification.py --model model.onnx --data-dir /data/faces_emore --targets lfw,cfp_fp --out results/
    python eval/verification.py --model backbone.pth --network r100 --data-dir ... --out ...   # arcface_torch

Prints a table (accuracy mean +- std over 10 folds, TAR@FAR=1e-3, mean embedding norms) and
writes OUT/verification.json. The protocol is documented in facevib/eval/verification.py.
The command is ``python -m facevib.eval.verification_cli``; this script is its wrapper under
the mission's name.
"""

from __future__ import annotations

import sys

from facevib.eval.verification_cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
