"""A float32 and a float16 export of one model, timed side by side on ONNX Runtime in one run.

Both files embed the same batch of aligned crops (from any labelled set ``--calibrate`` takes),
alternately, ``--repeats`` times each; the best time of each and their ratio are printed and
written as JSON. On the CPU provider the float16 file runs its nodes in float32 after inserted
casts (see :mod:`facevib.export.precision`), so expect no gain there.

    python benchmarks/fp16_speed.py --fp32 r18.onnx --fp16 r18_fp16.onnx --data /tmp/syn60/IJBC --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from facevib.eval.embed import Embedder
from facevib.export.precision import parity_crops


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", required=True, help="the float32 .onnx file")
    parser.add_argument("--fp16", required=True, help="the float16 .onnx file (python -m facevib.export --fp16)")
    parser.add_argument("--data", required=True, help="labelled faces for the batch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="JSON file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    images = parity_crops(args.data, count=args.batch).images
    embedders = {
        name: Embedder.from_onnx(path, device=args.device, batch_size=args.batch)
        for name, path in (("float32", args.fp32), ("float16", args.fp16))
    }
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(args.repeats):
        for name, embedder in embedders.items():
            started = time.perf_counter()
            embedder.embed(images)
            times[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in times.items()}
    result = {
        "batch": len(images),
        "backends": {name: e.backend for name, e in embedders.items()},
        "best_s": best,
        "float16_over_float32": best["float16"] / best["float32"],
    }
    print(f"{'file':<8} {'backend':<40} {'best s':>8}")
    for name in embedders:
        print(f"{name:<8} {embedders[name].backend:<40} {best[name]:>8.3f}")
    print(f"float16 / float32 time: {result['float16_over_float32']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
