"""1:N galleries over HTTP: equality with offline IJB evaluation, then search at scale.

    python benchmarks/gallery.py --sizes 10000 100000 --queries 200
    python benchmarks/gallery.py --model model.onnx --sizes 10000   # a trained model for part 1

Part 1 (equality): an IJB-C-style folder (facevib.synth) embedded by the model; eval/ijb.py's
TPIR@FPIR per gallery (:func:`facevib.eval.ijb.evaluate_ijb`) against the same figure computed
from ``/v1/galleries`` answers: each gallery template enrolled as its subject's one face, each
probe template searched (top 1), the threshold at each FPIR read off the non-mated searches'
top scores with the same exact rule.

Part 2 (scale): random unit vectors of the model's dimension, with planted mates as queries
(an enrolled vector plus noise, cosine about 0.6), for each index path: exact numpy (SQLite),
HNSW (SQLite, ``--gallery-exact-limit 1``) and the PostgreSQL replica path (enrolled on one
server, searched on a second that follows the change log; exact index). Reported: enrollment
throughput over HTTP (JSON batches), how long the replica took to catch up, the server's
resident memory per face, p50/p99 search latency over HTTP (one client, sequential) and
recall@1 against exact search. Servers are real processes on 127.0.0.1 (serve/app.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facevib.serve.launch import free_port, wait_healthy  # noqa: E402


def call(url: str, method: str, path: str, body: object = None, timeout: float = 300.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


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
        for name, (gallery_templates, subjects) in protocol.galleries.items():
            call(url, "PUT", f"/v1/galleries/{name}")
            enrolled = templates[template_rows(ids, gallery_templates)]
            faces = [{"subject": str(s), "embedding": r.tolist()} for s, r in zip(subjects, enrolled, strict=True)]
            for start in range(0, len(faces), 256):
                assert call(url, "POST", f"/v1/galleries/{name}/faces", {"faces": faces[start : start + 256]})[0] == 200
            top_subject, top_score = [], []
            for probe in probes:
                match = call(url, "POST", f"/v1/galleries/{name}/search", {"embedding": probe.tolist(), "top_k": 1})[1]
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


def planted(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    mates = rng.choice(n, queries, replace=False)
    noise = rng.standard_normal((queries, dim), dtype=np.float32)
    noise *= 1.33 / np.linalg.norm(noise, axis=1, keepdims=True)  # cosine to the mate about 1/sqrt(1+1.33^2) = 0.6
    query = data[mates] + noise
    return data, query / np.linalg.norm(query, axis=1, keepdims=True)


def scale_row(kind: str, model: Path, folder: Path, n: int, dim: int, queries: int, pg_url: str | None) -> str:
    data, query = planted(n, dim, queries, seed=n)
    truth = np.argmax(query @ data.T, axis=1)
    if kind == "postgres replica":
        common = ("--gallery-url", str(pg_url), "--gallery-poll-s", "0.1")
    else:
        limit = "1" if kind == "hnsw" else str(10 * n)
        common = ("--gallery-db", str(folder / f"{kind}-{n}.db"), "--gallery-exact-limit", limit)
    with (
        server(model, *common) as (writer_url, writer),
        server(model, *common) if kind == "postgres replica" else nullcontext((writer_url, writer)) as (
            reader_url,
            reader,
        ),
    ):
        gallery = f"bench-{n}"
        call(writer_url, "PUT", f"/v1/galleries/{gallery}")
        before = rss_bytes(reader.pid)
        ids = []
        started = time.perf_counter()
        for start in range(0, n, 256):
            rows = np.round(data[start : start + 256], 6)
            body = {"faces": [{"subject": f"s{start + i}", "embedding": r.tolist()} for i, r in enumerate(rows)]}
            status, answer = call(writer_url, "POST", f"/v1/galleries/{gallery}/faces", body)
            assert status == 200, answer
            ids += [f["id"] for f in answer["faces"]]
        enroll_s = time.perf_counter() - started
        catch_up = 0.0
        if reader_url != writer_url:
            waited = time.perf_counter()
            while call(reader_url, "GET", f"/v1/galleries/{gallery}")[1].get("faces") != n:
                time.sleep(0.05)
            catch_up = time.perf_counter() - waited
        per_face = (rss_bytes(reader.pid) - before) / n
        index = call(reader_url, "GET", f"/v1/galleries/{gallery}")[1]["index"]
        latencies, hits = [], 0
        for q, want in zip(query, truth, strict=True):
            body = {"embedding": np.round(q, 6).tolist(), "top_k": 1}
            t0 = time.perf_counter()
            status, answer = call(reader_url, "POST", f"/v1/galleries/{gallery}/search", body)
            latencies.append(time.perf_counter() - t0)
            hits += answer["matches"][0]["id"] == ids[want]
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return (
        f"| {n} | {kind} ({index}) | {n / enroll_s:.0f} | {catch_up:.1f} | {per_face:.0f} | {p50:.2f} | {p99:.2f} | "
        f"{hits / queries:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=["exact", "hnsw", "postgres replica"])
    parser.add_argument("--model", default=None, help="ONNX model for part 1 (default: a small random one)")
    parser.add_argument("--ijb-identities", type=int, default=40)
    parser.add_argument("--skip-equality", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="facevib-gallery-bench-"))
    model = export_model(folder, args.dim)
    if not args.skip_equality:
        print("| gallery | FPIR | mated / non-mated | eval/ijb.py TPIR | HTTP TPIR | difference |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in equality(Path(args.model) if args.model else model, folder, args.ijb_identities, [0.01, 0.1, 0.3]):
            print(row, flush=True)
        print()
    print("| faces | index | enrolled/s | replica catch-up s | bytes/face | p50 ms | p99 ms | recall@1 vs exact |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    pg = None
    if "postgres replica" in args.kinds:
        sys.path.insert(0, str(ROOT / "tests"))
        from gallery_support import postgres_server

        pg = postgres_server()
    with pg if pg is not None else nullcontext(None) as pg_url:
        for n in args.sizes:
            for kind in args.kinds:
                if kind == "postgres replica":
                    import psycopg

                    with psycopg.connect(pg_url, autocommit=True) as conn:  # each size starts empty
                        conn.execute("DROP TABLE IF EXISTS faces, galleries, changes")
                print(scale_row(kind, model, folder, n, args.dim, args.queries, pg_url), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
