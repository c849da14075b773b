"""Training-step time and saved activations of baseline vs cellVIB vs Deep VIB iResNets.

One step = zero_grad, forward with ``return_kl=True``, a proxy loss (mean squared
embedding + sum_i beta_i KL_i), backward; no optimizer. Variants of one depth run
round-robin in one process: the baseline, ``cellvib_composed`` (each cell block written as
separate autograd ops: both branches in full, softplus -> log -> randn -> addcmul -> KL),
``cellvib_separate`` (the fused node of :func:`facevib.models.vib.vib_sample`, the
branches' first layers run one by one), ``cellvib_merged`` (the fused node and the
branches' BN-conv-BN-PReLU merged in every block, :mod:`facevib.models.shared_input`),
``cellvib`` (what training runs: merged in the blocks where
:func:`~facevib.models.shared_input.merging_pays`, separate in the others),
``cellvib_compiled_sample`` (``cellvib`` with each cell's sampling step compiled by
torch.compile instead of the hand-fused node) and Deep VIB (``--variants`` picks).
Reported: median (and minimum, the least disturbed step on a shared machine) wall time
over ``--steps`` timed steps after ``--warmup`` untimed ones, images/s, the ratio to the
baseline, the median process CPU time per step and its ratio (steadier than wall time when
other processes share the cores, with ``--threads 1``), and the activation bytes autograd
saves for backward (unique storages seen by ``torch.autograd.graph.saved_tensors_hooks``,
parameters excluded). ``--profile`` adds a split of one profiled step and the ops whose
self time grew most over the baseline's.

A model is ``DEPTH[:BATCH]``; ``demo_r18`` is the demo's narrow r18 (widths 16-32-64-128,
128-d embedding, configs/synthetic_r18_cellvib.py):

    python benchmarks/model_step.py --models r50:8 demo_r18:32 --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from facevib.models import IBasicBlock, VIBCell, create_model, gaussian_kl, reparameterize, softplus_sigma
from facevib.models.iresnet import IRESNET_LAYERS

# variant -> registered-name prefix; cellvib_composed, _separate, _merged and
# _compiled_sample are cellvib models with their cell blocks switched to another
# formulation (see _PREPARE).
VARIANTS = {
    "baseline": "",
    "cellvib_composed": "cellvib_",
    "cellvib_separate": "cellvib_",
    "cellvib_merged": "cellvib_",
    "cellvib": "cellvib_",
    "cellvib_compiled_sample": "cellvib_",
    "deepvib": "deepvib_",
}
DEFAULT_VARIANTS = ("baseline", "cellvib_composed", "cellvib", "deepvib")
# Named model shapes beyond the registered depths: name -> (depth, create_model overrides).
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "demo_r18": ("r18", {"widths": (16, 32, 64, 128), "embedding_dim": 128}),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Per device: (batch, warmup, steps); on 2 CPU cores the whole default run takes ~2-3 minutes.
DEFAULTS = {"cpu": (4, 1, 5), "cuda": (128, 5, 20)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; device-dependent defaults are filled in by :func:`main`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["r50:8", "demo_r18:32"],
        type=_model_spec,
        help=f"DEPTH[:BATCH], DEPTH one of {', '.join([*IRESNET_LAYERS, *SHAPES])}",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(DEFAULT_VARIANTS),
        help="what to time beside the baseline (always run first): cellvib_separate / cellvib_merged are "
        "the fused node with the branches' first layers one by one / merged in every block",
    )
    parser.add_argument("--batch", type=int, default=None, help="images per step without :BATCH (cpu 4, cuda 128)")
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
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="CPU only: also profile ROUNDS round-robin steps per variant and split the least disturbed one "
        "into convolutions' and other ops' self time and the time outside any op",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.profile and (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())):
        parser.error("--profile splits CPU op self times; it does not read CUDA kernels (use --device cpu)")
    # The embedding BatchNorm1d cannot train on a single image.
    if args.batch is not None and args.batch < 2:
        parser.error(f"--batch must be >= 2 (BatchNorm in training mode), got {args.batch}")
    for name, batch in args.models:
        if batch is not None and batch < 2:
            parser.error(f"--models {name}:{batch}: the batch must be >= 2 (BatchNorm in training mode)")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def _model_spec(text: str) -> tuple[str, int | None]:
    name, _, batch = text.partition(":")
    if name not in IRESNET_LAYERS and name not in SHAPES:
        raise argparse.ArgumentTypeError(f"unknown model {name!r} (expected one of {[*IRESNET_LAYERS, *SHAPES]})")
    if batch and not batch.isdigit():
        raise argparse.ArgumentTypeError(f"batch {batch!r} in {text!r} is not a positive integer")
    return name, int(batch) if batch else None


def _composed_block_forward(block: IBasicBlock, x: torch.Tensor, return_kl: bool = False):
    """A cell block as separate autograd ops: both branches in full, softplus -> log ->
    randn -> addcmul -> KL (the formulation before the fused node)."""
    identity = x if block.downsample is None else block.downsample(x)
    mu = block.residual(x)
    sigma, log_sigma = softplus_sigma(block.vib.pre_sigma(x))
    out = reparameterize(mu, sigma.to(mu.dtype)) + identity
    return (out, gaussian_kl(mu, log_sigma)) if return_kl else out


def use_composed_cells(model: torch.nn.Module) -> torch.nn.Module:
    """Make every VIB cell block of ``model`` run as separate autograd ops."""
    for block in model.modules():
        if isinstance(block, IBasicBlock) and block.vib is not None:
            block.forward = types.MethodType(_composed_block_forward, block)
    return model


def merging_heads(merge: bool) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """Keep the fused sampling node; run the branches' first layers merged in every block
    (``merge``) or one by one in every block, whatever ``merging_pays`` says."""

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        for block in model.modules():
            if isinstance(block, IBasicBlock):
                block.merge_heads = merge
        return model

    return prepare


def compiling_cell_samples(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile each VIB cell's sampling step (both bn3, softplus, the sample and the
    KL: under compile :func:`~facevib.models.vib.vib_sample` runs as plain ops, which the
    compiler fuses and whose saved tensors its partitioner picks), the rest eager."""
    for cell in model.modules():
        if isinstance(cell, VIBCell):
            cell.sample = torch.compile(cell.sample)
    return model


