"""Serve an exported model over HTTP: embeddings, verification, health, info, metrics.

The mission's name for ``python -m facevib.serve``; its ``--help`` and module docstring say the rest.
"""

from __future__ import annotations

import sys

from facevib.serve.__main__ import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
