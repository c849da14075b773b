"""The server's ONNX Runtime wrapper: the IO-bound staged path, padding to warmed sizes, the
uncertainty output, metadata rules, worker thread priorities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serve_support import TINY, aligned_crops, b64, png, serve_models, torch_embeddings, unit

from facevib.data.transforms import images_to_tensor
from facevib.export import build_metadata, export_onnx, write_metadata
from facevib.models import create_model
from facevib.serve import create_app
from facevib.serve.images import normalise
from facevib.serve.runtime import ModelRuntime, pad_sizes
from facevib.serve.settings import ServeSettings


def test_staged_io_bound_batches_equal_session_run_and_pytorch() -> None:
    """stage() + run() (IO binding, the path CUDA uses with device 'cuda') on the CPU: the rows of
    several parts staged together equal a plain ``session.run`` of the same file and the PyTorch
    model, each part in its place."""
    import onnxruntime as ort

    models = serve_models()
    runtime = ModelRuntime.load(models.plain, device="cpu", max_batch=8)
    crops = aligned_crops()
    batch = normalise(np.concatenate([crops, crops[::-1], crops[:1]]), (127.5,) * 3, (127.5,) * 3)
    staged = runtime.stage([batch[:2], batch[2:4], batch[4:]])
    assert staged.count == 5 and staged.value.device_name().lower() == "cpu"
    (bound,) = runtime.run(staged)
    plain = ort.InferenceSession(str(models.plain), providers=["CPUExecutionProvider"])
    (reference,) = plain.run(None, {"data": batch})
    np.testing.assert_allclose(bound, reference, rtol=1e-5, atol=1e-5)
    expected = torch_embeddings(models.model, crops)
    np.testing.assert_allclose(bound[:2], expected, atol=1e-4)
    np.testing.assert_allclose(bound[2:4], expected[::-1], atol=1e-4)
    assert runtime.pipeline_depth == 1 and runtime.info()["io_binding"]


def test_pad_sizes() -> None:
    assert pad_sizes(1) == (1,)
    assert pad_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert pad_sizes(24) == (1, 2, 4, 8, 16, 24)


def test_padded_batches_give_the_unpadded_rows() -> None:
    """What the CUDA path does (zero rows up to a warmed size, then cut), checked on the CPU."""
    runtime = ModelRuntime.load(serve_models().plain, device="cpu", max_batch=8)
    assert runtime.padded_sizes is None  # CPU: shapes are free, no padding
    batch = normalise(np.concatenate([aligned_crops(), aligned_crops()[:1]]), (127.5,) * 3, (127.5,) * 3)
    (plain,) = runtime.infer(batch)
    runtime.padded_sizes = pad_sizes(8)
    (padded,) = runtime.infer(batch)
    assert padded.shape == (3, 32)
    np.testing.assert_allclose(padded, plain, atol=1e-5)


@pytest.fixture(scope="module")
def uncertainty_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(3)
    model = create_model("cellvib_r18", **TINY).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("unc") / "cellvib.onnx", dynamo=False, uncertainty=True)
    write_metadata(path, build_metadata(model, uncertainty=True))
    return model, path


def test_uncertainty_output_reaches_the_response(uncertainty_model) -> None:
    model, path = uncertainty_model
    crops = aligned_crops()
    with torch.no_grad():
        embedding, uncertainty = model.forward_with_uncertainty(images_to_tensor(crops))
    with TestClient(create_app(ServeSettings(model=str(path)))) as client:
        body = client.post("/v1/embed", json={"images": [{"data": b64(png(c))} for c in crops]}).json()
        info = client.get("/v1/info").json()
    assert info["runtime"]["outputs"] == ["embedding", "uncertainty"] and info["model"]["uncertainty"]
    for result, emb, unc in zip(body["results"], embedding.numpy(), uncertainty.numpy(), strict=True):
        face = result["faces"][0]
        np.testing.assert_allclose(face["embedding"], unit(emb.astype(np.float64)), atol=1e-5)
        assert face["uncertainty"] == pytest.approx(float(unc), abs=1e-4)


def test_bgr_models_get_reversed_channels() -> None:
    crops = aligned_crops()
    rgb = normalise(crops, (10.0, 20.0, 30.0), (50.0, 60.0, 70.0))
    bgr = normalise(crops, (30.0, 20.0, 10.0), (70.0, 60.0, 50.0), bgr=True)
    np.testing.assert_allclose(bgr, rgb[:, ::-1], atol=1e-5)
    expected = (crops[..., 0].astype(np.float32) - 10.0) / 50.0
    np.testing.assert_allclose(rgb[:, 0], expected, atol=1e-5)


def test_unloadable_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        ModelRuntime.load(tmp_path / "bad.onnx", device="cpu")
    with pytest.raises(FileNotFoundError):
        ModelRuntime.load(tmp_path / "absent.onnx", device="cpu")
