"""IJB-B / IJB-C 1:1 verification (and 1:N identification when its meta files are present).

The mission's name for ``python -m facevib.eval.ijb_cli``; its ``--help`` and module docstring say the rest.
"""

from __future__ import annotations

import sys

from facevib.eval.ijb_cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
