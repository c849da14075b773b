"""The one argument helper every facevib command is built on.

Every tool (``python -m facevib.<tool>`` and the thin scripts in train/, eval/, serve/) makes
its parser with :func:`make_parser`, so a user mistake reads the same everywhere: one line,
``PROG: error: MESSAGE (see --help)``, exit code 2, no usage block and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

USER_ERROR_EXIT = 2


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (argparse prints usage + message)."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with ``PROG: error: MESSAGE (see --help)``."""
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(doc: str | None, prog: str | None = None, **kwargs) -> Parser:
    """A :class:`Parser` whose description is ``doc`` verbatim (the module docstring's examples).

    ``prog`` names the command in error lines; by default argparse uses the script name, which
    is right for the scripts in train/, eval/, serve/ but not for ``python -m`` modules."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return Parser(prog=prog, description=doc, **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, config_example: str, override_example: str) -> None:
    """The positional ``config`` module and the repeatable ``--set SECTION.FIELD=VALUE`` overrides
    (collected in ``args.overrides``) that every config-driven command takes."""
    parser.add_argument("config", help=f"config module, e.g. {config_example}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help=f"override a config field, e.g. --set {override_example} (repeatable)",
    )


def user_error(prog: str, message: object) -> int:
    """Print the one-line form of a user mistake raised after parsing; return exit code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USER_ERROR_EXIT


def run_main(
    main: Callable[[Sequence[str] | None], int],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    user_errors: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError),
) -> int:
    """Call ``main(argv)``; a ``user_errors`` exception escaping it becomes one line and exit 2.

    Anything else (a real bug) keeps its traceback. Use as ``sys.exit(run_main(main))``."""
    try:
        return main(argv)
    except user_errors as err:
        return user_error(prog or argparse.ArgumentParser().prog, err)
