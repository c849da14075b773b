"""The server's request lifecycle in-process: requests that can never fit, probes while the
queue is saturated, a failed start-up, multipart files closed on error paths."""

from __future__ import annotations

import gc
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import ASTRONAUT_LANDMARKS, aligned_crops, b64, photos, png, serve_models

from facevib.serve import create_app
from facevib.serve.settings import ServeSettings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models():
    return serve_models()


class _Face:
    def __init__(self, landmarks: np.ndarray, score: float) -> None:
        self.landmarks, self.score = landmarks, score
        self.bbox = np.array([*landmarks.min(0) - 20, *landmarks.max(0) + 20])


class TwoFaces:
    """A stand-in detector (the real ones live in facevib.detect): two faces in every photo."""

    def detect(self, image, *, min_face_size=None, threshold=None, max_faces=None):
        if image.min() == image.max():  # the health check's blank image
            return []
        return [_Face(ASTRONAUT_LANDMARKS, 0.99), _Face(ASTRONAUT_LANDMARKS * 0.5, 0.8)]


def _wait_for(condition, what: str, limit_s: float = 30.0) -> None:
    """Poll ``condition`` (events in another thread); the limit is generous, not a timing bound."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit_s} s")
        time.sleep(0.005)


def test_a_request_whose_faces_never_fit_the_queue_is_413(models) -> None:
    settings = ServeSettings(model=str(models.plain), max_batch=2, max_queue=2, max_images=2)
    photo = {"data": b64(png(photos()[0][0]))}
    with TestClient(create_app(settings, detector=TwoFaces()), raise_server_exceptions=False) as client:
        fits = client.post("/v1/embed", json={"images": [photo]})  # 2 faces: exactly the queue
        never = client.post("/v1/embed", json={"images": [photo, photo]})  # 4 faces > --max-queue 2
    assert fits.status_code == 200 and len(fits.json()["results"][0]["faces"]) == 2
    error = never.json()["error"]
    assert never.status_code == 413 and error["code"] == "too_many_faces" and "retry-after" not in never.headers
    assert "4 faces in one request; the queue holds at most 2 (--max-queue)" in error["message"]


def test_liveness_answers_while_the_queue_is_saturated(models) -> None:
    """The model is held inside a batch, the queue fills to its bound: /health/live still
    answers 200, readiness says overloaded (503), and both recover once the model runs."""
    settings = ServeSettings(model=str(models.plain), max_batch=1, max_queue=2, max_images=1, detector="none")
    app = create_app(settings)
    release, entered = threading.Event(), threading.Event()
    crop = {"data": b64(png(aligned_crops()[0])), "aligned": True}
    with TestClient(app, raise_server_exceptions=False) as client:
        batcher = app.state.serve.batcher
        model = batcher.infer

        def held(batch):  # a test instrument around the real runtime: blocks until released
            entered.set()
            release.wait(60)
            return model(batch)

        batcher.infer = held
        with ThreadPoolExecutor(3) as senders:
            first = senders.submit(client.post, "/v1/embed", json={"images": [crop]})
            _wait_for(entered.is_set, "the first batch reaching the model")
            rest = [senders.submit(client.post, "/v1/embed", json={"images": [crop]}) for _ in range(2)]
            _wait_for(lambda: batcher.queued_faces == 2, "the queue filling")
            live = client.get("/health/live")
            ready = client.get("/health/ready")
            refused = client.post("/v1/embed", json={"images": [crop]})
            release.set()
            answers = [first.result(), *(r.result() for r in rest)]
        after = client.get("/health/ready")
    assert live.status_code == 200 and live.json()["status"] == "ok"
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "overloaded"
    assert "queue full (2 of 2 faces)" in ready.json()["error"]["message"]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [200, 200, 200] and after.status_code == 200


def test_a_detector_that_fails_to_load_leaves_nothing_running(models, tmp_path) -> None:
    broken = tmp_path / "det_broken.onnx"
    broken.write_bytes(b"not an onnx file")
    app = create_app(ServeSettings(model=str(models.plain), detector=str(broken)))
    before = {t.name for t in threading.enumerate()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception, match="det_broken.onnx"):
            with TestClient(app):
                pass
        gc.collect()
    state = app.state.serve
    assert state.batcher is None and state.runtime is None and state.health is None and state.pool is None
    leftover = {t.name for t in threading.enumerate()} - before
    assert not {name for name in leftover if name.startswith("facevib-")}, leftover
    assert not [w for w in caught if "was destroyed but it is pending" in str(w.message)]


def test_multipart_files_are_closed_when_the_form_is_refused(models) -> None:
    """A part larger than the in-memory spool is a real temporary file; an unknown form field
    refuses the request after the form was read, and the file must still be closed (an
    unclosed file is a ResourceWarning when it is collected)."""
    settings = ServeSettings(model=str(models.plain), detector="none", max_body_mb=4.0)
    big = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    files = [("images", ("big.png", png(big), "image/png")), ("bogus", (None, "1"))]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            response = client.post("/v1/embed", files=files)
            gc.collect()
    assert len(png(big)) > 1024 * 1024  # beyond starlette's 1 MiB spool: a file on disk
    assert response.status_code == 422 and "unknown form field 'bogus'" in response.json()["error"]["message"]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
