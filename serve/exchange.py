"""Start the server on an exported model, talk to it over HTTP like a client, stop it.

    python serve/exchange.py --model runs/demo/model.onnx --ijb-root data/synthetic/IJBC --out runs/demo/http_exchange.json
    python serve/exchange.py --url http://127.0.0.1:8000 --ijb-root /data/IJB_release/IJBC --out exchange.json

Sends GET /health and /v1/info, POST /v1/verify with the first genuine and the first impostor
template pair of the IJB protocol (loose crops + their 5 landmarks; the server aligns them),
and POST /v1/embed with skimage's astronaut photo and its landmarks; writes the transcript
(requests as sent, image data and embeddings abbreviated) to --out and prints a summary.
With --model the server is started (serve/app.py on 127.0.0.1 and a free port) and stopped
afterwards; with --url an already running server is used. The command is
``python -m facevib.report.exchange_cli``; this script is its wrapper under the mission's name.
"""

from __future__ import annotations

import sys

from facevib.report.exchange_cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
