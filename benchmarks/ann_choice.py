"""Which approximate-nearest-neighbour index the gallery uses above its exact size.

    python benchmarks/ann_choice.py --sizes 100000 --queries 200
    python benchmarks/ann_choice.py --sizes 1000000 --queries 200 --only "exact" "faiss IVF" "sign codes"

Candidates (extra ``gallery-bench``): hnswlib's HNSW, usearch's HNSW, faiss's HNSW
(``IndexHNSWFlat``, which cannot delete), faiss's IVF (``IndexIVFFlat``, which can; one row
per ``nprobe`` on one trained index) and the gallery's own index (:class:`FaceIndex` on sign
codes: a Hamming shortlist from faiss's binary index, rescored exactly). faiss runs with
``--threads`` OpenMP threads (default 1: a team of 2 spins on loaded shared cores). For
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
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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

    def variants(self) -> list[tuple[str, Callable[[], None]]]:
        """Search settings measured on one build: (row name, apply)."""
        return [(self.name, lambda: None)]


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

    def __init__(self, nprobes: tuple[int, ...], lists_per_sqrt_n: float = 1.0) -> None:
        self.nprobes, self.factor = nprobes, lists_per_sqrt_n
        self.name = f"faiss IVFFlat nlist={lists_per_sqrt_n:g}*sqrt(n)"

    def build(self, data: np.ndarray) -> None:
        import faiss

        nlist = int(self.factor * np.sqrt(len(data)))
        quantizer = faiss.IndexFlatIP(data.shape[1])
        self.index = faiss.IndexIVFFlat(quantizer, data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.train(data[np.random.default_rng(0).choice(len(data), min(len(data), 40 * nlist), replace=False)])
        self.index.add(data)

    def variants(self) -> list[tuple[str, Callable[[], None]]]:
        def setter(nprobe: int) -> Callable[[], None]:
            return lambda: setattr(self.index, "nprobe", nprobe)

        return [(f"{self.name} nprobe={p}", setter(p)) for p in self.nprobes]

    def top1(self, query: np.ndarray) -> int:
        _, labels = self.index.search(query[None], 1)
        return int(labels[0, 0])


class SignCodes(Candidate):
    """The gallery's own index above its exact limit (facevib.gallery.index.FaceIndex)."""

    deletes = True

    def __init__(self, bits: int, shortlists: tuple[int, ...]) -> None:
        self.bits, self.shortlists = bits, shortlists
        self.name = f"sign codes {bits} bits"

    def build(self, data: np.ndarray) -> None:
        from facevib.gallery.index import FaceIndex

        self.index = FaceIndex(data.shape[1], exact_limit=1, bits=self.bits)
        names = [str(i) for i in range(len(data))]
        self.index.add(names, names, data)
        assert self.index.kind == "hamming"

    def variants(self) -> list[tuple[str, Callable[[], None]]]:
        def setter(shortlist: int) -> Callable[[], None]:
            return lambda: setattr(self.index, "shortlist", shortlist)

        return [(f"{self.name} shortlist={k}", setter(k)) for k in self.shortlists]

    def top1(self, query: np.ndarray) -> int:
        return int(self.index.search(query, 1)[0].face_id)


def measure(
    candidate: Candidate,
    data: np.ndarray,
    mated: np.ndarray,
    non_mated: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
) -> list[dict[str, Any]]:
    """One row per search setting of ``candidate`` (build figures shared)."""
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    candidate.build(data)
    build_s = time.perf_counter() - started
    added = rss_bytes() - before
    rows = []
    for name, apply in candidate.variants():
        apply()
        out: dict[str, Any] = {"name": name, "build_s": build_s, "adds_per_s": len(data) / build_s}
        out["deletes"] = candidate.deletes
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
        rows.append(out)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads")
    parser.add_argument("--only", nargs="+", default=None, help="candidates whose name starts with one of these")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    factories: list[Callable[[], Candidate]] = [
        Exact,
        lambda: Hnswlib(16, 100, 64),
        lambda: Hnswlib(32, 200, 128),
        lambda: Usearch(16, 100, 64),
        lambda: Usearch(32, 200, 128),
        lambda: FaissHnsw(32, 200, 128),
        lambda: FaissIvf((16, 64, 128)),
        lambda: SignCodes(256, (64, 256)),
        lambda: SignCodes(512, (256,)),
    ]
    if args.only:
        factories = [f for f in factories if f().name.startswith(tuple(args.only))]
    print(
        "| faces | index | build s | adds/s | p50 ms | p99 ms | recall@1 mated | recall@1 non-mated | bytes/face "
        "| deletes |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    results = []
    for n in args.sizes:
        data, mated, non_mated = planted(n, args.dim, args.queries, args.seed)
        truth = (np.argmax(mated @ data.T, axis=1), np.argmax(non_mated @ data.T, axis=1))
        for factory in factories:
            for row in measure(factory(), data, mated, non_mated, truth):
                results.append({"faces": n, **row})
                print(
                    f"| {n} | {row['name']} | {row['build_s']:.1f} | {row['adds_per_s']:.0f} | {row['p50_ms']:.3f} | "
                    f"{row['p99_ms']:.3f} | {row['recall_mated']:.3f} | {row['recall_non_mated']:.3f} | "
                    f"{row['bytes_per_face']:.0f} | {'yes' if row['deletes'] else 'no'} |",
                    flush=True,
                )
            gc.collect()
        del data
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
