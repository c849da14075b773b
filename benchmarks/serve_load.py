"""HTTP serving throughput and latency against bare ONNX Runtime, batching on vs off, one run.

1. Bare ONNX Runtime: the same file, the same threads, at several batch sizes (measured before
   and after the servers; the faster of the two runs is kept). Two references come of it:
   **batch 1** (``x bare b1``: what a client gets calling ONNX Runtime itself, one image per
   call, without the server) and the **best batch** (``x bare best``: what the hardware gives
   without HTTP, decoding or queueing; a server can only approach it).
2. For each server variant (``--max-batch 32`` = batching on, ``--max-batch 1`` = off, and any
   ``--variant NAME=FLAGS``) a real server process (``serve/app.py``) is started (all of them
   first; then each concurrency is measured on every variant in turn, so that a drift of the
   machine's load spreads over the variants); a separate load process keeps C requests in flight (C = 1, 8, 32, 64), each request one aligned
   112x112 JPEG as base64 JSON, and counts responses completed inside the measuring window
   (after a warm-up) for p50/p99 latency and throughput. Meanwhile a third process sends
   ``GET /health/live`` every 50 ms on its own connection, as a kubelet would: its p50/p99
   latency is reported per cell. (``--probe-from load`` sends the probes from the load process
   instead, whose own event loop then adds its delays to the probe's.) Each variant's
   ``/v1/info`` runtime section (providers in use, threads, pipeline) is kept in the JSON, and
   per cell the CPU time of the server's event-loop thread and of the whole server per second
   (``loop cpu``: 1.0 = one core busy; Linux /proc).

The table gives img/s, latency and both ratios; ``--out`` writes JSON. The issue's goals: on
CPU, server img/s at C=32 >= 1.1x bare ORT at batch 1, and batching on >= off; on a GPU,
batching >= 3x off at C=32.

    python benchmarks/serve_load.py --network r18 --duration 5 --out serve_r18.json
    python benchmarks/serve_load.py --network r100 --duration 20 --out serve_r100.json
    python benchmarks/serve_load.py --model model.onnx --device cuda --concurrency 1 8 32 64 128
    python benchmarks/serve_load.py --network r18 --concurrency 32 --variant "spinning=--ort-spinning true"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shlex
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
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32, 64],
        help="clients; 0 measures the /health/live probe alone on an idle server",
    )
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
    parser.add_argument(
        "--ort-batches", type=int, nargs="+", default=[1, 8, 16, 32], help="bare ORT batch sizes (1 is always run)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="one more server variant (batching on) with these server flags, e.g. 'nice 0=--worker-nice 0'",
    )
    parser.add_argument(
        "--probe-from",
        choices=("own", "load"),
        default="own",
        help="send the /health/live probes from their own process (default) or from the load process",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    # Internal: the load generator and the prober run as their own processes.
    parser.add_argument("--load-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--with-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--body", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for spec in args.variant:
        if "=" not in spec or not spec.partition("=")[0].strip():
            parser.error(f"--variant {spec!r}: expected NAME=FLAGS")
    return args


# ---------------------------------------------------------------------------- load generator


PROBE_PERIOD_S = 0.05


def _wait_for_start() -> float:
    """A worker says it is ready (imports done) and gets the shared start time (``time.time()``)."""
    print("ready", flush=True)
    return float(sys.stdin.readline())


def _percentiles(values: list[float], prefix: str) -> dict[str, float]:
    array = np.array(values) if values else np.array([np.nan])
    return {
        f"{prefix}p50_ms": float(np.percentile(array, 50) * 1e3),
        f"{prefix}p99_ms": float(np.percentile(array, 99) * 1e3),
    }


async def _probe(url: str, measure_from: float, measure_to: float) -> dict[str, Any]:
    """``GET /health/live`` every 50 ms on its own connection, as a liveness probe would;
    latencies of the probes sent inside the window."""
    import httpx

    latencies: list[float] = []
    failed = 0
    async with httpx.AsyncClient(timeout=10) as client:
        while time.time() < measure_to:
            sent = time.time()
            try:
                ok = (await client.get(f"{url}/health/live")).status_code == 200
            except httpx.HTTPError:
                ok = False
            done = time.time()
            if sent >= measure_from:
                if ok:
                    latencies.append(done - sent)
                else:
                    failed += 1
            await asyncio.sleep(max(0.0, PROBE_PERIOD_S - (done - sent)))
    return {"live_probes": len(latencies), "live_failed": failed, **_percentiles(latencies, "live_")}


async def _load(
    url: str, body: bytes, concurrency: int, start: float, warmup: float, duration: float, with_probe: bool
) -> dict[str, Any]:
    import httpx

    measure_from, measure_to = start + warmup, start + warmup + duration
    latencies: list[float] = []
    finished: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"content-type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        while time.time() < measure_to:
            sent = time.time()
            response = await client.post(f"{url}/v1/embed", content=body, headers=headers)
            done = time.time()
            if measure_from <= done <= measure_to:
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    latencies.append(done - sent)
                    finished.append(done)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        probe = asyncio.ensure_future(_probe(url, measure_from, measure_to)) if with_probe else None
        workers = [asyncio.ensure_future(worker(client)) for _ in range(concurrency)]
        # At the window's end the requests still in flight are abandoned, not awaited: they
        # would not count, and at high concurrency draining them takes longer than the window.
        remaining = max(0.0, measure_to - time.time())
        if workers:
            await asyncio.wait(workers, timeout=remaining)
        else:  # concurrency 0: the probe alone, on an idle server (the machine's own delay)
            await asyncio.sleep(remaining)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        outcomes = [await probe] if probe is not None else []
    # Rate between the first and the last completion in the window: responses of one batch
    # arrive together, so counting them over a fixed window would be off by up to a batch.
    # When those span less than half the window (one or two batches in it: a window too short
    # for a slow machine) that rate means nothing, and the plain count over the window is used.
    first, last = (min(finished), max(finished)) if finished else (0.0, 0.0)
    after_first = sum(1 for t in finished if t > first)
    spanned = last - first >= 0.5 * duration
    rate = after_first / (last - first) if spanned else len(finished) / duration
    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "statuses": statuses,
        "img_per_s": rate,
        "rate_from": "first_to_last_completion" if spanned else "window",
        **_percentiles(latencies, ""),
        **(outcomes[-1] if with_probe else {}),
    }


def _worker(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, __file__, *args, "--network", "unused"]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"worker {args[0]} did not start: {process.communicate()}")
    return process


def run_load(
    url: str, body_file: Path, concurrency: int, warmup: float, duration: float, probe_from: str = "own"
) -> dict[str, Any]:
    """Run the load generator and the prober in their own processes (so that neither shares a
    GIL or an event loop with the server or each other), over one shared window."""
    window = ["--warmup", str(warmup), "--duration", str(duration)]
    load_args = ["--load-worker", url, "--body", str(body_file), "--concurrency", str(concurrency), *window]
    workers = [_worker(load_args + (["--with-probe"] if probe_from == "load" else []))]
    if probe_from == "own":
        workers.append(_worker(["--probe-worker", url, *window]))
    start = time.time() + 0.1
    outputs = []
    for process in workers:
        assert process.stdin is not None
        process.stdin.write(f"{start!r}\n")
        process.stdin.flush()
    for process in workers:
        out, _ = process.communicate(timeout=warmup + duration + 900)
        if process.returncode != 0:
            raise RuntimeError(f"a load worker failed with status {process.returncode}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return {k: v for output in outputs for k, v in output.items()}


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


def start_server(
    model: Path, args: argparse.Namespace, max_batch: int, flags: Sequence[str] = ()
) -> tuple[subprocess.Popen, str]:
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
        *flags,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:  # /health runs a real inference: an r100 batch on a busy CPU can take a while
        wait_healthy(url, proc, timeout=300, request_timeout=60, poll_s=0.5)
    except RuntimeError as err:
        proc.kill()
        raise RuntimeError(f"{err}: {proc.communicate()[1][-2000:]}") from None
    return proc, url


def server_runtime(url: str) -> dict[str, Any]:
    """The server's ``/v1/info`` runtime section: providers in use, threads, pipeline depth."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/info", timeout=60) as response:
        return json.loads(response.read())["runtime"]


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """CPU time (user + system) of process ``pid``, or of its thread ``tid``, from /proc (Linux)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def variants(args: argparse.Namespace) -> list[tuple[str, int, list[str]]]:
    """``(name, max_batch, extra server flags)``: batching on, off, then each ``--variant``."""
    out = [(f"batch {args.max_batch}", args.max_batch, []), ("batch 1 (off)", 1, [])]
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        out.append((name.strip(), args.max_batch, shlex.split(flags)))
    return out


def print_table(results: dict[str, Any]) -> None:
    bare = results["bare_ort"]
    b1, best = bare["img_per_s_by_batch"]["1"], bare["best_img_per_s"]
    print(
        f"\nmodel {results['model']} | bare ONNX Runtime: batch 1 {b1:.2f} img/s, best {best:.2f} img/s at batch "
        f"{bare['best_batch']} ({', '.join(f'b{k}: {v:.2f}' for k, v in bare['img_per_s_by_batch'].items())})"
    )
    print(
        f"{'variant':<16}{'conc':>6}{'img/s':>9}{'x b1':>7}{'x best':>8}{'p50 ms':>10}{'p99 ms':>10}{'done':>7}"
        f"{'live p50':>10}{'live p99':>10}{'loop cpu':>10}"
    )
    for variant, cells in results["server"].items():
        for cell in cells:
            print(
                f"{variant:<16}{cell['concurrency']:>6}{cell['img_per_s']:>9.2f}{cell['img_per_s'] / b1:>7.2f}"
                f"{cell['img_per_s'] / best:>8.2f}{cell['p50_ms']:>10.1f}{cell['p99_ms']:>10.1f}{cell['completed']:>7}"
                f"{cell['live_p50_ms']:>10.2f}{cell['live_p99_ms']:>10.2f}{cell.get('loop_cpu', float('nan')):>10.2f}"
            )


def summary(results: dict[str, Any], on: str, off: str) -> dict[str, float]:
    """The C=32 ratios: to bare ORT at batch 1 and at its best batch, and batching on / off."""
    bare = results["bare_ort"]
    by_c = {c["concurrency"]: c for c in results["server"][on]}
    off_by_c = {c["concurrency"]: c for c in results["server"][off]}
    if 32 not in by_c:
        return {}
    rate = by_c[32]["img_per_s"]
    return {
        "ratio_c32_to_bare_b1": rate / bare["img_per_s_by_batch"]["1"],
        "ratio_c32_to_bare_best": rate / bare["best_img_per_s"],
        "batching_on_over_off_c32": rate / max(off_by_c[32]["img_per_s"], 1e-9),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_worker or args.probe_worker:
        start = _wait_for_start()
        warmup = args.warmup or 0.0
        if args.probe_worker:
            work = _probe(args.probe_worker, start + warmup, start + warmup + args.duration)
        else:
            body = args.body.read_bytes()
            concurrency = args.concurrency[0]
            work = _load(args.load_worker, body, concurrency, start, warmup, args.duration, args.with_probe)
        print(json.dumps(asyncio.run(work)))
        return 0
    ort_batches = sorted({1, *args.ort_batches})
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
            "probe_from": args.probe_from,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        }
        print(f"bare ONNX Runtime on {model.name} ...", flush=True)
        seconds = max(3.0, args.duration / 2)
        results["bare_ort_first"] = bare_ort(model, args.threads, ort_batches, seconds=seconds, device=args.device)
        results["server"], results["server_runtime"] = {}, {}
        # Every variant's server runs from the start (idle ones only run a health check every
        # 10 s), and the cells are taken concurrency by concurrency, variant after variant, so
        # a drift in the machine's load spreads over the variants instead of favouring one.
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            for variant, max_batch, flags in variants(args):
                servers[variant] = start_server(model, args, max_batch, flags)
                results["server_runtime"][variant] = {"flags": flags, **server_runtime(servers[variant][1])}
                results["server"][variant] = []
            for concurrency in args.concurrency:
                one_round = concurrency / results["bare_ort_first"]["best_img_per_s"]
                window = max(args.duration, args.rounds * one_round)
                settle = args.warmup if args.warmup is not None else max(1.0, 1.5 * one_round)
                for variant, (proc, url) in servers.items():
                    print(f"{variant}: concurrency {concurrency}, {settle:.0f} s + {window:.0f} s ...", flush=True)
                    # The event loop runs in the server's main thread (its thread id is the pid):
                    # its share of one core says how busy the loop was while probes waited.
                    before = (time.time(), cpu_seconds(proc.pid, proc.pid), cpu_seconds(proc.pid))
                    cell = run_load(url, body, concurrency, settle, window, args.probe_from)
                    after = (time.time(), cpu_seconds(proc.pid, proc.pid), cpu_seconds(proc.pid))
                    usage = {}
                    if None not in before and None not in after:
                        wall = after[0] - before[0]
                        usage = {"loop_cpu": (after[1] - before[1]) / wall, "server_cpu": (after[2] - before[2]) / wall}
                    results["server"][variant].append({**cell, **usage, "warmup_s": settle, "window_s": window})
                    _write(args.out, results)  # a run stopped part-way keeps the cells it measured
        finally:
            for proc, _ in servers.values():
                stop_server(proc)
        # Again at the end: on a shared machine the load of other processes drifts, and the
        # faster of the two measurements is the (conservative) reference, batch size by batch size.
        print("bare ONNX Runtime again ...", flush=True)
        results["bare_ort_last"] = bare_ort(model, args.threads, ort_batches, seconds=seconds, device=args.device)
        results["bare_ort"] = _faster(results["bare_ort_first"], results["bare_ort_last"])
    names = [name for name, _, _ in variants(args)]
    results.update(summary(results, names[0], names[1]))
    print_table(results)
    if "ratio_c32_to_bare_b1" in results:
        print(
            f"\nC=32: server / bare ORT batch 1 = {results['ratio_c32_to_bare_b1']:.2f}; server / bare ORT best batch = "
            f"{results['ratio_c32_to_bare_best']:.2f}; batching on / off = {results['batching_on_over_off_c32']:.2f}"
        )
    if args.out:
        _write(args.out, results)
        print(f"wrote {args.out}")
    return 0


def _write(out: Path | None, results: dict[str, Any]) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))


def _faster(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Per batch size the faster of two bare ORT runs, and the best batch of those."""
    by_batch = {
        k: max(first["img_per_s_by_batch"][k], last["img_per_s_by_batch"][k]) for k in first["img_per_s_by_batch"]
    }
    best = max(by_batch, key=by_batch.get)
    return {"img_per_s_by_batch": by_batch, "best_batch": int(best), "best_img_per_s": by_batch[best]}


if __name__ == "__main__":
    sys.exit(main())
