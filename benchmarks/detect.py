"""Face detection latency and detect+embed throughput on CPU (and CUDA when asked), one run.

1. Detection latency of the built-in MTCNN (``facevib.detect``) on a 640x480 and a 1280x720
   photo (the two real face photos of the tests pasted at several sizes on a textured
   background): median and p90 milliseconds over ``--repeats`` calls, side by side for one
   ONNX Runtime thread vs all cores and for ``min_face_size`` 20 (the default) vs 40.
2. Detect+embed throughput: (a) in process: detect -> ``facevib.align.norm_crop`` ->
   embedding model on ONNX Runtime, sequentially; (b) through the HTTP server
   (``serve/app.py --detector mtcnn``) with C requests in flight, each one 640x480 photo, vs
   the same faces sent as aligned crops (the cost of detection in the server).

The embedding model is a registry network with random weights (``--network``, default r18)
exported with ``facevib.export``. The table goes to stdout; ``--out`` writes JSON.

    python benchmarks/detect.py --out detect.json
    python benchmarks/detect.py --network r50 --repeats 20 --concurrency 1 4 8 --device cuda
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

import cv2
import numpy as np

from facevib.serve.launch import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="detection calls per latency cell")
    parser.add_argument("--network", default="r18", help="embedding network (random weights) for part 2")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="requests in flight (server)")
    parser.add_argument("--duration", type=float, default=8.0, help="measuring window per server cell, seconds")
    parser.add_argument("--device", default="cpu", help="server device: cpu, cuda, auto")
    parser.add_argument("--no-server", action="store_true", help="skip part 2(b)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- photos


def _real_faces() -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    import matplotlib.cbook
    import skimage.data

    grace = cv2.cvtColor(
        cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), cv2.COLOR_BGR2RGB
    )
    return [(skimage.data.astronaut(), (150, 40, 300, 200)), (grace, (150, 100, 380, 360))]


def make_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured ``height x width`` photo with faces pasted at 3 sizes (about 12 %, 20 % and 30 % of the width)."""
    rng = np.random.default_rng(seed)
    photo = cv2.GaussianBlur(rng.integers(60, 200, (height, width, 3), dtype=np.uint8), (0, 0), 4)
    faces = _real_faces()
    x = width // 20
    for k, frac in enumerate((0.12, 0.2, 0.3)):
        image, (x1, y1, x2, y2) = faces[k % 2]
        size = int(width * frac)
        crop = cv2.resize(
            image[y1:y2, x1:x2], (size, round((y2 - y1) * size / (x2 - x1))), interpolation=cv2.INTER_AREA
        )
        y = min(height - crop.shape[0], height // 6 + 30 * k)
        photo[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        x += size + width // 30
    return photo


def jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return data.tobytes()


# ---------------------------------------------------------------------------- part 1


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "runs": len(samples)}


def detection_latency(photos: dict[str, np.ndarray], repeats: int) -> list[dict[str, Any]]:
    from facevib.detect.mtcnn import MTCNN, MTCNNConfig
    from facevib.serve.runtime import cpu_count

    rows = []
    for threads in (1, cpu_count()):
        for min_face in (20.0, 40.0):
            detector = MTCNN(MTCNNConfig(min_face_size=min_face), threads=threads)
            for name, photo in photos.items():
                faces = detector.detect(photo)  # warm-up: first run of each input shape
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    detector.detect(photo)
                    times.append(time.perf_counter() - started)
                rows.append(
                    {"photo": name, "threads": threads, "min_face_size": min_face, "faces": len(faces)}
                    | _percentiles(times)
                )
    return rows


# ---------------------------------------------------------------------------- part 2


def export_network(name: str, folder: Path) -> Path:
    import torch

    from facevib.export import export_onnx
    from facevib.models import create_model

    torch.manual_seed(0)
    return export_onnx(create_model(name).eval(), folder / f"{name}.onnx", dynamo=False)


def in_process(model: Path, photo: np.ndarray, seconds: float) -> dict[str, Any]:
    """Sequential detect -> align -> embed on one photo, all on ONNX Runtime (all cores)."""
    import onnxruntime as ort

    from facevib.align import norm_crop_batch
    from facevib.detect import load_detector
    from facevib.serve.images import normalise

    detector = load_detector()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    detect_s = embed_s = 0.0
    faces_done = runs = 0
    started = time.perf_counter()
    while runs < 2 or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        faces = detector.detect(photo)
        t1 = time.perf_counter()
        crops = norm_crop_batch([photo] * len(faces), np.stack([f.landmarks for f in faces]))
        session.run(None, {name: normalise(crops, (127.5,) * 3, (127.5,) * 3)})
        t2 = time.perf_counter()
        detect_s += t1 - t0
        embed_s += t2 - t1
        faces_done += len(faces)
        runs += 1
    total = time.perf_counter() - started
    return {
        "photos_per_s": runs / total,
        "faces_per_s": faces_done / total,
        "detect_ms": 1e3 * detect_s / runs,
        "align_embed_ms": 1e3 * embed_s / runs,
    }


def start_server(model: Path, device: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "serve" / "app.py"), "--model", str(model), "--detector", "mtcnn"]
    cmd += ["--device", device, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=120, poll_s=0.3)
    except RuntimeError as err:
        proc.kill()
        raise RuntimeError(f"{err}: {proc.communicate()[1][-2000:]}") from None
    return proc, url


