"""Information plane of facevib models, per layer and across runs (cellVIB Figs. 5-6).

The mission's name for ``python -m facevib.info``; its ``--help`` and module docstring say the rest.
"""

from __future__ import annotations

import sys

from facevib.info.__main__ import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
