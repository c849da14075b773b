"""Start the server on an exported model, talk to it over HTTP like a client, stop it.

The mission's name for ``python -m facevib.report.exchange_cli``; its ``--help`` and module docstring say the rest.
"""

from __future__ import annotations

import sys

from facevib.report.exchange_cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
