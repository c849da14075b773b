"""Train a face-recognition backbone with an ArcFace head and Partial FC.

The mission's name for ``python -m facevib.train``; its ``--help`` and module docstring say the rest.
"""

from __future__ import annotations

import sys

from facevib.train import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
