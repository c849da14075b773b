"""HTTP serving throughput and latency against bare ONNX Runtime, batching on vs off, one run.

1. Bare ONNX Runtime: the same file, the same threads, at several batch sizes; the best
   images/s is the reference (what the hardware gives without HTTP, decoding or queueing).
2. For each server variant (``--max-batch 32`` = batching on, ``--max-batch 1`` = off) a real
   server process (``serve/app.py``) is started; a *separate* load process keeps C requests in
   flight (C = 1, 8, 32, 64), each request one aligned 112x112 JPEG as base64 JSON, and counts
   responses completed inside the measuring window (after a warm-up) for p50/p99 latency and
   throughput.

The table gives img/s, latency and the ratio to bare ONNX Runtime; ``--out`` writes JSON.
The issue's goals: on CPU with r100, server img/s at C=32 >= 0.85x bare ORT, and batching on
>= off; on a GPU, batching >= 3x off at C=32.

    python benchmarks/serve_load.py --network r100 --duration 20 --out serve_r100.json
    python benchmarks/serve_load.py --model model.onnx --device cuda --concurrency 1 8 32 64 128
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facevib.serve.launch import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="an ONNX file written by facevib.export")
    source.add_argument("--network", help="export this registry model (random weights), e.g. r100, r50, r18")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="shortest measuring window per cell, seconds")
    parser.add_argument(
        "--rounds",
        type=float,
        default=3.0,
        help="the window also lasts at least this many times C / (bare ORT img/s), so slow models and high "
        "concurrency still complete several rounds of requests inside it",
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="unmeasured seconds first (default: one round, >= 1 s)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="batching-on variant (off is always 1)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu", help="server device: cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--ort-batches", type=int, nargs="+", default=[1, 8, 16, 32], help="bare ORT batch sizes")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    # Internal: the load generator runs as its own process.
    parser.add_argument("--load-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--body", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- load generator


async def _load(url: str, body: bytes, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    import httpx

    start = time.perf_counter()
    measure_from, measure_to = start + warmup, start + warmup + duration
    latencies: list[float] = []
    finished: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"content-type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < measure_to:
            sent = time.perf_counter()
            response = await client.post(f"{url}/v1/embed", content=body, headers=headers)
            done = time.perf_counter()
            if measure_from <= done <= measure_to:
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    latencies.append(done - sent)
                    finished.append(done)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    lat = np.array(latencies) if latencies else np.array([np.nan])
    # Rate between the first and the last completion in the window: responses of one batch
    # arrive together, so counting them over a fixed window would be off by up to a batch.
    first, last = (min(finished), max(finished)) if finished else (0.0, 0.0)
    after_first = sum(1 for t in finished if t > first)
    rate = after_first / (last - first) if last > first else float("nan")
    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "statuses": statuses,
        "img_per_s": rate,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
    }


def run_load(url: str, body_file: Path, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    """Run the load generator in its own process (so it does not share the GIL with anything)."""
    cmd = [
        sys.executable,
        __file__,
        "--load-worker",
        url,
        "--body",
        str(body_file),
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--network",
        "unused",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=warmup + duration + 900)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- pieces


def export_network(name: str, folder: Path) -> Path:
    import torch

    from facevib.export import export_onnx
    from facevib.models import create_model

    torch.manual_seed(0)
    return export_onnx(create_model(name).eval(), folder / f"{name}.onnx", dynamo=False)


def request_body(folder: Path) -> Path:
    """One aligned crop of a real face (skimage's astronaut) as the JSON body of /v1/embed."""
    import cv2
    import skimage.data

    from facevib.align import norm_crop

    landmarks = np.array([[203.0, 101.0], [246.5, 102.0], [225.0, 127.0], [203.5, 143.0], [245.0, 141.0]])
    crop = norm_crop(skimage.data.astronaut(), landmarks)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    body = json.dumps({"images": [{"data": base64.b64encode(jpeg.tobytes()).decode(), "aligned": True}]})
    path = folder / "body.json"
    path.write_text(body)
    return path


def bare_ort(model: Path, threads: int, batches: Sequence[int], seconds: float, device: str = "cpu") -> dict[str, Any]:
    """images/s of ONNX Runtime alone at each batch size (``threads`` intra-op), on the
    provider the server gets for ``device`` (CUDA for ``cuda``/``auto`` when available)."""
    import onnxruntime as ort

    from facevib.serve.runtime import cpu_count

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if (device == "auto" or device.startswith("cuda")) and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
    name = session.get_inputs()[0].name
    out: dict[str, Any] = {}
    for batch in batches:
        x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32)
        session.run(None, {name: x})  # warm-up
        runs, started = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - started < seconds:
            session.run(None, {name: x})
            runs += 1
        out[str(batch)] = batch * runs / (time.perf_counter() - started)
    best = max(out, key=out.get)
    return {"img_per_s_by_batch": out, "best_batch": int(best), "best_img_per_s": out[best]}


