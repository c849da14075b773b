"""Start the server on an exported model, talk to it over HTTP like a client, stop it.

    python serve/exchange.py --model runs/demo/model.onnx --ijb-root data/synthetic/IJBC --out runs/demo/http_exchange.json
    python serve/exchange.py --url http://127.0.0.1:8000 --ijb-root /data/IJB_release/IJBC --out exchange.json

Sends GET /health and /v1/info, POST /v1/verify with the first genuine and the first impostor
template pair of the IJB protocol (loose crops + their 5 landmarks; the server aligns them),
and POST /v1/embed with skimage's astronaut photo and its landmarks; writes the transcript
(requests as sent, image data and embeddings abbreviated) to --out and prints a summary.
With --model the server is started (serve/app.py on 127.0.0.1 and a free port) and stopped
afterwards; with --url an already running server is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facevib.cli import make_parser
from facevib.data.ijb import IJB_TARGETS, read_ijb
from facevib.eval.report import write_json
from facevib.report.exchange import ServerProcess, astronaut_photo, protocol_pairs, run_exchange


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="ONNX file to serve for the exchange (python -m facevib.export)")
    where.add_argument("--url", help="base URL of a running facevib server")
    parser.add_argument("--ijb-root", required=True, help="IJB folder (meta/, loose_crop/) the pairs come from")
    parser.add_argument("--target", default="IJBC", type=str.upper, choices=IJB_TARGETS, help="IJBC or IJBB")
    parser.add_argument("--out", required=True, help="JSON file for the transcript")
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve/app.py argument (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the exchange; 0, 2 for a user mistake, 1 when the server misbehaves."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        pairs = protocol_pairs(read_ijb(args.ijb_root, args.target))
        photo = astronaut_photo(out.parent / f"{out.stem}_files")
        if args.url:
            transcript = run_exchange(args.url.rstrip("/"), pairs, photo)
        else:
            server = ServerProcess(args.model, extra_args=args.server_arg, log_path=out.with_suffix(".server.log"))
            with server as url:
                print(f"server up at {url}: {' '.join(server.command())}")
                transcript = run_exchange(url, pairs, photo)
            transcript["server_command"] = server.command()
            print("server stopped")
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 1
    write_json(out, transcript)
    for kind, answer in transcript["verify"].items():
        print(
            f"POST /v1/verify {kind:8s}: score {answer['score']:+.4f}  threshold {answer['threshold']:+.4f} "
            f"({answer['threshold_source']})  match {answer['match']}"
        )
    photo_result = transcript["photo"]
    print(
        f"POST /v1/embed  {photo_result['image']}: {photo_result['dimensions']}-d embedding, "
        f"norm {photo_result['norm']:.3f}, uncertainty {photo_result['uncertainty']}"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
