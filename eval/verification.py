"""Verification accuracy on LFW-style .bin sets (insightface's 10-fold protocol).

The mission's name for ``python -m facevib.eval.verification_cli``; its ``--help`` and module docstring say the rest.
"""

from __future__ import annotations

import sys

from facevib.eval.verification_cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
