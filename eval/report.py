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
"""

from __future__ import annotations

import sys

from facevib.report.__main__ import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
