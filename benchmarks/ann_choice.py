"""Which approximate-nearest-neighbour library the gallery index uses above its exact size.

    python benchmarks/ann_choice.py --sizes 10000 100000 --dim 512 --queries 300

Candidates (optional extra ``gallery-ann``): hnswlib's HNSW, usearch's HNSW, faiss's HNSW
(``IndexHNSWFlat``, which cannot delete) and faiss's IVF (``IndexIVFFlat``, which can). For
each size: random unit vectors of the model's dimension; the queries are planted mates
(an enrolled vector plus noise, cosine about 0.6 to it, like a genuine face pair) and as many
non-mated random vectors. Reported per candidate: add throughput, single-query latency on
one thread (p50, p99), recall@1 against exact numpy search (mated and non-mated queries
apart), the memory the index adds, and whether it can delete a face (the gallery needs it).
Exact numpy is the first row. The table is written as Markdown to stdout.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def rss_bytes() -> int:
    """Resident memory of this process (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery, mated queries, non-mated queries): each mated query is a gallery row + noise."""
    rng = np.random.default_rng(seed)
    gallery = unit(rng.standard_normal((n, dim), dtype=np.float32))
    mates = rng.choice(n, queries, replace=False)
    # cos(mate, query) = 1 / sqrt(1 + s^2) for noise of norm s: s = 1.33 gives about 0.6.
    noise = unit(rng.standard_normal((queries, dim), dtype=np.float32)) * 1.33
    mated = unit(gallery[mates] + noise)
    non_mated = unit(rng.standard_normal((queries, dim), dtype=np.float32))
    return gallery, mated, non_mated


class Candidate:
    name = ""
    deletes = False

    def build(self, data: np.ndarray) -> None: ...
    def top1(self, query: np.ndarray) -> int: ...


class Exact(Candidate):
    name, deletes = "exact numpy", True

    def build(self, data: np.ndarray) -> None:
        self.data = data

    def top1(self, query: np.ndarray) -> int:
        return int(np.argmax(self.data @ query))


class Hnswlib(Candidate):
    deletes = True

    def __init__(self, m: int, ef_construction: int, ef: int) -> None:
        self.m, self.efc, self.ef = m, ef_construction, ef
        self.name = f"hnswlib M={m} efC={ef_construction} ef={ef}"

    def build(self, data: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=data.shape[1])
        self.index.init_index(max_elements=len(data), ef_construction=self.efc, M=self.m)
        self.index.add_items(data, np.arange(len(data)), num_threads=2)
        self.index.set_ef(self.ef)
        self.index.set_num_threads(1)

    def top1(self, query: np.ndarray) -> int:
        labels, _ = self.index.knn_query(query[None], k=1)
        return int(labels[0, 0])


class Usearch(Candidate):
    deletes = True

    def __init__(self, m: int, ef_construction: int, ef: int) -> None:
        self.m, self.efc, self.ef = m, ef_construction, ef
        self.name = f"usearch M={m} efC={ef_construction} ef={ef}"

    def build(self, data: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(
            ndim=data.shape[1],
            metric="ip",
            dtype="f32",
            connectivity=self.m,
            expansion_add=self.efc,
            expansion_search=self.ef,
        )
        self.index.add(np.arange(len(data)), data, threads=2)

    def top1(self, query: np.ndarray) -> int:
        return int(self.index.search(query, 1, threads=1).keys[0])


class FaissHnsw(Candidate):
    deletes = False  # IndexHNSWFlat has no remove_ids

    def __init__(self, m: int, ef_construction: int, ef: int) -> None:
        self.m, self.efc, self.ef = m, ef_construction, ef
        self.name = f"faiss HNSWFlat M={m} efC={ef_construction} ef={ef}"

    def build(self, data: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(2)
        self.index = faiss.IndexHNSWFlat(data.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.efc
        self.index.add(data)
        self.index.hnsw.efSearch = self.ef
        faiss.omp_set_num_threads(1)

    def top1(self, query: np.ndarray) -> int:
        _, labels = self.index.search(query[None], 1)
        return int(labels[0, 0])


class FaissIvf(Candidate):
    deletes = True

    def __init__(self, nprobe: int) -> None:
        self.nprobe = nprobe
        self.name = f"faiss IVFFlat nlist=4*sqrt(n) nprobe={nprobe}"

    def build(self, data: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(2)
        nlist = int(4 * np.sqrt(len(data)))
        quantizer = faiss.IndexFlatIP(data.shape[1])
        self.index = faiss.IndexIVFFlat(quantizer, data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.train(data[np.random.default_rng(0).choice(len(data), min(len(data), 40 * nlist), replace=False)])
        self.index.add(data)
        self.index.nprobe = self.nprobe
        faiss.omp_set_num_threads(1)

    def top1(self, query: np.ndarray) -> int:
        _, labels = self.index.search(query[None], 1)
        return int(labels[0, 0])


def measure(
    candidate: Candidate,
    data: np.ndarray,
    mated: np.ndarray,
    non_mated: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    candidate.build(data)
    build_s = time.perf_counter() - started
    added = rss_bytes() - before
    out: dict[str, Any] = {"name": candidate.name, "adds_per_s": len(data) / build_s, "deletes": candidate.deletes}
    latencies = []
    for queries, expected, key in ((mated, truth[0], "recall_mated"), (non_mated, truth[1], "recall_non_mated")):
        hits = 0
        for query, want in zip(queries, expected, strict=True):
            t0 = time.perf_counter()
            got = candidate.top1(query)
            latencies.append(time.perf_counter() - t0)
            hits += got == want
        out[key] = hits / len(queries)
    out["p50_ms"] = 1e3 * float(np.percentile(latencies, 50))
    out["p99_ms"] = 1e3 * float(np.percentile(latencies, 99))
    out["bytes_per_face"] = max(added, 0) / len(data)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=None, help="candidates whose name starts with one of these")
    args = parser.parse_args(argv)
    factories: list[Callable[[], Candidate]] = [
        Exact,
        lambda: Hnswlib(16, 100, 64),
        lambda: Hnswlib(32, 200, 128),
        lambda: Usearch(16, 100, 64),
        lambda: Usearch(32, 200, 128),
        lambda: FaissHnsw(32, 200, 128),
        lambda: FaissIvf(16),
    ]
    if args.only:
        factories = [f for f in factories if f().name.startswith(tuple(args.only))]
    print("| faces | index | adds/s | p50 ms | p99 ms | recall@1 mated | recall@1 non-mated | bytes/face | deletes |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for n in args.sizes:
        data, mated, non_mated = planted(n, args.dim, args.queries, args.seed)
        truth = (np.argmax(mated @ data.T, axis=1), np.argmax(non_mated @ data.T, axis=1))
        for factory in factories:
            row = measure(factory(), data, mated, non_mated, truth)
            print(
                f"| {n} | {row['name']} | {row['adds_per_s']:.0f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                f"{row['recall_mated']:.3f} | {row['recall_non_mated']:.3f} | {row['bytes_per_face']:.0f} | "
                f"{'yes' if row['deletes'] else 'no'} |",
                flush=True,
            )
            gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
