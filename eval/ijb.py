"""IJB-B / IJB-C 1:1 verification (and 1:N identification when its meta files are present).

    python eval/ijb.py --target IJBC --data-root /data/IJB_release/IJBC --model run/backbone.pt --out results/
    python eval/ijb.py --target IJBC --data-root ... --model model.onnx --out results/ --device cuda
    python eval/ijb.py --target IJBC --data-root ... --features results/ijbc_features.npz --out results/rescored

Embeds every loose crop (aligned from its 5 landmarks, image + flip), caches the features to
--features (default OUT/<target>_features.npz), aggregates templates weighted by detector score
(optionally also by the model's uncertainty: --uncertainty-fusion), scores all template pairs,
and reports TPR at FPR 1e-6 ... 1e-1 both exactly and at the nearest ROC point (what published
tables use). Writes OUT/<target>.json and OUT/<target>_roc.png and prints a table.
An existing --features file is re-scored without running the network. The command is
``python -m facevib.eval.ijb_cli``; this script is its wrapper under the mission's name.
"""

from __future__ import annotations

import sys

from facevib.eval.ijb_cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