async def _load(url: str, body: bytes, concurrency: int, duration: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    faces = 0
    stop = time.perf_counter() + duration
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker() -> None:
            nonlocal faces
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await client.post(
                    f"{url}/v1/embed", content=body, headers={"content-type": "application/json"}
                )
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                faces += sum(len(r.get("faces", [])) for r in response.json()["results"])

        await client.post(f"{url}/v1/embed", content=body, headers={"content-type": "application/json"})  # warm-up
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "requests_per_s": len(latencies) / elapsed,
        "faces_per_s": faces / elapsed,
        "p50_ms": 1e3 * float(np.median(latencies)),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
    }


def server_throughput(model: Path, photo: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    from facevib.align import norm_crop
    from facevib.detect import load_detector

    faces = load_detector().detect(photo)
    photo_body = json.dumps({"images": [{"data": base64.b64encode(jpeg(photo)).decode(), "aligned": False}]})
    crops = [norm_crop(photo, face.landmarks) for face in faces]
    crop_body = json.dumps({"images": [{"data": base64.b64encode(jpeg(c)).decode(), "aligned": True} for c in crops]})
    proc, url = start_server(model, args.device)
    rows = []
    try:
        for concurrency in args.concurrency:
            for mode, body in (("photo (detect)", photo_body), ("aligned crops", crop_body)):
                cell = asyncio.run(_load(url, body.encode(), concurrency, args.duration))
                rows.append({"mode": mode, "concurrency": concurrency} | cell)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


# ---------------------------------------------------------------------------- report


def print_tables(results: dict[str, Any]) -> None:
    print("\n1. MTCNN detection latency (ms)")
    print(f"{'photo':>9} {'threads':>7} {'min face':>8} {'faces':>5} {'median':>8} {'p90':>8} {'vs 1 thr/20 px':>14}")
    base = {r["photo"]: r["median_ms"] for r in results["latency"] if r["threads"] == 1 and r["min_face_size"] == 20}
    for r in results["latency"]:
        ratio = base[r["photo"]] / r["median_ms"]
        print(
            f"{r['photo']:>9} {r['threads']:>7} {r['min_face_size']:>8.0f} {r['faces']:>5} "
            f"{r['median_ms']:>8.1f} {r['p90_ms']:>8.1f} {ratio:>13.2f}x"
        )
    ip = results["in_process"]
    print(
        f"\n2a. in process, {results['network']} on ONNX Runtime: {ip['photos_per_s']:.2f} photos/s, "
        f"{ip['faces_per_s']:.2f} faces/s (detect {ip['detect_ms']:.1f} ms + align/embed {ip['align_embed_ms']:.1f} ms per photo)"
    )
    if results.get("server"):
        print(
            f"\n2b. HTTP server ({results['network']}, 640x480 photo with {results['faces_per_photo']} faces per request)"
        )
        print(f"{'mode':>15} {'C':>3} {'req/s':>7} {'faces/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for r in results["server"]:
            print(
                f"{r['mode']:>15} {r['concurrency']:>3} {r['requests_per_s']:>7.2f} {r['faces_per_s']:>8.2f} "
                f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    photos = {"640x480": make_photo(480, 640, 0), "1280x720": make_photo(720, 1280, 1)}
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "network": args.network,
        "latency": detection_latency(photos, args.repeats),
    }
    with tempfile.TemporaryDirectory(prefix="detect_bench_") as tmp:
        model = export_network(args.network, Path(tmp))
        results["in_process"] = in_process(model, photos["640x480"], args.duration)
        results["faces_per_photo"] = next(r["faces"] for r in results["latency"] if r["photo"] == "640x480")
        if not args.no_server:
            results["server"] = server_throughput(model, photos["640x480"], args)
    results["machine"]["load_average_after"] = os.getloadavg()
    print_tables(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
