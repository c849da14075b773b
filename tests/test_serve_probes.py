"""What keeps /health/live quick under load, in-process: the probe is answered in front of the
app (not routed, not counted), worker threads and ONNX Runtime's own run below the event loop's
priority (read back from the kernel's /proc), and the settings that control both."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from fastapi.testclient import TestClient
from serve_support import aligned_crops, b64, png, serve_models

from facevib.serve import create_app
from facevib.serve.settings import ServeSettings

pytestmark = pytest.mark.timeout(120)


def _nice_by_thread() -> dict[int, int]:
    """Kernel thread id -> nice value of every thread of this process (field 19 of /proc/.../stat)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                text = stat.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = int(text[text.rindex(")") + 2 :].split()[16])
    return out


def test_liveness_is_answered_in_front_of_the_app() -> None:
    settings = ServeSettings(model=str(serve_models().plain), detector="none", api_key="secret")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        live, head = client.get("/health/live"), client.head("/health/live")
        post = client.post("/health/live")
        metrics = client.get("/metrics", headers={"X-API-Key": "secret"}).text
    assert live.status_code == 200 and live.json()["status"] == "ok" and live.json()["uptime_s"] >= 0
    assert live.headers["content-type"] == "application/json"
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert post.status_code == 405 and post.json()["error"]["code"]  # other methods reach the app
    # The GETs and the HEAD never reached the metrics middleware; the POST that went through it did.
    assert 'facevib_requests_total{endpoint="/health/live",status="200"}' not in metrics
    assert 'facevib_requests_total{endpoint="/health/live",status="405"} 1.0' in metrics


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values are per thread on Linux only")
def test_workers_and_onnx_runtime_threads_run_below_the_event_loop() -> None:
    """With --worker-nice 5 every facevib worker thread, and the intra-op threads ONNX Runtime
    creates with the session, run 5 nice levels below the thread that started the server; the
    event loop's thread keeps its priority."""
    before = set(_nice_by_thread())
    base = _nice_by_thread()[threading.get_native_id()]
    if base > 14:
        pytest.skip(f"this process already runs at nice {base}")
    settings = ServeSettings(model=str(serve_models().plain), detector="none", intra_op_threads=3, worker_nice=5)
    crop = {"data": b64(png(aligned_crops()[0])), "aligned": True}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/embed", json={"images": [crop]}).status_code == 200  # decode, stage, infer
        nice = _nice_by_thread()
        python = {t.native_id: t.name for t in threading.enumerate()}
        info = client.get("/v1/info").json()["runtime"]
    workers = {name: nice[tid] for tid, name in python.items() if name.startswith("facevib-")}
    assert {name.rsplit("_", 1)[0] for name in workers} >= {
        "facevib-infer",
        "facevib-stage",
        "facevib-decode",
        "facevib-health",
    }
    assert set(workers.values()) == {base + 5}, workers
    loop = [tid for tid, name in python.items() if name.startswith("asyncio-portal")]  # TestClient's loop thread
    assert loop and all(nice[tid] == base for tid in loop)
    # Threads that are not Python's and appeared with the app: ONNX Runtime's pool (3 threads
    # = the calling thread + 2 of its own), all at the workers' priority.
    native = [tid for tid in set(nice) - before if tid not in python]
    assert len(native) >= 2 and all(nice[tid] == base + 5 for tid in native), {t: nice[t] for t in native}
    assert info["spinning"] is False and info["pipeline_depth"] == 1


def test_priority_spinning_and_pipeline_settings() -> None:
    assert ServeSettings.from_env({"FACEVIB_ORT_SPINNING": "true"}).ort_spinning is True
    assert ServeSettings.from_env({"FACEVIB_ORT_SPINNING": "0"}).ort_spinning is False
    assert ServeSettings().ort_spinning is False and ServeSettings().worker_nice == 10
    with pytest.raises(ValueError, match="ort_spinning must be true or false, got 'sometimes'"):
        ServeSettings.from_env({"FACEVIB_ORT_SPINNING": "sometimes"})
    with pytest.raises(ValueError, match="worker_nice must be in 0..19, got 20"):
        ServeSettings(worker_nice=20)
    with pytest.raises(ValueError, match="pipeline_depth must be 0 \\(auto\\), 1 or 2, got 3"):
        ServeSettings(pipeline_depth=3)
    settings = ServeSettings(model=str(serve_models().plain), detector="none", pipeline_depth=2, ort_spinning=True)
    with TestClient(create_app(settings)) as client:
        app_batcher = client.app.state.serve.batcher
        info = client.get("/v1/info").json()["runtime"]
        crop = {"data": b64(png(aligned_crops()[0])), "aligned": True}
        assert client.post("/v1/embed", json={"images": [crop]}).status_code == 200
    assert app_batcher.pipeline_depth == 2 and info["spinning"] is True
