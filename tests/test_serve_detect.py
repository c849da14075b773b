"""The server's photo mode with the real detectors: detect -> align -> embed in the same micro-batch.

In-process (ASGI with the lifespan running, as tests/test_serve_app.py) with the built-in
MTCNN, against the PyTorch model on the crops ``facevib.align`` makes from the detector's own
landmarks; plus the request options, ``no_face``, ``/v1/verify`` on photos, ``/v1/info`` and
``/health``, ``--detector none`` and an SCRFD file (the test graph of tests/test_detect_scrfd.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from detect_support import ASTRONAUT_POINTS, astronaut, grace_hopper, iou, paste_faces
from fastapi.testclient import TestClient
from serve_support import ROOT, b64, jpeg, png, running_server, serve_models, server_log, torch_embeddings, unit
from test_detect_scrfd import build_scrfd

from facevib.align import norm_crop
from facevib.data.imagecodec import decode_rgb
from facevib.detect import load_detector
from facevib.serve import create_app
from facevib.serve.settings import ServeSettings

pytestmark = pytest.mark.timeout(120)

# Three faces: the astronaut 240 px wide, Grace Hopper 150 px, the astronaut 70 px.
PLACEMENTS = [("astronaut", 240, (20, 20)), ("grace", 150, (330, 60)), ("astronaut", 70, (520, 300))]


@pytest.fixture(scope="module")
def models():
    return serve_models()


@pytest.fixture(scope="module")
def client(models) -> Iterator[TestClient]:
    settings = ServeSettings(model=str(models.plain), detector="mtcnn")
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def canvas() -> np.ndarray:
    return paste_faces(420, 640, PLACEMENTS)[0]


def _embed(client: TestClient, images: list[dict], **options) -> tuple[int, dict]:
    response = client.post("/v1/embed", json={"images": images, **options})
    return response.status_code, response.json()


def test_photo_faces_are_detected_aligned_and_embedded(client: TestClient, models, canvas) -> None:
    data = jpeg(canvas)
    status, body = _embed(client, [{"data": b64(data)}])
    assert status == 200, body
    faces = body["results"][0]["faces"]
    # The server's answer is the detector's faces, largest first, each embedded from norm_crop.
    decoded = decode_rgb(data)
    expected = load_detector().detect(decoded)
    assert len(faces) == len(expected) == len(PLACEMENTS)
    crops = np.stack([norm_crop(decoded, face.landmarks) for face in expected])
    reference = unit(torch_embeddings(models.model, crops))
    for got, face, row in zip(faces, expected, reference, strict=True):
        np.testing.assert_allclose(got["bbox"], face.bbox, atol=1e-3)
        np.testing.assert_allclose(got["landmarks"], face.landmarks, atol=1e-3)
        assert got["det_score"] == pytest.approx(face.score, abs=1e-6)
        np.testing.assert_allclose(got["embedding"], row, atol=1e-5)
    widths = [f["bbox"][2] - f["bbox"][0] for f in faces]
    assert widths == sorted(widths, reverse=True)


def test_detected_and_hand_landmarks_give_close_embeddings(client: TestClient) -> None:
    """The same photo through photo mode and landmarks mode: cosine 0.978 measured (tiny random-weight model)."""
    data = b64(jpeg(astronaut()))
    status, body = _embed(client, [{"data": data}, {"data": data, "landmarks": ASTRONAUT_POINTS.tolist()}])
    assert status == 200, body
    detected, by_hand = (r["faces"][0] for r in body["results"])
    assert detected["det_score"] > 0.99 and by_hand["det_score"] is None
    assert float(np.dot(detected["embedding"], by_hand["embedding"])) > 0.95


def test_request_options_max_faces_largest_only_min_face_size(client: TestClient, canvas) -> None:
    data = b64(jpeg(canvas))
    _, every = _embed(client, [{"data": data}])
    boxes = [f["bbox"] for f in every["results"][0]["faces"]]
    for options, count in (({"max_faces": 2}, 2), ({"largest_only": True}, 1), ({"min_face_size": 120}, 2)):
        status, body = _embed(client, [{"data": data}], **options)
        assert status == 200, (options, body)
        faces = body["results"][0]["faces"]
        assert len(faces) == count, options
        for face, box in zip(faces, boxes, strict=False):
            # Same faces; min_face_size starts MTCNN's pyramid elsewhere, so boxes move a little.
            assert iou(np.array(face["bbox"]), np.array(box)) > 0.75
    # The same options as multipart form fields.
    files = [("images", ("canvas.jpg", jpeg(canvas), "image/jpeg"))]
    response = client.post("/v1/embed", files=files, data={"largest_only": "true"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["faces"]) == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_faces": 0}, "max_faces"),
        ({"min_face_size": -5}, "min_face_size"),
        ({"largest_only": "maybe"}, "largest_only"),
    ],
)
def test_bad_options_are_422_naming_the_field(client: TestClient, options, field) -> None:
    status, body = _embed(client, [{"data": b64(jpeg(astronaut()))}], **options)
    assert status == 422 and body["error"]["code"] == "validation_error" and body["error"]["field"] == field


def test_photo_without_a_face_is_a_per_image_error(client: TestClient) -> None:
    blank = np.full((240, 320, 3), 128, np.uint8)
    status, body = _embed(client, [{"data": b64(png(blank))}, {"data": b64(jpeg(astronaut()))}])
    assert status == 200
    first, second = body["results"]
    assert first["status"] == "error" and first["error"]["code"] == "no_face"
    assert first["error"]["field"] == "images[0].data"
    assert second["status"] == "ok" and len(second["faces"]) == 1
    # Alone, the image's error is the response's (422, not a server failure).
    status, body = _embed(client, [{"data": b64(png(blank))}])
    assert status == 422 and body["error"]["code"] == "no_face"


def test_verify_photos_uses_the_largest_face(client: TestClient, canvas) -> None:
    photo_a, photo_b = b64(jpeg(canvas)), b64(jpeg(grace_hopper()))
    _, body = _embed(client, [{"data": photo_a}, {"data": photo_b}])
    largest_a, largest_b = (np.array(r["faces"][0]["embedding"]) for r in body["results"])
    response = client.post("/v1/verify", json={"a": {"data": photo_a}, "b": {"data": photo_b}, "threshold": 0.5})
    assert response.status_code == 200, response.text
    assert response.json()["score"] == pytest.approx(float(largest_a @ largest_b), abs=1e-5)
    blank = b64(png(np.zeros((200, 200, 3), np.uint8)))
    response = client.post("/v1/verify", json={"a": {"data": blank}, "b": {"data": photo_b}, "threshold": 0.5})
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_face"
    assert response.json()["error"]["field"] == "a.data"


def test_info_and_health_cover_the_detector(client: TestClient) -> None:
    info = client.get("/v1/info").json()["detector"]
    assert info["name"] == "mtcnn" and info["min_face_size"] == 20.0 and len(info["files"]) == 3
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["detector"] == "mtcnn" and health["detector_ms"] > 0
    metrics = client.get("/metrics").text
    assert 'facevib_faces_total{mode="detect"}' in metrics


def test_detector_none_and_an_scrfd_file(models, tmp_path) -> None:
    photo = b64(jpeg(astronaut()))
    with TestClient(create_app(ServeSettings(model=str(models.plain), detector="none"))) as client:
        status, body = _embed(client, [{"data": photo}])
        assert status == 422 and body["error"]["code"] == "no_landmarks"
        assert client.get("/v1/info").json()["detector"] is None
        assert client.get("/health").json()["detector"] is None
    scrfd = build_scrfd(tmp_path / "det_test.onnx")
    with TestClient(create_app(ServeSettings(model=str(models.plain), detector=str(scrfd)))) as client:
        status, body = _embed(client, [{"data": photo}])
        assert status == 200, body  # the test graph's faces, whatever the photo
        assert client.get("/v1/info").json()["detector"]["name"] == "scrfd"
    with pytest.raises(FileNotFoundError, match="det_missing.onnx"):
        create_app(ServeSettings(model=str(models.plain), detector=str(tmp_path / "det_missing.onnx")))


@pytest.mark.slow
def test_real_server_process_detects_with_torch_blocked(models, tmp_path) -> None:
    """serve/app.py as its own process, ``import torch`` blocked as in the serving image: a photo in,
    its face out (the default detector is the built-in MTCNN)."""
    import httpx
    from test_serve_process import BLOCKER

    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    paths = [str(tmp_path), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    with running_server("--model", str(models.plain), env={"PYTHONPATH": os.pathsep.join(paths)}) as (url, proc):
        response = httpx.post(f"{url}/v1/embed", json={"images": [{"data": b64(jpeg(astronaut()))}]}, timeout=60)
        log = server_log(proc)
    assert response.status_code == 200, (response.text, log)
    (face,) = response.json()["results"][0]["faces"]
    assert face["det_score"] > 0.99 and len(face["landmarks"]) == 5
    assert "blocked for the serving test" not in log