_PREPARE: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "cellvib_composed": use_composed_cells,
    "cellvib_separate": merging_heads(False),
    "cellvib_merged": merging_heads(True),
    "cellvib_compiled_sample": compiling_cell_samples,
}


def saved_activation_bytes(step: Callable[[], None], model: torch.nn.Module) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for backward in ``step``."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


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
    stats: dict[str, dict[str, Any]] = {name: {"times": [], "cpu_times": [], "peak": 0} for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            _synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            _synchronize(device)
            stats[name]["times"].append(time.perf_counter() - start)
            stats[name]["cpu_times"].append(time.process_time() - start_cpu)
            if device.type == "cuda":
                stats[name]["peak"] = max(stats[name]["peak"], torch.cuda.max_memory_allocated(device))
    return stats


def profile_split(steps_by_name: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict[str, float]]:
    """Per step function, one profiled step (ms) split into the self time of convolutions
    (forward and backward), the self time of every other op, and the wall time outside any
    op (Python, the autograd engine): the least disturbed of ``rounds`` round-robin steps,
    the one with the least wall time."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step()
            wall = (time.perf_counter() - start) * 1e3
            op_ms = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
            conv = sum(ms for key, ms in op_ms.items() if "convolution" in key)
            other = sum(ms for key, ms in op_ms.items() if "convolution" not in key)
            if name not in best or wall < best[name]["wall_ms"]:
                best[name] = {
                    "wall_ms": wall,
                    "conv_ms": conv,
                    "other_ms": other,
                    "outside_ms": wall - conv - other,
                    "op_ms": op_ms,
                }
    return best


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of the results."""
    header = (
        f"{'model':<14}{'variant':<25}{'params M':>10}{'median ms':>11}{'min ms':>10}{'img/s':>8}"
        f"{'x base':>8}{'x base min':>12}{'cpu ms':>9}{'x base':>8}{'saved MiB':>11}{'x base':>8}{'peak GiB':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        peak = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(
            f"{row['model']:<14}{row['variant']:<25}{row['params_m']:>10.2f}{row['median_ms']:>11.1f}"
            f"{row['min_ms']:>10.1f}{row['images_per_s']:>8.1f}{row['ratio_to_baseline']:>8.3f}"
            f"{row['min_ratio_to_baseline']:>12.3f}{row['cpu_median_ms']:>9.1f}{row['cpu_ratio_to_baseline']:>8.3f}"
            f"{row['saved_bytes'] / 2**20:>11.1f}"
            f"{row['saved_ratio_to_baseline']:>8.3f}{peak:>10}"
        )
    return "\n".join(lines)


def format_profile_table(rows: list[dict[str, Any]], rounds: int) -> str:
    """Fixed-width table of :func:`profile_split`'s figures."""
    header = (
        f"{'model':<14}{'variant':<25}{'conv ms':>10}{'x base':>8}{'other ms':>10}{'x base':>8}"
        f"{'ops x base':>12}{'outside ms':>12}{'wall ms':>10}"
    )
    lines = [f"one profiled step, the least disturbed of {rounds} rounds:", header, "-" * len(header)]
    for row in rows:
        split = row["profile"]
        base = next(r["profile"] for r in rows if r["model"] == row["model"] and r["variant"] == "baseline")
        ops = (split["conv_ms"] + split["other_ms"]) / (base["conv_ms"] + base["other_ms"])
        lines.append(
            f"{row['model']:<14}{row['variant']:<25}{split['conv_ms']:>10.1f}{split['conv_ms_ratio_to_baseline']:>8.3f}"
            f"{split['other_ms']:>10.1f}{split['other_ms_ratio_to_baseline']:>8.3f}{ops:>12.3f}"
            f"{split['outside_ms']:>12.1f}{split['wall_ms']:>10.1f}"
        )
    return "\n".join(lines)


def format_op_table(rows: list[dict[str, Any]], top: int = 10) -> str:
    """Per cellVIB/Deep VIB variant, the ``top`` ops whose profiled self time grew most over
    the baseline's: where a variant's extra time goes."""
    lines = []
    for row in rows:
        if row["variant"] == "baseline":
            continue
        base = next(r["profile"]["op_ms"] for r in rows if r["model"] == row["model"] and r["variant"] == "baseline")
        ops = row["profile"]["op_ms"]
        by_growth = sorted(ops.keys() | base.keys(), key=lambda key: base.get(key, 0.0) - ops.get(key, 0.0))
        lines.append(f"{row['model']} {row['variant']}: op self ms (baseline, variant, extra), largest extra first")
        lines.extend(
            f"  {key[:44]:<46}{base.get(key, 0.0):>9.1f}{ops.get(key, 0.0):>9.1f}"
            f"{ops.get(key, 0.0) - base.get(key, 0.0):>+9.1f}"
            for key in by_growth[:top]
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
    variants = ["baseline", *(v for v in dict.fromkeys(args.variants) if v != "baseline")]
    rows: list[dict[str, Any]] = []
    for shape, model_batch in args.models:
        depth, overrides = SHAPES.get(shape, (shape, {}))
        model_batch = model_batch or batch
        images = (torch.rand(model_batch, 3, 112, 112, device=device) * 2 - 1).contiguous(memory_format=memory_format)
        models = {}
        for variant in variants:
            model = create_model(VARIANTS[variant] + depth, **overrides)
            models[variant] = _PREPARE.get(variant, lambda m: m)(model)
        steps_by_name = {}
        saved = {}
        for variant, model in models.items():
            model.to(device=device, memory_format=memory_format).train()
            runner = torch.compile(model) if args.compile else model
            steps_by_name[variant] = make_step(runner, images, dtype)
            saved[variant] = saved_activation_bytes(steps_by_name[variant], model)
        stats = time_interleaved(steps_by_name, device, warmup, steps)
        split = profile_split(steps_by_name, args.profile) if args.profile else {}
        baseline_ms = statistics.median(stats["baseline"]["times"]) * 1e3
        baseline_min_ms = min(stats["baseline"]["times"]) * 1e3
        baseline_cpu_ms = statistics.median(stats["baseline"]["cpu_times"]) * 1e3
        for variant in variants:
            prefix = VARIANTS[variant]
            median_ms = statistics.median(stats[variant]["times"]) * 1e3
            min_ms = min(stats[variant]["times"]) * 1e3
            cpu_ms = statistics.median(stats[variant]["cpu_times"]) * 1e3
            rows.append(
                {
                    "model": shape,
                    "depth": depth,
                    "variant": variant,
                    "registered": prefix + depth,
                    "overrides": {
                        key: list(value) if isinstance(value, tuple) else value for key, value in overrides.items()
                    },
                    "batch": model_batch,
                    "params_m": sum(p.numel() for p in models[variant].parameters()) / 1e6,
                    "median_ms": median_ms,
                    "min_ms": min_ms,
                    "step_ms": [t * 1e3 for t in stats[variant]["times"]],
                    "images_per_s": model_batch / (median_ms / 1e3),
                    "ratio_to_baseline": median_ms / baseline_ms,
                    "min_ratio_to_baseline": min_ms / baseline_min_ms,
                    "cpu_median_ms": cpu_ms,
                    "step_cpu_ms": [t * 1e3 for t in stats[variant]["cpu_times"]],
                    "cpu_ratio_to_baseline": cpu_ms / baseline_cpu_ms,
                    "saved_bytes": saved[variant],
                    "saved_ratio_to_baseline": saved[variant] / saved["baseline"],
                    "peak_memory_gib": stats[variant]["peak"] / 2**30 if device.type == "cuda" else None,
                }
            )
            if split:
                rows[-1]["profile"] = {
                    **split[variant],
                    **{
                        f"{key}_ratio_to_baseline": split[variant][key] / split["baseline"][key]
                        for key in ("conv_ms", "other_ms", "wall_ms")
                    },
                }
            print(f"{shape} {variant}: {median_ms:.1f} ms/step", file=sys.stderr, flush=True)
        del models, steps_by_name

    results = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "default_batch": batch,
        "warmup": warmup,
        "steps": steps,
        "dtype": dtype_name,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "results": rows,
    }
    print(
        f"device={results['device']} threads={results['threads']} torch={results['torch']} dtype={dtype_name} "
        f"channels_last={args.channels_last} compile={args.compile} steps={steps} (median after {warmup} warmup)"
    )
    print(format_table(rows))
    if args.profile:
        print(format_profile_table(rows, args.profile))
        print(format_op_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
