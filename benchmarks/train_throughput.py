"""Training throughput of the whole step: backbone, Partial FC, margin loss, KL, optimizer.

Each variant builds a real run (``Trainer``: backbone, DDP, Partial FC, optimizer) and
times the trainer's own step, ``Trainer.train_step`` (seeding, flips and normalisation on the
device, autocast, forward, backward, clipping, the finiteness check and the masked update),
on a fixed uint8 batch already on the device, so data loading is out of the measurement.
Two timings of the same steps: each step alone, waited for (``median_s``, ``min_s``: its
latency), and the steps back to back as ``Trainer.fit`` runs them, the metrics read to the
host every ``run.log_every`` steps and the device waited for once at the end
(``samples_per_s``: the throughput ``fit()`` can reach). Variants are side by side:
baseline vs cellVIB vs Deep VIB, with torch.compile off/on where asked. On CUDA the step
runs under bf16 autocast with channels_last, and model FLOP utilisation is reported against
a peak (default 790 TFLOP/s, dense bf16 measured on one H100); the training FLOPs of an
image are counted as 3x its forward FLOPs (torch.utils.flop_counter).

    python benchmarks/train_throughput.py                         # CPU: r18 family
    python benchmarks/train_throughput.py --models r100 --compile both --out gpu.json   # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from facevib.config import TrainConfig, validate
from facevib.distributed import init_distributed
from facevib.engine import Trainer
from facevib.models import create_model

VARIANTS = (("baseline", ""), ("cellvib", "cellvib_"), ("deepvib", "deepvib_"))
# Per device: (models, batch, warmup, steps, classes). CUDA mirrors one GPU of the MS1MV3
# recipe (128 per GPU, 93,431 identities); the CPU run takes a couple of minutes.
DEFAULTS = {"cpu": (["r18"], 8, 1, 4, 1000), "cuda": (["r100"], 128, 10, 30, 93431)}


class InMemoryFaces(Dataset):
    """Random uint8 face-sized images with labels: what the Trainer's loader yields."""

    def __init__(self, num_images: int, num_classes: int, size: int = 112, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, num_classes, (num_images,), generator=generator)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def forward_flops(name: str, kwargs: dict[str, Any]) -> float:
    """Forward FLOPs per image of a training-mode forward with KL (sigma branches included)."""
    model = create_model(name, **kwargs)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, 3, 112, 112), return_kl=True)
    return counter.get_total_flops() / 2


