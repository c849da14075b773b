"""The server in-process (ASGI, lifespan running): answers against the PyTorch model, every bad
input answered with its 4xx, auth, info, metrics, the OpenAPI document."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import (
    ASTRONAUT_LANDMARKS,
    aligned_crops,
    b64,
    jpeg,
    photos,
    png,
    serve_models,
    torch_embeddings,
    unit,
)

from facevib.align import norm_crop
from facevib.serve import create_app
from facevib.serve.settings import ServeSettings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models():
    return serve_models()


@pytest.fixture(scope="module")
def client(models) -> Iterator[TestClient]:
    # No detector: this client checks the no_landmarks answer (tests/test_serve_detect.py covers photo mode).
    settings = ServeSettings(
        model=str(models.calibrated), max_body_mb=2.0, max_image_pixels=2_000_000, max_images=8, detector="none"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def embed_json(client: TestClient, images: list[dict], **kwargs) -> tuple[int, dict]:
    response = client.post("/v1/embed", json={"images": images}, **kwargs)
    return response.status_code, response.json()


def test_aligned_crops_give_the_pytorch_models_embeddings(client: TestClient, models) -> None:
    crops = aligned_crops()
    expected = torch_embeddings(models.model, crops)
    images = [{"data": b64(png(crops[0])), "aligned": True}, {"data": b64(png(crops[1]))}]  # second: by size
    status, body = embed_json(client, images)
    assert status == 200, body
    assert body["model"] and set(body["timings_ms"]) == {"decode", "queue", "inference", "total"}
    for result, raw in zip(body["results"], expected, strict=True):
        (face,) = result["faces"]
        assert result["status"] == "ok"
        np.testing.assert_allclose(face["embedding"], unit(raw), atol=1e-5)
        assert face["norm"] == pytest.approx(np.linalg.norm(raw), rel=1e-5)
        assert face["uncertainty"] is None and face["bbox"] is None and face["det_score"] is None


def test_landmark_mode_equals_facevib_align_then_embedding(client: TestClient, models) -> None:
    images, crops = [], []
    for photo, landmarks in photos():
        images.append({"data": b64(jpeg(photo)), "landmarks": landmarks.tolist()})
        from facevib.data.imagecodec import decode_rgb

        crops.append(norm_crop(decode_rgb(jpeg(photo)), landmarks))  # what the server decodes
    status, body = embed_json(client, images)
    assert status == 200, body
    expected = unit(torch_embeddings(models.model, np.stack(crops)))
    for result, row, (_, landmarks) in zip(body["results"], expected, photos(), strict=True):
        np.testing.assert_allclose(result["faces"][0]["embedding"], row, atol=1e-5)
        np.testing.assert_allclose(result["faces"][0]["landmarks"], landmarks)


def test_multipart_equals_json(client: TestClient) -> None:
    crops = aligned_crops()
    files = [("images", ("a.png", png(crops[0]), "image/png")), ("images", ("b.jpg", jpeg(crops[1]), "image/jpeg"))]
    response = client.post("/v1/embed", files=files)
    assert response.status_code == 200, response.text
    _, from_json = embed_json(client, [{"data": b64(png(crops[0]))}, {"data": b64(jpeg(crops[1]))}])
    for a, b in zip(response.json()["results"], from_json["results"], strict=True):
        np.testing.assert_allclose(a["faces"][0]["embedding"], b["faces"][0]["embedding"], atol=1e-6)


def test_verify_uses_the_calibrated_threshold(client: TestClient, models) -> None:
    crops = aligned_crops()
    a, b = ({"data": b64(png(c)), "aligned": True} for c in crops)
    same = client.post("/v1/verify", json={"a": a, "b": a}).json()
    assert same["match"] is True and same["score"] == pytest.approx(1.0, abs=1e-6)
    assert same["threshold"] == pytest.approx(models.threshold)
    assert same["threshold_source"] == "calibration" and same["target_fpr"] == pytest.approx(models.target_fpr)
    assert same["calibration_note"] is None
    different = client.post("/v1/verify", json={"a": a, "b": b}).json()
    expected = unit(torch_embeddings(models.model, crops))
    assert different["score"] == pytest.approx(float(expected[0] @ expected[1]), abs=1e-5)
    assert different["match"] is False  # the threshold lies between this score and 1
    # An embedding operand, and the request's own threshold.
    vector = {"embedding": (expected[1] * 3.0).tolist()}  # scale does not matter
    override = client.post("/v1/verify", json={"a": a, "b": vector, "threshold": different["score"] - 0.01}).json()
    assert override["match"] is True and override["threshold_source"] == "request" and override["target_fpr"] is None
    assert override["score"] == pytest.approx(different["score"], abs=1e-5)


def test_verify_never_applies_a_template_threshold(models, tmp_path) -> None:
    """A template-level calibration (IJB templates) is not the single-image threshold: the server
    falls back to its own (or asks for one) and says why in `calibration_note`."""
    from serve_support import with_calibration

    template = with_calibration(models.model, models.plain, tmp_path / "template.onnx", 0.9973, 1e-3, "template")
    request = {"a": {"embedding": [1.0, 0.0] + [0.0] * 30}, "b": {"embedding": [0.6, 0.8] + [0.0] * 30}}
    with TestClient(create_app(ServeSettings(model=str(template), threshold=0.5))) as client:
        body = client.post("/v1/verify", json=request).json()
        assert client.get("/v1/info").json()["model"]["calibration"]["protocol"] == "template"
    assert (body["threshold"], body["threshold_source"], body["match"]) == (0.5, "server", True)  # cosine 0.6
    assert body["target_fpr"] is None and "0.9973 is for template scores" in body["calibration_note"]
    with TestClient(create_app(ServeSettings(model=str(template))), raise_server_exceptions=False) as client:
        refused = client.post("/v1/verify", json=request)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_threshold"
    assert "not for the cosine of two single images" in refused.json()["error"]["message"]


def test_embeddings_are_written_at_float32_precision(client: TestClient, models) -> None:
    """About 10 characters a value (float32's shortest round-trip digits), not float64's ~19,
    and still the model's embedding."""
    crop = aligned_crops()[:1]
    response = client.post("/v1/embed", json={"images": [{"data": b64(png(crop[0])), "aligned": True}]})
    text = response.text
    values = text.split('"embedding":[', 1)[1].split("]", 1)[0].split(",")
    assert len(values) == 32 and sum(map(len, values)) / len(values) <= 12
    expected = unit(torch_embeddings(models.model, crop))[0]
    np.testing.assert_allclose([float(v) for v in values], expected, atol=1e-5)


def test_one_bad_image_does_not_fail_the_others(client: TestClient) -> None:
    crops = aligned_crops()
    status, body = embed_json(client, [{"data": b64(png(crops[0]))}, {"data": "%%%"}, {"data": b64(png(crops[1]))}])
    assert status == 200
    assert [r["status"] for r in body["results"]] == ["ok", "error", "ok"]
    assert body["results"][1]["error"]["code"] == "invalid_base64"
    assert body["results"][1]["error"]["field"] == "images[1].data"


def _truncated_jpeg() -> str:
    data = jpeg(aligned_crops()[0])
    return b64(data[: len(data) // 2])


def _bomb() -> str:
    from test_serve_images import png_claiming

    return b64(png_claiming(30_000, 30_000))


GOOD = None  # filled lazily: a valid aligned crop, base64


def _good() -> str:
    global GOOD
    if GOOD is None:
        GOOD = b64(png(aligned_crops()[0]))
    return GOOD


BAD_EMBED = [
    # (description, images, status, code, field)
    ("bad base64", lambda: [{"data": "not*base64"}], 422, "invalid_base64", "images[0].data"),
    (
        "not an image",
        lambda: [{"data": b64(b"hello, this is text")}],
        422,
        "unsupported_image_format",
        "images[0].data",
    ),
    ("undecodable PNG", lambda: [{"data": b64(b"\x89PNG\r\n\x1a\n" + bytes(40))}], 422, None, "images[0].data"),
    ("truncated JPEG", lambda: [{"data": _truncated_jpeg()}], 422, "invalid_image", "images[0].data"),
    ("decompression bomb", lambda: [{"data": _bomb()}], 413, "image_too_large", "images[0].data"),
    (
        "4 landmarks",
        lambda: [{"data": _good(), "landmarks": [[1, 2]] * 4}],
        422,
        "validation_error",
        "images[0].landmarks",
    ),
    (
        "3-number point",
        lambda: [{"data": _good(), "landmarks": [[1, 2, 3]] + [[1, 2]] * 4}],
        422,
        "validation_error",
        "images[0].landmarks[0]",
    ),
    (
        "non-number landmark",
        lambda: [{"data": _good(), "landmarks": [["a", 2]] + [[1, 2]] * 4}],
        422,
        "validation_error",
        "images[0].landmarks[0][0]",
    ),
    (
        "wrong crop size",
        lambda: [{"data": b64(png(np.zeros((100, 90, 3), np.uint8))), "aligned": True}],
        422,
        "wrong_crop_size",
        "images[0].data",
    ),
    (
        "no landmarks, no detector",
        lambda: [{"data": b64(png(np.zeros((200, 150, 3), np.uint8)))}],
        422,
        "no_landmarks",
        "images[0].landmarks",
    ),
    (
        "unknown field",
        lambda: [{"data": _good(), "landmark": [[1, 2]] * 5}],
        422,
        "validation_error",
        "images[0].landmark",
    ),
    ("data missing", lambda: [{}], 422, "validation_error", "images[0].data"),
    ("not an object", lambda: ["abc"], 422, "validation_error", "images[0]"),
]


@pytest.mark.parametrize(("name", "images", "status", "code", "field"), BAD_EMBED, ids=[c[0] for c in BAD_EMBED])
def test_bad_images_get_their_4xx_naming_the_field(client: TestClient, name, images, status, code, field) -> None:
    response = client.post("/v1/embed", json={"images": images()})
    body = response.json()
    assert response.status_code == status, body
    assert body["error"]["field"] == field and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    assert body["results"][0]["status"] == "error"
    assert "Traceback" not in response.text
    ok, _ = embed_json(client, [{"data": _good()}])
    assert ok == 200  # still serving


def _raw(text: str) -> dict:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def _landmarks_json(first: float) -> str:
    """A body whose first landmark coordinate is ``first`` (NaN/Infinity: JSON extensions many clients emit)."""
    return json.dumps({"images": [{"data": _good(), "landmarks": [[first, 1.0]] + [[1.0, 2.0]] * 4}]})


BAD_REQUESTS = [
    ("NaN landmark", "/v1/embed", lambda: _raw(_landmarks_json(float("nan"))), 422, "images[0].landmarks[0][0]"),
    ("infinite landmark", "/v1/embed", lambda: _raw(_landmarks_json(float("inf"))), 422, "images[0].landmarks[0][0]"),
    ("malformed JSON", "/v1/embed", lambda: _raw('{"images": ['), 400, "body"),
    ("no images", "/v1/embed", lambda: {"json": {"images": []}}, 422, "images"),
    ("images not a list", "/v1/embed", lambda: {"json": {"images": "x"}}, 422, "images"),
    ("too many images", "/v1/embed", lambda: {"json": {"images": [{"data": "eA=="}] * 9}}, 422, "images"),
    (
        "text/plain",
        "/v1/embed",
        lambda: {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "content-type",
    ),
    ("no content type", "/v1/verify", lambda: {"content": b"{}"}, 415, "content-type"),
    ("body too large", "/v1/embed", lambda: {"json": {"images": [{"data": "A" * 3_000_000}]}}, 413, "body"),
    (
        "embedding of wrong size",
        "/v1/verify",
        lambda: {"json": {"a": {"embedding": [0.1] * 31}, "b": {"embedding": [0.1] * 32}}},
        422,
        "a.embedding",
    ),
    (
        "NaN embedding",
        "/v1/verify",
        lambda: _raw(json.dumps({"a": {"embedding": [float("nan")] + [1.0] * 31}, "b": {"embedding": [1.0]}})),
        422,
        "a.embedding[0]",
    ),
    (
        "zero embedding",
        "/v1/verify",
        lambda: {"json": {"a": {"embedding": [0.0] * 32}, "b": {"embedding": [0.1] * 32}}},
        422,
        "a.embedding",
    ),
    (
        "bad base64 in verify",
        "/v1/verify",
        lambda: {"json": {"a": {"data": "!!"}, "b": {"embedding": [0.1] * 32}}},
        422,
        "a.data",
    ),
    (
        "bad landmarks in verify",
        "/v1/verify",
        lambda: {"json": {"a": {"data": _good(), "landmarks": [[0, 0]] * 6}, "b": {"embedding": [0.1] * 32}}},
        422,
        "a.landmarks",
    ),
    (
        "threshold out of range",
        "/v1/verify",
        lambda: {"json": {"a": {"embedding": [0.1] * 32}, "b": {"embedding": [0.1] * 32}, "threshold": 2}},
        422,
        "threshold",
    ),
    (
        "multipart without images",
        "/v1/embed",
        lambda: {"files": [("other", ("a.png", b"x", "image/png"))]},
        422,
        "other",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "request_kwargs", "status", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_their_4xx_naming_the_field(
    client: TestClient, name, path, request_kwargs, status, field
) -> None:
    response = client.post(path, **request_kwargs())
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message", "field"} and body["error"]["field"] == field
    assert "Traceback" not in response.text
    ok, _ = embed_json(client, [{"data": _good()}])
    assert ok == 200


def test_streamed_body_over_the_limit_is_cut_off(client: TestClient) -> None:
    """No Content-Length (chunked upload): the limit is enforced while the body streams in."""
    chunks = iter([b'{"images": [{"data": "'] + [b"A" * 500_000] * 6)
    response = client.post("/v1/embed", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    files = [("images", ("big.png", b"\x89PNG" + bytes(3_000_000), "image/png"))]
    assert client.post("/v1/embed", files=files).status_code == 413  # multipart, declared length


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/embed")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_health_info_metrics_openapi(client: TestClient, models) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["inference_ms"] > 0 and health["cosine"] >= 0.9999
    info = client.get("/v1/info").json()
    assert info["runtime"]["providers"] == ["CPUExecutionProvider"] and info["warnings"] == []
    assert info["model"]["embedding_dim"] == 32 and info["batching"]["max_batch"] == 32
    assert info["model"]["calibration"]["threshold"] == pytest.approx(models.threshold)
    metrics = client.get("/metrics").text
    assert 'facevib_requests_total{endpoint="/v1/embed",status="200"}' in metrics
    assert 'facevib_errors_total{code="invalid_base64"}' in metrics
    assert "facevib_batch_size_count" in metrics and "facevib_queue_depth" in metrics
    assert 'facevib_faces_total{mode="aligned"}' in metrics
    schema = client.get("/openapi.json").json()
    for path in ("/v1/embed", "/v1/verify", "/health", "/health/live", "/health/ready", "/v1/info", "/metrics"):
        assert path in schema["paths"]
    embed = schema["paths"]["/v1/embed"]["post"]
    assert set(embed["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"413", "415", "422", "503"} <= set(embed["responses"])
    assert {"EmbedRequest", "ImageInput", "VerifyRequest", "ErrorResponse"} <= set(schema["components"]["schemas"])


def test_readiness_follows_the_background_check_and_liveness_does_not(models) -> None:
    app = create_app(ServeSettings(model=str(models.plain), health_interval_s=3600))  # checks run by hand here
    with TestClient(app, raise_server_exceptions=False) as client:
        ready = client.get("/health/ready").json()
        assert ready["status"] == "ok" and ready["cosine"] == pytest.approx(1.0, abs=1e-6)
        assert ready["max_queue"] == 512 and ready["queued_faces"] == 0
        health, runtime = app.state.serve.health, app.state.serve.runtime
        good = runtime.reference_output
        runtime.reference_output = good * 3.0  # same direction: the cosine check passes, as on TF32
        assert health.check().ok and client.get("/health").status_code == 200
        runtime.reference_output = -good  # as if the runtime now computed something else
        assert not health.check().ok
        broken, alias, live = client.get("/health/ready"), client.get("/health"), client.get("/health/live")
        runtime.reference_output = good
        health.check()
        assert client.get("/health").status_code == 200
    assert broken.status_code == alias.status_code == 503 and live.status_code == 200
    assert "cosine -1.000000 to its start-up reference" in broken.json()["error"]["message"]
    # After shutdown (as before start-up) nothing is loaded: 503 with Retry-After, not a crash;
    # the process still answers its liveness probe.
    stopped_client = TestClient(app, raise_server_exceptions=False)
    stopped = stopped_client.get("/health")
    assert stopped.status_code == 503 and stopped.json()["error"]["code"] == "unavailable"
    assert stopped.headers["retry-after"] == "5" and stopped_client.get("/health/live").status_code == 200


def test_api_key_guards_everything_but_health(models) -> None:
    settings = ServeSettings(model=str(models.plain), api_key="s3cret")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/health").status_code == 200
        for method, path in (
            ("get", "/v1/info"),
            ("get", "/metrics"),
            ("get", "/openapi.json"),
            ("post", "/v1/embed"),
            ("post", "/v1/verify"),
        ):
            response = client.request(method, path)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized", path
            wrong = client.request(method, path, headers={"X-API-Key": "s3cre7"})
            assert wrong.status_code == 401
        assert client.get("/v1/info", headers={"X-API-Key": "s3cret"}).status_code == 200
        crops = aligned_crops()
        status, _ = embed_json(client, [{"data": b64(png(crops[0]))}], headers={"X-API-Key": "s3cret"})
        assert status == 200


def test_uncalibrated_model_needs_a_threshold_and_cuda_request_is_loud(models, caplog) -> None:
    settings = ServeSettings(model=str(models.plain), device="cuda")
    with caplog.at_level(logging.WARNING, logger="facevib.serve"):
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            info = client.get("/v1/info").json()
            request = {"a": {"embedding": [0.1] * 32}, "b": {"embedding": [0.2] * 32}}
            response = client.post("/v1/verify", json=request)
    # This machine's onnxruntime has no CUDA provider: the request for it must not pass silently.
    assert info["runtime"]["providers"] == ["CPUExecutionProvider"] and info["runtime"]["cuda_active"] is False
    assert any("CUDA was requested" in w for w in info["warnings"])
    assert any("CUDA was requested" in r.getMessage() for r in caplog.records)
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_threshold"


def test_settings_from_environment_and_errors(models) -> None:
    env = {"FACEVIB_MODEL": str(models.plain), "FACEVIB_MAX_BATCH": "4", "FACEVIB_MAX_DELAY_MS": "2.5"}
    settings = ServeSettings.from_env(env)
    assert (settings.model, settings.max_batch, settings.max_delay_ms) == (str(models.plain), 4, 2.5)
    assert ServeSettings.from_env({"FACEVIB_API_KEY": ""}).api_key is None  # compose's `${KEY:-}`
    with pytest.raises(ValueError, match="max_batch must be int"):
        ServeSettings.from_env({"FACEVIB_MAX_BATCH": "many"})
    with pytest.raises(ValueError, match="max_queue"):
        ServeSettings(max_batch=64, max_queue=8)
    with pytest.raises(ValueError, match=r"max_queue \(16\) must be >= max_images \(64\)"):
        ServeSettings(max_batch=8, max_queue=16)
    with pytest.raises(ValueError, match="device"):
        ServeSettings(device="tpu")
    with pytest.raises(ValueError, match="no model"):
        create_app(ServeSettings())
    with pytest.raises(FileNotFoundError):
        create_app(ServeSettings(model="/nonexistent/model.onnx"))


def test_detector_slot_gives_per_face_results(models) -> None:
    """The detection path with a stand-in detector (the real one lives in facevib.detect): two
    faces found in one photo, each aligned and embedded, largest first."""

    class Face:
        def __init__(self, landmarks, score):
            self.landmarks, self.score = landmarks, score
            self.bbox = np.array([*landmarks.min(0) - 20, *landmarks.max(0) + 20])

    class TwoFaces:
        calls: list = []

        def detect(self, image, *, min_face_size=None, threshold=None, max_faces=None):
            if image.min() == image.max():  # the health check's blank image: no face, as a real detector
                return []
            self.calls.append(image.shape)
            return [Face(ASTRONAUT_LANDMARKS, 0.99), Face(ASTRONAUT_LANDMARKS * 0.5, 0.8)]

    photo = photos()[0][0]
    detector = TwoFaces()
    with TestClient(create_app(ServeSettings(model=str(models.plain)), detector=detector)) as client:
        status, body = embed_json(client, [{"data": b64(png(photo))}])
    assert status == 200 and detector.calls == [photo.shape]
    faces = body["results"][0]["faces"]
    crops = np.stack([norm_crop(photo, ASTRONAUT_LANDMARKS), norm_crop(photo, ASTRONAUT_LANDMARKS * 0.5)])
    expected = unit(torch_embeddings(models.model, crops))
    for face, row, score in zip(faces, expected, (0.99, 0.8), strict=True):
        np.testing.assert_allclose(face["embedding"], row, atol=1e-5)
        assert face["det_score"] == pytest.approx(score) and len(face["bbox"]) == 4


def test_json_shapes_match_the_documented_schema(client: TestClient) -> None:
    """Responses validate against their own response models (what /openapi.json documents)."""
    from facevib.serve.schemas import EmbedResponse, ErrorResponse, VerifyResponse

    _, body = embed_json(client, [{"data": _good()}, {"data": "!"}])
    EmbedResponse.model_validate(body)
    vector = {"embedding": [0.1] * 32}
    VerifyResponse.model_validate(client.post("/v1/verify", json={"a": vector, "b": vector}).json())
    ErrorResponse.model_validate(client.post("/v1/verify", json={"a": vector}).json())
    json.dumps(body)
