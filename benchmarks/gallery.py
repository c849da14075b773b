"""1:N galleries over HTTP: equality with offline IJB evaluation, then search at scale.

    python benchmarks/gallery.py --sizes 10000 100000 --queries 200
    python benchmarks/gallery.py --skip-equality --sizes 1000000 --paths ann postgres   # one size, two paths
    python benchmarks/gallery.py --model model.onnx --sizes 10000   # a trained model for part 1

Part 1 (equality): an IJB-C-style folder (facevib.synth) embedded by the model; eval/ijb.py's
TPIR@FPIR per gallery (:func:`facevib.eval.ijb.evaluate_ijb`) against the same figure computed
from ``/v1/galleries`` answers: each gallery template enrolled as its subject's one face, each
probe template searched (top 1), the threshold at each FPIR read off the non-mated searches'
top scores with the same exact rule.

Part 2 (scale): random unit vectors of the model's dimension, with planted mates as queries
(an enrolled vector plus noise, cosine about 0.6), for each path: ``exact`` (SQLite, exact numpy
index), ``ann`` (SQLite, ``--gallery-exact-limit 1``: the Hamming sign-code index) and
``postgres`` (PostgreSQL; enrolled on one server, searched on a second replica that follows the
change log; default exact limit). The N faces are **bulk-filled through the store's own
``add_faces``** (batches of 10,000, no HTTP: 1M faces over JSON would take a quarter of an hour)
before the servers start; then ``--enroll-sample`` more faces are enrolled **over HTTP** (JSON,
batches of 256) into the full gallery. Reported: the bulk fill rate (store, not HTTP), the
server's start time (load + index build; the empty server's start is printed as a baseline),
the HTTP enrollment rate, how long the replica took to catch up with the sample, resident
memory per face (above the empty server), the searching server's peak resident memory during its
start (``VmHWM``: the start-up load), p50/p99 search latency over HTTP (one client on one
keep-alive connection, sequential, top_k 1) and recall@1 against exact search over every
enrolled face. Servers are real processes on 127.0.0.1 (serve/app.py), one size and path at a
time; the temporary databases are deleted after each row.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facevib.serve.launch import free_port, wait_healthy  # noqa: E402

PATHS = ("exact", "ann", "postgres")
BULK_BATCH = 10_000  # faces per store transaction when filling it directly


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (``VmRSS``) or its peak so far (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


@contextmanager
def server(model: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "serve" / "app.py"), "--model", str(model), "--detector", "none"]
    cmd += ["--max-images", "256", "--max-body-mb", "64", "--port", str(port), "--log-level", "warning", *args]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, proc, 600, poll_s=0.5)
        except RuntimeError as err:
            log.seek(0)
            raise RuntimeError(f"{err}:\n{log.read().decode()[-3000:]}") from None
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def export_model(folder: Path, dim: int) -> Path:
    """A small random iResNet with a ``dim``-d embedding, exported (searches by embedding do not need a trained one)."""
    import torch

    from facevib.export import export_onnx
    from facevib.models import create_model

    torch.manual_seed(0)
    model = create_model("r18", layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), embedding_dim=dim).eval()
    return export_onnx(model, folder / f"bench{dim}.onnx", dynamo=False)


def equality(model: Path, folder: Path, identities: int, fpirs: list[float]) -> list[str]:
    """Part 1: rows of the equality table."""
    from facevib.data.ijb import read_ijb
    from facevib.eval.embed import Embedder
    from facevib.eval.ijb import embed_ijb, evaluate_ijb
    from facevib.eval.roc import impostor_thresholds
    from facevib.eval.templates import fusion_weights, template_features, template_rows
    from facevib.synth import write_synthetic_dataset

    data = folder / "synth"
    write_synthetic_dataset(
        data,
        identities=2,
        images_per_identity=2,
        lfw_identities=0,
        cfp_fp_identities=0,
        agedb_30_identities=0,
        ijb_identities=identities,
        ijb_templates_per_identity=3,
        ijb_impostor_pairs=1000,
    )
    ijb = read_ijb(data / "IJBC", "IJBC")
    features = embed_ijb(ijb, Embedder.from_onnx(model), progress=False)
    offline = evaluate_ijb(ijb, features, fpirs=fpirs).summary["one_to_n"]
    ids, templates = template_features(
        features.features, ijb.templates, ijb.medias, fusion_weights(features.face_scores)
    )
    protocol = ijb.one_to_n
    probes = templates[template_rows(ids, protocol.probe_templates)]
    rows = []
    with server(model, "--gallery-db", str(folder / "ijb.db")) as (url, _):
        client = Client(url)
        for name, (gallery_templates, subjects) in protocol.galleries.items():
            client.call("PUT", f"/v1/galleries/{name}")
            enrolled = templates[template_rows(ids, gallery_templates)]
            faces = [{"subject": str(s), "embedding": r.tolist()} for s, r in zip(subjects, enrolled, strict=True)]
            for start in range(0, len(faces), 256):
                assert (
                    client.call("POST", f"/v1/galleries/{name}/faces", {"faces": faces[start : start + 256]})[0] == 200
                )
            top_subject, top_score = [], []
            for probe in probes:
                match = client.call("POST", f"/v1/galleries/{name}/search", {"embedding": probe.tolist(), "top_k": 1})[
                    1
                ]
                top_subject.append(match["matches"][0]["subject"])
                top_score.append(match["matches"][0]["score"])
            top_score = np.asarray(top_score)
            known = {str(s) for s in subjects}
            mated = np.array([str(s) in known for s in protocol.probe_subjects])
            hit = np.array([t == str(s) for t, s in zip(top_subject, protocol.probe_subjects, strict=True)])
            for target, (threshold, _), point in zip(
                fpirs, impostor_thresholds(top_score[~mated], fpirs), offline[name]["tpir_at_fpir"], strict=True
            ):
                http_tpir = float(np.count_nonzero(hit & mated & (top_score > threshold))) / int(mated.sum())
                rows.append(
                    f"| {name} | {target:g} | {int(mated.sum())} / {int((~mated).sum())} | {point['tpir']:.4f} | "
                    f"{http_tpir:.4f} | {abs(point['tpir'] - http_tpir):.1e} |"
                )
    return rows


def planted(n: int, dim: int, queries: int, extra: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n gallery rows, ``extra`` more rows, queries): each query is a gallery row plus noise."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n + extra, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    mates = rng.choice(n, queries, replace=False)
    noise = rng.standard_normal((queries, dim), dtype=np.float32)
    noise *= 1.33 / np.linalg.norm(noise, axis=1, keepdims=True)  # cosine to the mate about 1/sqrt(1+1.33^2) = 0.6
    query = data[mates] + noise
    return data[:n], data[n:], query / np.linalg.norm(query, axis=1, keepdims=True)


def bulk_fill(store_args: tuple[str, str], gallery: str, data: np.ndarray) -> tuple[list[str], float]:
    """Enroll ``data`` through the store's own ``add_faces`` (no HTTP): (ids in order, faces/s)."""
    from facevib.gallery import GalleryInfo, NewFace, open_store

    flag, where = store_args
    store = open_store(url=where) if flag == "--gallery-url" else open_store(db=where)
    try:
        store.create_gallery(GalleryInfo(gallery, data.shape[1]))
        ids: list[str] = []
        started = time.perf_counter()
        for start in range(0, len(data), BULK_BATCH):
            rows = data[start : start + BULK_BATCH]
            ids += store.add_faces(gallery, [NewFace(f"s{start + i}", r) for i, r in enumerate(rows)])
        return ids, len(data) / (time.perf_counter() - started)
    finally:
        store.close()


