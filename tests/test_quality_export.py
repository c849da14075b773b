"""The served quality: ``--quality`` puts a ``quality`` output and its definition into the ONNX file,
and /v1/embed returns it per face through a real uvicorn."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from serve_support import TINY, aligned_crops, b64, png, running_server

from facevib.data.transforms import images_to_tensor
from facevib.engine.checkpoint import CHECKPOINT_FORMAT
from facevib.export import export_model
from facevib.models import create_model
from facevib.quality.heads import PFEHead
from facevib.quality.served import load_quality


@pytest.fixture(scope="module")
def quality_export(tmp_path_factory):
    """A tiny cellVIB backbone.pt, a heads file with a PFE head, and the file exported with --quality pfe."""
    folder = tmp_path_factory.mktemp("quality_export")
    torch.manual_seed(5)
    model = create_model("cellvib_r18", **TINY).eval()
    backbone = folder / "backbone.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": model.arch, "backbone": model.state_dict()}, backbone)
    torch.manual_seed(6)
    head = PFEHead(model.embedding_dim)
    with torch.no_grad():
        raw = head(model(images_to_tensor(aligned_crops()))).double().numpy()
    # A scale spanning exactly the two photos' raw scores: one maps to 0, the other to 1.
    knots = np.linspace(raw.min(), raw.max(), 11)
    heads_file = folder / "quality_heads.pt"
    torch.save(
        {
            "winner": "pfe",
            "embedding_dim": model.embedding_dim,
            "heads": {"pfe": head.state_dict()},
            "knots": {"pfe": torch.from_numpy(knots), "norm": torch.from_numpy(knots)},
            "calibration": "tests",
        },
        heads_file,
    )
    out = folder / "quality.onnx"
    result = export_model(backbone, out, quality="pfe", quality_file=heads_file, dynamo=False, opset=17)
    return model, heads_file, out, result


def test_export_puts_quality_in_the_graph_and_the_metadata(quality_export):
    import onnxruntime as ort

    model, heads_file, out, result = quality_export
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding", "quality"]
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["facevib.outputs"]) == ["embedding", "quality"]
    definition = json.loads(props["facevib.quality"])
    assert definition["name"] == "pfe" and len(definition["quantiles"]) == 11
    assert result.metadata.quality == definition
    crops = aligned_crops()
    embedding, quality = session.run(None, {"data": images_to_tensor(crops).numpy()})
    module, _ = load_quality(heads_file, "pfe", model.embedding_dim)
    with torch.no_grad():
        expected = module(model(images_to_tensor(crops))).numpy()
    np.testing.assert_allclose(quality, expected, atol=1e-5)
    assert np.all((quality >= 0) & (quality <= 1)) and abs(quality[0] - quality[1]) > 0.99


def test_quality_errors_name_the_problem(quality_export, tmp_path):
    model, heads_file, _, _ = quality_export
    with pytest.raises(ValueError, match="cannot be served"):
        load_quality(heads_file, "beta_sigma", model.embedding_dim)
    with pytest.raises(ValueError, match="no 'cr_fiqa' head|no calibration for quality 'cr_fiqa'"):
        load_quality(heads_file, "cr_fiqa", model.embedding_dim)
    with pytest.raises(ValueError, match="embedding_dim"):
        load_quality(heads_file, "pfe", model.embedding_dim + 1)
    with pytest.raises(FileNotFoundError):
        load_quality(tmp_path / "missing.pt", "pfe", model.embedding_dim)


def test_embed_returns_quality_per_face_through_uvicorn(quality_export):
    import onnxruntime as ort

    _, _, out, _ = quality_export
    crops = aligned_crops()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    expected = session.run(["quality"], {"data": images_to_tensor(crops).numpy()})[0]
    with running_server("uvicorn", env={"FACEVIB_MODEL": str(out)}) as (url, _):
        body = httpx.post(f"{url}/v1/embed", json={"images": [{"data": b64(png(c))} for c in crops]}, timeout=60)
        info = httpx.get(f"{url}/v1/info", timeout=30).json()
    assert body.status_code == 200, body.text
    faces = [result["faces"][0] for result in body.json()["results"]]
    assert [face["quality"] for face in faces] == pytest.approx(expected.tolist(), abs=1e-5)
    assert faces[0]["uncertainty"] is None
    assert info["runtime"]["outputs"] == ["embedding", "quality"] and info["model"]["quality"]["name"] == "pfe"


def test_embed_without_a_quality_output_returns_null(tmp_path):
    import onnxruntime  # noqa: F401  (the server's runtime; skip cleanly if the extra is missing)
    from fastapi.testclient import TestClient

    from facevib.export import build_metadata, export_onnx, write_metadata
    from facevib.serve import create_app
    from facevib.serve.settings import ServeSettings

    model = create_model("r18", **TINY).eval()
    path = export_onnx(model, tmp_path / "plain.onnx", dynamo=False)
    write_metadata(path, build_metadata(model))
    with TestClient(create_app(ServeSettings(model=str(path)))) as client:
        body = client.post("/v1/embed", json={"images": [{"data": b64(png(aligned_crops()[0]))}]}).json()
    assert body["results"][0]["faces"][0]["quality"] is None
