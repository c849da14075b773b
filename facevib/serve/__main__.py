"""Serve an exported model over HTTP: embeddings, verification, health, info, metrics.

    python serve/app.py --model model.onnx
    python serve/app.py --model model.onnx --host 0.0.0.0 --port 8000 --api-key KEY --device cuda
    FACEVIB_MODEL=model.onnx uvicorn --factory facevib.serve:create_app --host 0.0.0.0

Every flag is also read from its FACEVIB_* variable (--max-batch <-> FACEVIB_MAX_BATCH); a
flag given on the command line wins. Endpoints and their JSON: GET /openapi.json.

The command is ``python -m facevib.serve``; ``serve/app.py`` is its wrapper under the mission's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from facevib.cli import make_parser
from facevib.serve.settings import ServeSettings, env_name, flag_name


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = make_parser(__doc__, prog=prog)
    for f in dataclasses.fields(ServeSettings):
        # Strings here; ServeSettings.from_strings converts and checks them, as it does env vars.
        parser.add_argument(
            flag_name(f.name), dest=f.name, default=None, help=f"{f.metadata['help']} [{env_name(f.name)}]"
        )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the server until interrupted; 2 with a one-line error for a configuration mistake."""
    parser = get_args_parser(prog)
    args = parser.parse_args(argv)
    try:
        settings = ServeSettings.from_strings(vars(args), base=ServeSettings.from_env())
        import uvicorn

        from facevib.serve import create_app

        app = create_app(settings)
    except (ValueError, FileNotFoundError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m facevib.serve"))