class Client:
    """One keep-alive HTTP/1.1 connection (as a search client holds one), JSON in and out."""

    def __init__(self, url: str) -> None:
        self.connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=600)

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        try:
            self.connection.request(method, path, body=data, headers={"content-type": "application/json"})
            response = self.connection.getresponse()
        except (BrokenPipeError, http.client.RemoteDisconnected):
            # The server closed the idle connection (uvicorn's keep-alive timeout) before reading
            # the request: open a new one and send it again.
            self.connection.close()
            self.connection.request(method, path, body=data, headers={"content-type": "application/json"})
            response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.connection.close()


def scale_row(path: str, model: Path, folder: Path, n: int, args: argparse.Namespace, pg_url: str | None) -> dict:
    """One path at one size: bulk-fill the store, start the server(s), enroll a sample over HTTP, search."""
    data, sample, query = planted(n, args.dim, args.queries, args.enroll_sample, seed=n)
    gallery = f"bench-{n}"
    if path == "postgres":
        store_args = ("--gallery-url", str(pg_url))
        extra: tuple[str, ...] = ("--gallery-poll-s", "0.1")
    else:
        store_args = ("--gallery-db", str(folder / f"{path}-{n}.db"))
        extra = ("--gallery-exact-limit", "1" if path == "ann" else str(10 * n))
    # Exact truth over every face that will be enrolled (the bulk rows, then the sample's),
    # computed before the servers start so that it neither competes with them nor idles a connection.
    truth = np.argmax(np.concatenate([query @ data.T, query @ sample.T], axis=1), axis=1)
    ids, fill_rate = bulk_fill(store_args, gallery, data)
    started = time.perf_counter()
    with server(model, *store_args, *extra) as (writer_url, writer):
        start_s = time.perf_counter() - started
        started = time.perf_counter()
        with (
            server(model, *store_args, *extra) if path == "postgres" else nullcontext((writer_url, writer)) as (
                reader_url,
                reader,
            )
        ):
            if reader is not writer:
                start_s = time.perf_counter() - started  # the searching replica's start
            rss, peak = rss_bytes(reader.pid), rss_bytes(reader.pid, "VmHWM")  # peak: its start-up load
            write, read = Client(writer_url), Client(reader_url)
            started = time.perf_counter()
            for start in range(0, len(sample), 256):
                rows = np.round(sample[start : start + 256], 6)
                body = {"faces": [{"subject": f"x{start + i}", "embedding": r.tolist()} for i, r in enumerate(rows)]}
                status, answer = write.call("POST", f"/v1/galleries/{gallery}/faces", body)
                assert status == 200, answer
                ids += [f["id"] for f in answer["faces"]]
            enroll_s = time.perf_counter() - started
            catch_up = 0.0
            if reader is not writer:
                waited = time.perf_counter()
                while read.call("GET", f"/v1/galleries/{gallery}")[1].get("faces") != len(ids):
                    time.sleep(0.02)
                catch_up = time.perf_counter() - waited
            index = read.call("GET", f"/v1/galleries/{gallery}")[1]["index"]
            for q in query[:5]:  # warm-up
                read.call("POST", f"/v1/galleries/{gallery}/search", {"embedding": np.round(q, 6).tolist(), "top_k": 1})
            latencies, hits = [], 0
            for q, want in zip(query, truth, strict=True):
                body = {"embedding": np.round(q, 6).tolist(), "top_k": 1}
                t0 = time.perf_counter()
                status, answer = read.call("POST", f"/v1/galleries/{gallery}/search", body)
                latencies.append(time.perf_counter() - t0)
                assert status == 200, answer
                hits += answer["matches"][0]["id"] == ids[want]
            write.close()
            read.close()
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return {
        "faces": n,
        "path": path,
        "index": index,
        "bulk_fill_faces_per_s": fill_rate,
        "start_s": start_s,
        "http_enroll_faces_per_s": len(sample) / enroll_s,
        "replica_catch_up_s": catch_up,
        "rss_bytes": rss,
        "start_peak_rss_bytes": peak,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "recall_at_1": hits / args.queries,
    }


