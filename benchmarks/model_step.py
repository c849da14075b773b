"""Training-step time of baseline vs cellVIB vs Deep VIB iResNets, side by side.

One step = zero_grad, forward with ``return_kl=True``, a proxy loss (mean squared
embedding + sum_i beta_i KL_i), backward; no optimizer. Reported: median (and minimum, the
least disturbed step on a shared machine) over ``--steps``
timed steps after ``--warmup`` untimed ones, images/s, and the ratio to the baseline of the
same depth (the issue's goal on GPU: cellVIB-r100 <= 1.35x).

    python benchmarks/model_step.py --models r18 r50 r100 --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from facevib.models import create_model
from facevib.models.iresnet import IRESNET_LAYERS

VARIANTS = (("baseline", ""), ("cellvib", "cellvib_"), ("deepvib", "deepvib_"))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Per device: (batch, warmup, steps); on 2 CPU cores the whole default run takes ~2-3 minutes.
DEFAULTS = {"cpu": (4, 1, 5), "cuda": (128, 5, 20)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; device-dependent defaults are filled in by :func:`main`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["r18", "r50", "r100"], choices=list(IRESNET_LAYERS))
    parser.add_argument("--batch", type=int, default=None, help="images per step (cpu 4, cuda 128)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (cpu 5, cuda 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (cpu 1, cuda 5)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="autocast dtype (auto: cuda bf16, cpu fp32)"
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and input")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model first")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 is steadier when the cores are shared",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    # The embedding BatchNorm1d cannot train on a single image.
    if args.batch is not None and args.batch < 2:
        parser.error(f"--batch must be >= 2 (BatchNorm in training mode), got {args.batch}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """One training step of ``model`` on ``images`` under autocast to ``dtype``."""
    device_type = images.device.type
    use_autocast = dtype != torch.float32

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=dtype, enabled=use_autocast):
            embedding, kl = model(images, return_kl=True)
            loss = embedding.float().square().mean() + model.kl_loss(kl)
        loss.backward()

    return step


def time_interleaved(
    steps_by_name: dict[str, Callable[[], None]], device: torch.device, warmup: int, steps: int
) -> dict[str, dict[str, Any]]:
    """Seconds per step and peak memory of each step function, timed round-robin.

    Interleaving (baseline, cellvib, deepvib, baseline, ...) exposes every variant to the
    same background load, so the ratios stay meaningful on a shared machine.
    """
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    stats: dict[str, dict[str, Any]] = {name: {"times": [], "peak": 0} for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            _synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            stats[name]["times"].append(time.perf_counter() - start)
            if device.type == "cuda":
                stats[name]["peak"] = max(stats[name]["peak"], torch.cuda.max_memory_allocated(device))
    return stats


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of the results."""
    header = (
        f"{'model':<14}{'variant':<10}{'params M':>10}{'median ms':>11}{'min ms':>10}{'img/s':>8}"
        f"{'x base':>8}{'x base min':>12}{'peak GiB':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        peak = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(
            f"{row['model']:<14}{row['variant']:<10}{row['params_m']:>10.2f}{row['median_ms']:>11.1f}"
            f"{row['min_ms']:>10.1f}{row['images_per_s']:>8.1f}{row['ratio_to_baseline']:>8.3f}"
            f"{row['min_ratio_to_baseline']:>12.3f}{peak:>10}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, optionally write JSON; returns the results."""
    args = parse_args(argv)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    batch, warmup, steps = DEFAULTS[device.type]
    batch = args.batch or batch
    warmup = warmup if args.warmup is None else args.warmup
    steps = args.steps or steps
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = DTYPES[dtype_name]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images = (torch.rand(batch, 3, 112, 112, device=device) * 2 - 1).contiguous(memory_format=memory_format)

    rows: list[dict[str, Any]] = []
    for depth in args.models:
        models = {prefix + depth: create_model(prefix + depth) for _, prefix in VARIANTS}
        steps_by_name = {}
        for name, model in models.items():
            model.to(device=device, memory_format=memory_format).train()
            runner = torch.compile(model) if args.compile else model
            steps_by_name[name] = make_step(runner, images, dtype)
        stats = time_interleaved(steps_by_name, device, warmup, steps)
        baseline_ms = statistics.median(stats[depth]["times"]) * 1e3
        baseline_min_ms = min(stats[depth]["times"]) * 1e3
        for variant, prefix in VARIANTS:
            name = prefix + depth
            median_ms = statistics.median(stats[name]["times"]) * 1e3
            min_ms = min(stats[name]["times"]) * 1e3
            rows.append(
                {
                    "model": name,
                    "depth": depth,
                    "variant": variant,
                    "params_m": sum(p.numel() for p in models[name].parameters()) / 1e6,
                    "median_ms": median_ms,
                    "min_ms": min_ms,
                    "step_ms": [t * 1e3 for t in stats[name]["times"]],
                    "images_per_s": batch / (median_ms / 1e3),
                    "ratio_to_baseline": median_ms / baseline_ms,
                    "min_ratio_to_baseline": min_ms / baseline_min_ms,
                    "peak_memory_gib": stats[name]["peak"] / 2**30 if device.type == "cuda" else None,
                }
            )
            print(f"{name}: {median_ms:.1f} ms/step", file=sys.stderr, flush=True)
        del models, steps_by_name

    results = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": batch,
        "warmup": warmup,
        "steps": steps,
        "dtype": dtype_name,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "results": rows,
    }
    print(
        f"device={results['device']} threads={results['threads']} torch={results['torch']} batch={batch} dtype={dtype_name} "
        f"channels_last={args.channels_last} compile={args.compile} steps={steps} (median after {warmup} warmup)"
    )
    print(format_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
