"""Training-data throughput: facevib's RecordIO pipeline next to mxnet's own reader, same file, one run.

Variants (random access in one seeded order, the way a shuffled epoch reads; images/s):

* ``mxnet read_idx+unpack+mx.image.imdecode``: mxnet 1.9.1's own path (the reference
  the ratios are taken against), in a separate virtualenv (``benchmarks/setup_mxnet_venv.sh``:
  mxnet needs numpy < 1.24, so it is a measurement only, never a facevib dependency);
* ``... mx.image.imdecode [NaiveEngine]``: the same with ``MXNET_ENGINE_TYPE=NaiveEngine``,
  mxnet's synchronous engine, which decodes one image about twice as fast here; ratios
  are taken against the faster of the two, so that mxnet is not undersold;
* ``mxnet read_idx+unpack+cv2.imdecode``: the same read decoded with OpenCV;
* ``facevib read+decode``: ``MXFaceDataset``'s reader + ``decode_rgb`` (RGB uint8, the
  like-for-like output of the two above);
* ``facevib dataset[i]``: read + decode + random flip + normalisation to the float32
  network input (what training gets), one process;
* ``facevib DataLoader, N workers``: the same through ``torch.utils.data.DataLoader`` with
  batching, steady state after the first batch of each worker;
* ``facevib DataLoader uint8, N workers``: ``normalize=False`` samples (a quarter of the
  bytes to collate and pass between processes); the batch is normalised where it is used,
  on the GPU in training, so that step is not part of this CPU measurement.

Single-process variants run with one OpenCV and one torch thread, as a DataLoader worker
does. The page cache is warmed first, so this measures CPU, not the disk. The variants
are measured in interleaved rounds, so that load from other processes on the machine falls
on all of them alike; the table gives the best and the median round.

    python benchmarks/data_loader.py [--rec PREFIX] [--workers 1,2] [--out results.json]

Without ``--rec`` a set is written to a temporary directory by ``facevib.synth``
(or, when that module is missing, from random smooth 112x112 JPEG q95 images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from facevib.data.datasets import MXFaceDataset
from facevib.data.recordio import IndexedRecordWriter, RecordHeader, pack, unpack
from facevib.data.transforms import decode_rgb

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "mxnet read_idx+unpack+mx.image.imdecode"

# Runs inside the mxnet virtualenv: argv = rec, idx, keys file, variants ("mx,cv2"), name
# suffix. Prints one JSON line.
MXNET_SCRIPT = r"""
import json, sys, time
import cv2, numpy as np, mxnet as mx
cv2.setNumThreads(1)
rec_path, idx_path, keys_path, wanted, suffix = sys.argv[1:6]
keys = [int(line) for line in open(keys_path)]
record = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
def mx_decode(key):
    _, img = mx.recordio.unpack(record.read_idx(key))
    return mx.image.imdecode(img).asnumpy()  # asnumpy waits for mxnet's asynchronous engine
def cv2_decode(key):
    _, img = mx.recordio.unpack(record.read_idx(key))
    return cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
out = {"versions": {"mxnet": mx.__version__, "numpy": np.__version__, "opencv": cv2.__version__}, "rates": {}}
variants = {"mx": ("mxnet read_idx+unpack+mx.image.imdecode", mx_decode), "cv2": ("mxnet read_idx+unpack+cv2.imdecode", cv2_decode)}
for name, fn in (variants[v] for v in wanted.split(",")):
    name += suffix
    assert fn(keys[0]).shape[2] == 3
    start = time.perf_counter()
    for key in keys:
        fn(key)
    out["rates"][name] = len(keys) / (time.perf_counter() - start)