def empty_server_rss(model: Path, folder: Path) -> tuple[int, float]:
    """(resident bytes, start seconds) of a server with an empty gallery database: the baseline."""
    started = time.perf_counter()
    with server(model, "--gallery-db", str(folder / "empty.db")) as (_, proc):
        return rss_bytes(proc.pid), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--enroll-sample", type=int, default=2048, help="faces enrolled over HTTP per row")
    parser.add_argument("--model", default=None, help="ONNX model for part 1 (default: a small random one)")
    parser.add_argument("--ijb-identities", type=int, default=40)
    parser.add_argument("--skip-equality", action="store_true")
    parser.add_argument("--json", default=None, help="also write the scale rows here")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="facevib-gallery-bench-"))
    try:
        return run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the 1M databases are gigabytes


def run(args: argparse.Namespace, folder: Path) -> int:
    model = export_model(folder, args.dim)
    if not args.skip_equality:
        print("| gallery | FPIR | mated / non-mated | eval/ijb.py TPIR | HTTP TPIR | difference |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in equality(Path(args.model) if args.model else model, folder, args.ijb_identities, [0.01, 0.1, 0.3]):
            print(row, flush=True)
        print()
    base_rss, base_start = empty_server_rss(model, folder)
    print(f"empty server: {base_rss / 2**20:.0f} MiB resident, {base_start:.1f} s to healthy")
    print(
        "| faces | path (index) | bulk store fill faces/s | start s | HTTP enroll faces/s | replica catch-up s "
        "| bytes/face | start peak MiB | p50 ms | p99 ms | recall@1 vs exact |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pg = None
    if "postgres" in args.paths:
        sys.path.insert(0, str(ROOT / "tests"))
        from gallery_support import postgres_server

        pg = postgres_server()
    rows = []
    with pg if pg is not None else nullcontext(None) as pg_url:
        for n in args.sizes:
            for path in args.paths:
                if path == "postgres":
                    import psycopg

                    with psycopg.connect(pg_url, autocommit=True) as conn:  # each size starts empty
                        conn.execute("DROP TABLE IF EXISTS faces, galleries, changes")
                row = scale_row(path, model, folder, n, args, pg_url)
                for db in folder.glob(f"{path}-{n}.db*"):
                    db.unlink()
                rows.append(row)
                print(
                    f"| {n} | {path} ({row['index']}) | {row['bulk_fill_faces_per_s']:.0f} | {row['start_s']:.1f} | "
                    f"{row['http_enroll_faces_per_s']:.0f} | {row['replica_catch_up_s']:.2f} | "
                    f"{(row['rss_bytes'] - base_rss) / n:.0f} | {row['start_peak_rss_bytes'] / 2**20:.0f} | "
                    f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                    f"{row['recall_at_1']:.3f} |",
                    flush=True,
                )
                if args.json:
                    Path(args.json).write_text(json.dumps({"empty_server_rss": base_rss, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