def measure(args: argparse.Namespace, name: str, compiled: bool, output: Path) -> dict[str, Any]:
    """Step latency (median, best) and back-to-back throughput of one variant's training step."""
    cfg = TrainConfig()
    cfg.model.name = name
    cfg.model.kwargs = dict(args.model_kwargs)
    cfg.data.rec = "<in memory>"
    cfg.data.batch_size = args.batch
    cfg.head.sample_rate = args.sample_rate
    cfg.run.output = str(output / f"{name}-{'compiled' if compiled else 'eager'}")
    cfg.run.total_steps = args.warmup + 2 * args.steps  # timed twice (see the module docstring)
    cfg.run.device = args.device
    cfg.run.amp = "auto"
    cfg.run.channels_last = args.channels_last
    cfg.run.compile = compiled
    cfg.run.compile_backend = args.compile_backend
    cfg.run.tensorboard = False
    validate(cfg)
    env = init_distributed(args.device)
    data = InMemoryFaces(args.batch, args.classes)
    trainer = Trainer(cfg, env, dataset=data)
    images, labels = data.images.to(env.device), data.labels.to(env.device)

    def step() -> None:
        # The trainer's own step: seeding, lr, flips, normalisation, channels_last, autocast,
        # forward, backward, clipping, the finiteness check, the masked update; and the
        # metrics' read every run.log_every steps, where fit() reads them.
        trainer.train_step(images, labels)
        trainer.step += 1
        if trainer.step % cfg.run.log_every == 0:
            trainer.readout.read()

    def sync() -> None:
        if env.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):  # includes compilation
        step()
    sync()
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Markers on stderr around the timed steps: with TORCH_LOGS=recompiles, a recompilation
    # logged between them happened after warm-up (benchmarks/gpu_check.py counts them).
    print(f"[timed steps begin] {name}", file=sys.stderr, flush=True)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(args.steps):  # back to back: the host queues the next step while the device works
        step()
    trainer.readout.read()
    sync()
    pipelined = (time.perf_counter() - start) / args.steps
    print(f"[timed steps end] {name}", file=sys.stderr, flush=True)
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() if env.device.type == "cuda" else None
    return {
        "median_s": median,
        "min_s": min(times),
        "pipelined_step_s": pipelined,
        "samples_per_s": args.batch / pipelined,
        "peak_memory_bytes": peak,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--models", nargs="+", default=None, help="depths, e.g. r18 r100 (cpu r18, cuda r100)")
    parser.add_argument("--variants", nargs="+", default=[v for v, _ in VARIANTS], choices=[v for v, _ in VARIANTS])
    parser.add_argument("--batch", type=int, default=None, help="images per step (cpu 8, cuda 128)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (cpu 1, cuda 10)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (cpu 4, cuda 30)")
    parser.add_argument("--classes", type=int, default=None, help="identities in the Partial FC (cpu 1000, cuda 93431)")
    parser.add_argument("--sample-rate", type=float, default=1.0, help="Partial FC sample rate")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off", help="torch.compile variants")
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (eager: trace only, for dry runs)"
    )
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC (default: on for CUDA)"
    )
    parser.add_argument("--widths", type=int, nargs=4, default=None, help="override stage widths (e.g. a narrow r18)")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="peak for MFU (H100 dense bf16: 790)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    models, batch, warmup, steps, classes = DEFAULTS[args.device]
    args.models = args.models or models
    args.batch = args.batch or batch
    args.warmup = warmup if args.warmup is None else args.warmup
    args.steps = args.steps or steps
    args.classes = args.classes or classes
    if args.channels_last is None:
        args.channels_last = args.device == "cuda"
    args.model_kwargs = {"widths": tuple(args.widths)} if args.widths else {}
    if args.batch < 2:
        parser.error(f"--batch must be >= 2 (BatchNorm in training mode), got {args.batch}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.models:
            for compiled in compile_modes:
                baseline_rate = None
                for variant, prefix in VARIANTS:
                    if variant not in args.variants:
                        continue
                    name = prefix + depth
                    result = measure(args, name, compiled, Path(tmp))
                    train_flops = 3 * forward_flops(name, args.model_kwargs)
                    if variant == "baseline":
                        baseline_rate = result["samples_per_s"]
                    rows.append(
                        {
                            "model": name,
                            "variant": variant,
                            "batch": args.batch,
                            "compile": compiled,
                            **result,
                            "ratio_to_baseline": baseline_rate / result["samples_per_s"] if baseline_rate else None,
                            "train_gflop_per_image": train_flops / 1e9,
                            "mfu": result["samples_per_s"] * train_flops / (args.peak_tflops * 1e12)
                            if args.device == "cuda"
                            else None,
                        }
                    )
                    print(_format_row(rows[-1]), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "model_kwargs")}
    info = {
        "settings": {**settings, "widths": args.widths},
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "results": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _format_row(row: dict[str, Any]) -> str:
    ratio = f"{row['ratio_to_baseline']:.3f}x" if row["ratio_to_baseline"] else "-"
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
    return (
        f"{row['model']:<14} compile={str(row['compile']):<5} {row['samples_per_s']:9.1f} samples/s  "
        f"step {1000 * row['median_s']:8.1f} ms (min {1000 * row['min_s']:.1f})  time x base {ratio:>7}  "
        f"{row['train_gflop_per_image']:6.1f} GFLOP/img  MFU {mfu}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
