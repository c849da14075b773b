"""The server as a real uvicorn process on 127.0.0.1, started by ``python serve/app.py``.

The main server runs with ``import torch`` blocked (the serving image has no torch), so every
answer here also shows that ``facevib.serve`` and what it imports work without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import (
    ROOT,
    aligned_crops,
    b64,
    fuzz_no_server_errors,
    png,
    running_server,
    serve_models,
    server_log,
    torch_embeddings,
    unit,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BLOCKER = '''\
"""Makes `import torch` fail in this interpreter, as if torch were not installed."""
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for the serving test)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment whose interpreters cannot import torch (a sitecustomize meta-path blocker)."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    paths = [str(folder), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture(scope="module")
def server(no_torch_env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    models = serve_models()
    env = {**no_torch_env, "FACEVIB_MAX_QUEUE": "300"}  # from the environment; the rest from flags
    with running_server("--model", str(models.calibrated), "--max-batch", "16", "--max-delay-ms", "5", env=env) as s:
        yield s


def test_the_blocker_really_blocks_torch(no_torch_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env={**os.environ, **no_torch_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "blocked for the serving test" in out.stderr


def test_startup_log_and_settings_from_flags_and_environment(server) -> None:
    url, proc = server
    log = server_log(proc)
    assert "on providers ['CPUExecutionProvider']" in log and "max_batch=16" in log
    info = httpx.get(f"{url}/v1/info").json()
    assert info["batching"]["max_queue"] == 300 and info["batching"]["max_delay_ms"] == 5.0
    assert info["model"]["model_name"] == "r18"


def distinct_crops(count: int) -> np.ndarray:
    """``count`` different real-face crops: the two aligned photos, each shifted in brightness."""
    base = aligned_crops().astype(np.int16)
    crops = [np.clip(base[i % 2] + (i // 2) * 3 - 48, 0, 255) for i in range(count)]
    return np.stack(crops).astype(np.uint8)


def test_64_simultaneous_requests_each_get_their_own_embedding(server) -> None:
    url, _ = server
    crops = distinct_crops(64)
    expected = unit(torch_embeddings(serve_models().model, crops))

    async def one(client: httpx.AsyncClient, i: int) -> list[float]:
        response = await client.post(
            f"{url}/v1/embed", json={"images": [{"data": b64(png(crops[i])), "aligned": True}]}
        )
        assert response.status_code == 200, response.text
        return response.json()["results"][0]["faces"][0]["embedding"]

    async def all_at_once() -> list[list[float]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    got = np.array(asyncio.run(all_at_once()))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Requests shared batches: more faces than inference runs.
    metrics = httpx.get(f"{url}/metrics").text
    faces = float(re.search(r"^facevib_batch_size_sum (\S+)$", metrics, re.M).group(1))
    runs = float(re.search(r"^facevib_batch_size_count (\S+)$", metrics, re.M).group(1))
    assert faces >= 64 and faces / runs > 1.5, (faces, runs)


def test_schemathesis_finds_no_server_error(server) -> None:
    """A bounded schema-driven fuzz of every operation in /openapi.json: no 5xx, ever."""
    import schemathesis

    url, _ = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embed", "/v1/verify", "/health", "/v1/info", "/metrics"}
    seen = fuzz_no_server_errors(url, operations, max_examples=12)
    assert len(seen) >= 20 and any(400 <= s < 500 for s in seen)
    assert httpx.get(f"{url}/health").status_code == 200
    log = server_log(server[1])
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


def test_overload_answers_503_with_retry_after_and_recovers() -> None:
    models = serve_models()
    args = (
        "--model",
        str(models.slower),
        "--max-batch",
        "1",
        "--max-queue",
        "1",
        "--max-images",
        "1",
        "--max-delay-ms",
        "0",
    )
    with running_server(*args) as (url, _):
        crop = b64(png(aligned_crops()[0]))

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=48), timeout=60) as client:
                body = {"images": [{"data": crop}]}
                return await asyncio.gather(*(client.post(f"{url}/v1/embed", json=body) for _ in range(48)))

        responses = asyncio.run(flood())
        statuses = [r.status_code for r in responses]
        refused = [r for r in responses if r.status_code == 503]
        assert refused and set(statuses) <= {200, 503}, statuses
        assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded" for r in refused)
        assert httpx.get(f"{url}/health").status_code == 200
        ok = httpx.post(f"{url}/v1/embed", json={"images": [{"data": crop}]})
        assert ok.status_code == 200
        assert 'facevib_errors_total{code="overloaded"}' in httpx.get(f"{url}/metrics").text


def test_items_of_a_client_that_went_away_are_dropped() -> None:
    """Also the `uvicorn --factory` entry, configured by environment variables alone."""
    env = {"FACEVIB_MODEL": str(serve_models().plain), "FACEVIB_MAX_BATCH": "64", "FACEVIB_MAX_DELAY_MS": "1500"}
    with running_server("uvicorn", env=env) as (url, _):
        assert httpx.get(f"{url}/v1/info").json()["batching"]["max_delay_ms"] == 1500
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"images": [{"data": b64(png(aligned_crops()[0]))}]}).encode()
        head = f"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode() + body)
            time.sleep(0.3)  # queued, waiting for the 1.5 s batching delay
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{url}/metrics").text
            if 'facevib_dropped_total{reason="cancelled"} 1.0' in metrics:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the abandoned request's face was not dropped")
        assert "facevib_faces_total{" not in metrics  # it never reached the model (health probes did)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent.onnx"], "does not exist"),
        (["--model", "x.onnx", "--max-batch", "0"], "max_batch must be >= 1"),
        (["--model", "x.onnx", "--port", "http"], "port must be int"),
        ([], "no model"),
    ],
)
def test_cli_configuration_mistakes_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(b"")
    out = subprocess.run(
        [sys.executable, str(ROOT / "serve" / "app.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FACEVIB_MODEL": ""},
    )
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
