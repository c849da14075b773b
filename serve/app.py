"""Serve an exported model over HTTP: embeddings, verification, health, info, metrics.

    python serve/app.py --model model.onnx
    python serve/app.py --model model.onnx --host 0.0.0.0 --port 8000 --api-key KEY --device cuda
    FACEVIB_MODEL=model.onnx uvicorn --factory facevib.serve:create_app --host 0.0.0.0

Every flag is also read from its FACEVIB_* variable (--max-batch <-> FACEVIB_MAX_BATCH); a
flag given on the command line wins. Endpoints and their JSON: GET /openapi.json.
"""

from __future__ import annotations

import sys

from facevib.serve.__main__ import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