def start_server(model: Path, args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, str]:

    port = free_port()
    cmd = [
        sys.executable,
        str(ROOT / "serve" / "app.py"),
        "--model",
        str(model),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-delay-ms",
        str(args.max_delay_ms),
        "--device",
        args.device,
        "--intra-op-threads",
        str(args.threads),
        "--max-queue",
        "1024",
        "--request-timeout-s",
        "600",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:  # /health runs a real inference: an r100 batch on a busy CPU can take a while
        wait_healthy(url, proc, timeout=300, request_timeout=60, poll_s=0.5)
    except RuntimeError as err:
        proc.kill()
        raise RuntimeError(f"{err}: {proc.communicate()[1][-2000:]}") from None
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def print_table(results: dict[str, Any]) -> None:
    ref = results["bare_ort"]["best_img_per_s"]
    print(
        f"\nmodel {results['model']} | bare ONNX Runtime: {ref:.2f} img/s at batch {results['bare_ort']['best_batch']} "
        f"({', '.join(f'b{k}: {v:.2f}' for k, v in results['bare_ort']['img_per_s_by_batch'].items())})"
    )
    print(f"{'variant':<14}{'conc':>6}{'img/s':>10}{'x bare':>8}{'p50 ms':>10}{'p99 ms':>10}{'done':>7}")
    for variant, cells in results["server"].items():
        for cell in cells:
            print(
                f"{variant:<14}{cell['concurrency']:>6}{cell['img_per_s']:>10.2f}{cell['img_per_s'] / ref:>8.2f}"
                f"{cell['p50_ms']:>10.1f}{cell['p99_ms']:>10.1f}{cell['completed']:>7}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_worker:
        warmup = args.warmup or 0.0
        body = args.body.read_bytes()
        result = asyncio.run(_load(args.load_worker, body, args.concurrency[0], warmup, args.duration))
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        folder = Path(tmp)
        model = args.model or export_network(args.network, folder)
        body = request_body(folder)
        results: dict[str, Any] = {
            "model": str(args.network or args.model),
            "device": args.device,
            "threads": args.threads,
            "min_window_s": args.duration,
            "rounds": args.rounds,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        }
        print(f"bare ONNX Runtime on {model.name} ...", flush=True)
        results["bare_ort"] = bare_ort(
            model, args.threads, args.ort_batches, seconds=max(3.0, args.duration / 2), device=args.device
        )
        results["server"] = {}
        for variant, max_batch in ((f"batch {args.max_batch}", args.max_batch), ("batch 1 (off)", 1)):
            proc, url = start_server(model, args, max_batch)
            try:
                cells = []
                for concurrency in args.concurrency:
                    one_round = concurrency / results["bare_ort"]["best_img_per_s"]
                    window = max(args.duration, args.rounds * one_round)
                    settle = args.warmup if args.warmup is not None else max(1.0, 1.5 * one_round)
                    print(f"{variant}: concurrency {concurrency}, {settle:.0f} s + {window:.0f} s ...", flush=True)
                    cell = run_load(url, body, concurrency, settle, window)
                    cells.append({**cell, "warmup_s": settle, "window_s": window})
                results["server"][variant] = cells
            finally:
                stop_server(proc)
        # Again at the end: on a shared machine the load of other processes drifts, and the
        # better of the two measurements is the (conservative) reference.
        print("bare ONNX Runtime again ...", flush=True)
        results["bare_ort_first"] = results["bare_ort"]
        results["bare_ort_last"] = bare_ort(
            model, args.threads, args.ort_batches, seconds=max(3.0, args.duration / 2), device=args.device
        )
        results["bare_ort"] = max(
            results["bare_ort_first"], results["bare_ort_last"], key=lambda r: r["best_img_per_s"]
        )
    ref = results["bare_ort"]["best_img_per_s"]
    on, off = results["server"].values()
    by_c = {c["concurrency"]: c for c in on}
    off_by_c = {c["concurrency"]: c for c in off}
    if 32 in by_c:
        results["ratio_c32_to_bare"] = by_c[32]["img_per_s"] / ref
        results["batching_on_over_off_c32"] = by_c[32]["img_per_s"] / max(off_by_c[32]["img_per_s"], 1e-9)
    print_table(results)
    if "ratio_c32_to_bare" in results:
        print(
            f"\nC=32: server / bare ORT = {results['ratio_c32_to_bare']:.2f}; "
            f"batching on / off = {results['batching_on_over_off_c32']:.2f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