print(json.dumps(out))
"""

Measurement = Callable[[], dict[str, float]]  # one round of one or more variants -> images/s each


def _smooth_faces(count: int, seed: int) -> list[bytes]:
    """Random smooth 112x112 colour fields with fine grain, JPEG q95 (about the size of a face crop)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        field = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        field += rng.normal(0.0, 6.0, field.shape).astype(np.float32)
        ok, buf = cv2.imencode(".jpg", np.clip(field, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        images.append(buf.tobytes())
    return images


def make_dataset(directory: Path, identities: int, per_identity: int, seed: int) -> tuple[Path, str]:
    """Write a training set to ``directory``; return its prefix and how it was made."""
    try:
        from facevib.synth import write_synthetic_dataset
    except ImportError:
        write_synthetic_dataset = None
    if write_synthetic_dataset is not None:
        write_synthetic_dataset(directory, identities=identities, images_per_identity=per_identity, seed=seed)
        return directory / "train", "facevib.synth.write_synthetic_dataset"
    images = _smooth_faces(identities * per_identity, seed)
    with IndexedRecordWriter(directory / "train.rec") as writer:
        for key, image in enumerate(images):
            writer.write_key(key, pack(RecordHeader(0, float(key // per_identity), key), image))
    (directory / "property").write_text(f"{identities},112,112\n")
    return directory / "train", "random smooth 112x112 JPEG q95 (facevib.synth not available)"


def single_process(dataset: MXFaceDataset, order: np.ndarray) -> Measurement:
    """Our reader + decode, and the full sample transform, in this process with one thread each."""
    reader = dataset._reader
    keys, offsets, indices = dataset.keys[order].tolist(), dataset._offsets[order].tolist(), order.tolist()

    def measure() -> dict[str, float]:
        threads = (torch.get_num_threads(), cv2.getNumThreads())
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        try:
            start = time.perf_counter()
            for key, offset in zip(keys, offsets, strict=True):
                payload, _ = reader.read_at(offset, key)
                decode_rgb(unpack(payload)[1])
            middle = time.perf_counter()
            for index in indices:
                dataset[index]
            end = time.perf_counter()
        finally:
            torch.set_num_threads(threads[0])
            cv2.setNumThreads(threads[1])
        return {
            "facevib read+decode": len(keys) / (middle - start),
            "facevib dataset[i] (read+decode+flip+normalise)": len(indices) / (end - middle),
        }

    return measure


def loader(dataset: MXFaceDataset, order: np.ndarray, workers: int, batch_size: int, name: str) -> Measurement:
    """Steady-state images/s through a DataLoader with ``workers`` processes (and with startup)."""
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order) - batch_size + 1, batch_size)]
    if len(batches) <= workers:
        raise ValueError(f"--images {len(order)} gives {len(batches)} batches; need more than {workers} workers")

    def measure() -> dict[str, float]:
        data = DataLoader(dataset, batch_sampler=batches, num_workers=workers, prefetch_factor=4)
        start = time.perf_counter()
        count, warm_count, warm_start = 0, 0, start
        for seen, (images, _labels) in enumerate(data, 1):
            count += images.shape[0]
            if seen == workers:  # every worker has delivered once: startup is over
                warm_start, warm_count = time.perf_counter(), count
        end = time.perf_counter()
        return {name: (count - warm_count) / (end - warm_start), f"{name} [with startup]": count / (end - start)}

    return measure


class MxnetReader:
    """mxnet's variants, one round per call, in the mxnet virtualenv's interpreter."""

    def __init__(
        self, python: Path, prefix: Path, keys_file: Path, variants: str = "mx,cv2", engine: str | None = None
    ):
        suffix = f" [{engine}]" if engine else ""
        self.command = [str(python), "-c", MXNET_SCRIPT, f"{prefix}.rec", f"{prefix}.idx", str(keys_file)]
        self.command += [variants, suffix]
        self.env = {**os.environ, "MXNET_ENGINE_TYPE": engine} if engine else None
        self.versions: dict | None = None

    def __call__(self) -> dict[str, float]:
        done = subprocess.run(self.command, capture_output=True, text=True, check=False, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"mxnet run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        self.versions = result["versions"]
        return result["rates"]


def _warm_page_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


def _machine() -> dict:
    model = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def _table(rows: list[dict]) -> str:
    lines = [f"{'variant':58s} {'best img/s':>10s} {'median':>8s} {'per proc':>9s} {'vs mxnet':>9s}"]
    for row in rows:
        ratio = f"{row['ratio_vs_mxnet']:.2f}x" if row["ratio_vs_mxnet"] else "n/a"
        lines.append(
            f"{row['variant']:58s} {row['img_per_s']:10,.0f} {row['img_per_s_median']:8,.0f} "
            f"{row['img_per_s_per_process']:9,.0f} {ratio:>9s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rec", type=Path, help="RecordIO prefix (.../train); default: write a synthetic set")
    parser.add_argument("--images", type=int, default=4000, help="images read per measurement")
    parser.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements of every variant")
    parser.add_argument("--identities", type=int, default=100, help="synthetic set size when --rec is absent")
    parser.add_argument("--images-per-identity", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mxnet-python", type=Path, default=ROOT / ".venv-mxnet" / "bin" / "python")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    workers = [int(value) for value in args.workers.split(",") if value.strip()]

    # Other processes on a 2-core machine skew every number: the load is recorded with them.
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="facevib-bench-") as scratch:
        if args.rec is None:
            start = time.perf_counter()
            prefix, source = make_dataset(Path(scratch), args.identities, args.images_per_identity, args.seed)
            print(f"wrote {prefix} with {source} in {time.perf_counter() - start:.1f} s")
        else:
            prefix, source = args.rec, "given"
        dataset = MXFaceDataset(prefix, train=True)
        raw_dataset = MXFaceDataset(prefix, train=True, normalize=False)
        prefix = dataset.rec_path.with_suffix("")
        _warm_page_cache(dataset.rec_path)
        rng = np.random.default_rng(args.seed)
        order = np.concatenate([rng.permutation(len(dataset)) for _ in range(-(-args.images // len(dataset)))])
        order = order[: args.images]
        jpeg_bytes = statistics.mean(
            len(unpack(dataset._reader.read_at(int(offset))[0])[1]) for offset in dataset._offsets[order[:200]]
        )

        measurements: list[Measurement] = []
        mxnet = None
        if args.mxnet_python.is_file():
            keys_file = Path(scratch) / "order.keys"
            keys_file.write_text("\n".join(str(key) for key in dataset.keys[order].tolist()))
            mxnet = MxnetReader(args.mxnet_python, prefix, keys_file)
            measurements += [mxnet, MxnetReader(args.mxnet_python, prefix, keys_file, "mx", "NaiveEngine")]
        else:
            print(f"mxnet venv not found at {args.mxnet_python} (run benchmarks/setup_mxnet_venv.sh): facevib only")
        measurements.append(single_process(dataset, order))
        processes: dict[str, int] = {}
        for n in workers:
            label = f"{n} worker{'s' if n > 1 else ''} (batch {args.batch_size})"
            for name, data in (
                (f"facevib DataLoader, {label}", dataset),
                (f"facevib DataLoader uint8, {label}", raw_dataset),
            ):
                measurements.append(loader(data, order, n, args.batch_size, name))
                processes[name] = n
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for measure in measurements:
                for name, rate in measure().items():
                    rates.setdefault(name, []).append(rate)
    load_after = os.getloadavg()

    rows = []
    for name, values in rates.items():
        if name.endswith("[with startup]"):
            continue
        count = processes.get(name, 1)
        row = {"variant": name, "processes": count, "img_per_s": max(values)}
        row["img_per_s_median"] = statistics.median(values)
        row["img_per_s_per_process"] = row["img_per_s"] / count
        if f"{name} [with startup]" in rates:
            row["img_per_s_with_startup"] = max(rates[f"{name} [with startup]"])
        rows.append(row)
    reference = max((row["img_per_s"] for row in rows if row["variant"].startswith(REFERENCE)), default=None)
    for row in rows:
        row["ratio_vs_mxnet"] = row["img_per_s"] / reference if reference else None

    print(
        f"\n{len(dataset)} records, {args.images} random reads per round, best and median of {args.rounds} "
        f"interleaved rounds; mean JPEG {jpeg_bytes / 1024:.1f} KiB ({source})\n"
        f"1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs"
    )
    print(_table(rows))
    result = {
        "benchmark": "data_loader",
        "machine": {**_machine(), "loadavg_before": load_before, "loadavg_after": load_after},
        "mxnet": mxnet.versions if mxnet else None,
        "dataset": {"source": source, "records": len(dataset), "mean_jpeg_bytes": jpeg_bytes},
        "settings": {
            "images": args.images,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "workers": workers,
            "seed": args.seed,
        },
        "rows": rows,
        "raw": rates,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
