"""/v1/galleries in-process (ASGI, lifespan running, a real SQLite file): a session against the
PyTorch model's embeddings, the open-set decision, every bad input with its 4xx, auth, OpenAPI."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import aligned_crops, b64, png, serve_models, torch_embeddings, unit

from facevib.serve import create_app
from facevib.serve.settings import ServeSettings

pytestmark = pytest.mark.timeout(120)
DIM = 32  # serve_support.TINY


@pytest.fixture(scope="module")
def models():
    return serve_models()


@pytest.fixture(scope="module")
def identified_model(models, tmp_path_factory) -> tuple[Path, float]:
    """The tiny model with an identification calibration in its metadata (as --calibrate-identification writes)."""
    from facevib.export import build_metadata, write_metadata
    from facevib.onnx_meta import IdentificationCalibration

    threshold = 0.42
    calibration = IdentificationCalibration(threshold, 1e-2, 0.008, 0.9, 500, 400, True, "tests")
    metadata = dataclasses.replace(build_metadata(models.model), identification=calibration)
    out = tmp_path_factory.mktemp("identified") / "tiny_identified.onnx"
    return write_metadata(models.plain, metadata, out=out), threshold


def _client(model: Path, db: Path, **extra) -> TestClient:
    settings = ServeSettings(model=str(model), detector="none", gallery_db=str(db), max_images=8, **extra)
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture()
def client(models, tmp_path: Path) -> Iterator[TestClient]:
    with _client(models.plain, tmp_path / "faces.db") as test_client:
        yield test_client


def _crop_json(i: int) -> dict:
    return {"data": b64(png(aligned_crops()[i]))}


def test_session_enroll_search_delete_against_the_pytorch_model(client: TestClient, models) -> None:
    reference = unit(torch_embeddings(models.model, aligned_crops()))  # astronaut, grace hopper
    assert client.put("/v1/galleries/staff").status_code == 201
    assert client.put("/v1/galleries/staff").status_code == 200  # idempotent
    rng = np.random.default_rng(0)
    other = unit(rng.standard_normal(DIM))
    body = {
        "faces": [
            {"subject": "astronaut", "image": _crop_json(0), "metadata": {"badge": 7}},
            {"subject": "grace", "image": _crop_json(1)},
            {"subject": "grace", "embedding": other.tolist()},  # a second face of grace
        ]
    }
    enrolled = client.post("/v1/galleries/staff/faces", json=body)
    assert enrolled.status_code == 200, enrolled.text
    faces = enrolled.json()["faces"]
    assert [(f["status"], f["subject"]) for f in faces] == [("ok", "astronaut"), ("ok", "grace"), ("ok", "grace")]
    info = client.get("/v1/galleries/staff").json()
    assert (info["faces"], info["subjects"], info["embedding_dim"], info["index"]) == (3, 2, DIM, "exact")
    assert [g["name"] for g in client.get("/v1/galleries").json()["galleries"]] == ["staff"]

    found = client.post("/v1/galleries/staff/search", json={"image": _crop_json(0), "top_k": 5}).json()
    # Scores against the PyTorch model's embeddings: astronaut to itself 1; grace's best face of two.
    grace_best = max(float(reference[0] @ reference[1]), float(reference[0] @ other))
    assert [m["subject"] for m in found["matches"]] == ["astronaut", "grace"]
    assert found["matches"][0]["id"] == faces[0]["id"]
    assert found["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert found["matches"][1]["score"] == pytest.approx(grace_best, abs=1e-4)
    assert found["decision"] == {"subject": None, "threshold": None, "threshold_source": "none", "target_fpir": None}

    by_embedding = client.post("/v1/galleries/staff/search", json={"embedding": (3 * other).tolist(), "top_k": 1})
    assert by_embedding.json()["matches"] == [{"subject": "grace", "id": faces[2]["id"], "score": pytest.approx(1.0)}]

    gone = client.delete(f"/v1/galleries/staff/faces/{faces[0]['id']}")
    assert gone.status_code == 200 and gone.json()["deleted"] == [faces[0]["id"]]
    after = client.post("/v1/galleries/staff/search", json={"image": _crop_json(0)}).json()
    assert [m["subject"] for m in after["matches"]] == ["grace"]
    subject = client.delete("/v1/galleries/staff/subjects/grace").json()
    assert sorted(subject["deleted"]) == sorted([faces[1]["id"], faces[2]["id"]]) and subject["faces"] == 2
    assert client.get("/v1/galleries/staff").json()["faces"] == 0
    assert client.delete("/v1/galleries/staff").json() == {"gallery": "staff", "deleted": [], "faces": 0}
    assert client.get("/v1/galleries").json() == {"galleries": []}


def test_open_set_decision_threshold_sources(identified_model, tmp_path: Path) -> None:
    model, calibrated = identified_model
    with _client(model, tmp_path / "faces.db") as client:
        client.put("/v1/galleries/g")
        query = unit(np.random.default_rng(1).standard_normal(DIM))
        # A face at a known cosine c to the query: c * q + sqrt(1 - c^2) * (a unit vector orthogonal to q).
        orth = unit(np.random.default_rng(2).standard_normal(DIM))
        orth = unit(orth - (orth @ query) * query)
        for subject, cosine in (("near", calibrated + 0.05), ("far", calibrated - 0.05)):
            face = cosine * query + math.sqrt(1 - cosine**2) * orth
            client.post("/v1/galleries/g/faces", json={"faces": [{"subject": subject, "embedding": face.tolist()}]})
        answer = client.post("/v1/galleries/g/search", json={"embedding": query.tolist()}).json()
        assert answer["decision"] == {
            "subject": "near",
            "threshold": calibrated,
            "threshold_source": "calibration",
            "target_fpir": 1e-2,
        }
        assert answer["matches"][0]["score"] == pytest.approx(calibrated + 0.05, abs=1e-5)
        stricter = client.post("/v1/galleries/g/search", json={"embedding": query.tolist(), "threshold": 0.5}).json()
        assert stricter["decision"]["subject"] is None and stricter["decision"]["threshold_source"] == "request"
        # Accept iff score > threshold: a threshold equal to the score rejects.
        top = answer["matches"][0]["score"]
        equal = client.post("/v1/galleries/g/search", json={"embedding": query.tolist(), "threshold": top}).json()
        assert equal["decision"]["subject"] is None
        assert client.get("/v1/info").json()["model"]["identification"]["threshold"] == calibrated


def test_enrollment_answers_each_face_on_its_own(client: TestClient) -> None:
    client.put("/v1/galleries/g")
    good = unit(np.random.default_rng(3).standard_normal(DIM)).tolist()
    mixed = client.post(
        "/v1/galleries/g/faces",
        json={"faces": [{"subject": "a", "embedding": good}, {"subject": "b", "embedding": good[:5]}]},
    )
    assert mixed.status_code == 200
    first, second = mixed.json()["faces"]
    assert first["status"] == "ok"
    assert second["status"] == "error" and second["error"]["field"] == "faces[1].embedding"
    assert client.get("/v1/galleries/g").json()["faces"] == 1
    failed = client.post("/v1/galleries/g/faces", json={"faces": [{"subject": "b", "image": {"data": "!!"}}]})
    assert failed.status_code == 422 and failed.json()["error"]["code"] == "invalid_base64"
    assert failed.json()["faces"][0]["status"] == "error"


NAN = '{"faces": [{"subject": "a", "embedding": [NaN' + ", 0.1" * (DIM - 1) + "]}]}"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "field"),
    [
        (
            "post",
            "/v1/galleries/nobody/faces",
            {"faces": [{"subject": "a", "embedding": [1.0] * DIM}]},
            404,
            "gallery_not_found",
            "gallery",
        ),
        ("post", "/v1/galleries/nobody/search", {"embedding": [1.0] * DIM}, 404, "gallery_not_found", "gallery"),
        ("get", "/v1/galleries/nobody", None, 404, "gallery_not_found", "gallery"),
        ("delete", "/v1/galleries/nobody", None, 404, "gallery_not_found", "gallery"),
        (
            "post",
            "/v1/galleries/g/faces",
            {"faces": [{"subject": "a", "embedding": [1.0] * 7}]},
            422,
            "invalid_embedding",
            "faces[0].embedding",
        ),
        ("post", "/v1/galleries/g/faces", NAN, 422, "validation_error", "faces[0].embedding[0]"),
        (
            "post",
            "/v1/galleries/g/faces",
            {"faces": [{"subject": "a", "embedding": [0.0] * DIM}]},
            422,
            "invalid_embedding",
            "faces[0].embedding",
        ),
        (
            "post",
            "/v1/galleries/g/faces",
            {"faces": [{"subject": "  ", "embedding": [1.0] * DIM}]},
            422,
            "validation_error",
            "faces[0].subject",
        ),
        (
            "post",
            "/v1/galleries/g/faces",
            {"faces": [{"embedding": [1.0] * DIM}]},
            422,
            "validation_error",
            "faces[0].subject",
        ),
        ("post", "/v1/galleries/g/faces", {"faces": [{"subject": "a"}]}, 422, "validation_error", "faces[0]"),
        ("post", "/v1/galleries/g/faces", {"faces": []}, 422, "validation_error", "faces"),
        ("post", "/v1/galleries/g/search", {"embedding": [1.0] * 3}, 422, "invalid_embedding", "embedding"),
        ("post", "/v1/galleries/g/search", {"embedding": [1.0] * DIM, "top_k": 0}, 422, "validation_error", "top_k"),
        (
            "post",
            "/v1/galleries/g/search",
            {"embedding": [1.0] * DIM, "threshold": 2},
            422,
            "validation_error",
            "threshold",
        ),
        ("post", "/v1/galleries/g/search", {"top_k": 3}, 422, "validation_error", "body"),
        ("delete", "/v1/galleries/g/faces/no-such-id", None, 404, "face_not_found", "id"),
        ("delete", "/v1/galleries/g/subjects/nobody", None, 404, "subject_not_found", "subject"),
        ("put", "/v1/galleries/g", {"metadata": {"site": "other"}}, 409, "gallery_exists", "gallery"),
        ("put", "/v1/galleries/-bad", None, 422, "validation_error", "gallery"),
    ],
)
def test_bad_requests_get_their_4xx_naming_the_field(client, method, path, body, status, code, field) -> None:
    client.put("/v1/galleries/g")
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {}
    if isinstance(body, dict):
        kwargs = {"json": body}
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"]
    if code.endswith("not_found"):
        assert "'nobody'" in error["message"] or "'no-such-id'" in error["message"]  # the unknown value is named


def test_without_a_store_galleries_are_disabled_and_the_key_guards_them(models, tmp_path: Path) -> None:
    with TestClient(create_app(ServeSettings(model=str(models.plain))), raise_server_exceptions=False) as client:
        response = client.get("/v1/galleries")
        assert response.status_code == 404 and response.json()["error"]["code"] == "galleries_disabled"
        assert "--gallery-db" in response.json()["error"]["message"]
    with _client(models.plain, tmp_path / "faces.db", api_key="k") as client:
        for method, path in (("put", "/v1/galleries/g"), ("get", "/v1/galleries"), ("post", "/v1/galleries/g/search")):
            assert client.request(method, path).status_code == 401, path
        assert client.put("/v1/galleries/g", headers={"X-API-Key": "k"}).status_code == 201
        schema = client.get("/openapi.json", headers={"X-API-Key": "k"}).json()
    for path in (
        "/v1/galleries",
        "/v1/galleries/{gallery}",
        "/v1/galleries/{gallery}/faces",
        "/v1/galleries/{gallery}/faces/{face_id}",
        "/v1/galleries/{gallery}/subjects/{subject}",
        "/v1/galleries/{gallery}/search",
    ):
        assert path in schema["paths"], path
    components = schema["components"]["schemas"]
    assert {"EnrollRequest", "SearchRequest", "SearchResponse", "EnrollResponse"} <= set(components)
    assert "max" in schema["paths"]["/v1/galleries/{gallery}/search"]["post"]["description"]


def test_faces_survive_a_restart(models, tmp_path: Path) -> None:
    vector = unit(np.random.default_rng(4).standard_normal(DIM)).tolist()
    with _client(models.plain, tmp_path / "faces.db") as client:
        client.put("/v1/galleries/g")
        face_id = client.post("/v1/galleries/g/faces", json={"faces": [{"subject": "a", "embedding": vector}]}).json()
    with _client(models.plain, tmp_path / "faces.db") as client:
        match = client.post("/v1/galleries/g/search", json={"embedding": vector}).json()["matches"][0]
        assert match["id"] == face_id["faces"][0]["id"]


def test_an_unwritable_gallery_database_stops_start_up(models, tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "faces.db"
    with pytest.raises(ValueError, match=str(missing)):
        create_app(ServeSettings(model=str(models.plain), gallery_db=str(missing)))


def test_gallery_settings_from_the_environment_and_their_checks(models, tmp_path: Path) -> None:
    db = str(tmp_path / "env.db")
    settings = ServeSettings.from_env({"FACEVIB_MODEL": str(models.plain), "FACEVIB_GALLERY_DB": db})
    assert settings.gallery_db == db and settings.gallery_url is None
    with pytest.raises(ValueError, match="not both"):
        ServeSettings(model="m", gallery_db=db, gallery_url="postgresql://x@/y")
    with pytest.raises(ValueError, match="gallery_poll_s"):
        ServeSettings(model="m", gallery_poll_s=0)
    with pytest.raises(ValueError, match="postgresql://"):
        create_app(ServeSettings(model=str(models.plain), gallery_url="mysql://x@/y"))
    secret = ServeSettings(model="m", gallery_url="postgresql://u:hunter2@/faces?host=/tmp")
    assert "hunter2" not in str(secret.public())
