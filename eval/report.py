"""Put trained and evaluated models side by side in REPORT.md and report.html.

The mission's name for ``python -m facevib.report``; its ``--help`` and module docstring say the rest.
"""

from __future__ import annotations

import sys

from facevib.report.__main__ import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
