"""ONNX export: interface, onnx.checker, ONNX Runtime == PyTorch for the three model families."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from facevib.eval.embed import Embedder, load_embedder
from facevib.export import INPUT_NAME, OUTPUT_NAME, compare_onnx, export_onnx
from facevib.models import create_model

TINY = {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 32), "embedding_dim": 32}


def _interface(path: Path) -> tuple[list, list]:
    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in graph.input], [(v.name, dims(v)) for v in graph.output]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Each family exported once with the default (dynamo) exporter, from training mode."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in ("r18", "cellvib_r18", "deepvib_r18"):
        torch.manual_seed(0)
        model = create_model(name, **TINY).train()
        path = export_onnx(model, folder / f"{name}.onnx")
        assert model.training  # the caller's mode is restored
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", ["r18", "cellvib_r18", "deepvib_r18"])
def test_onnx_runtime_equals_pytorch_at_batch_1_and_5(exported: dict, name: str) -> None:
    model, path = exported[name]
    onnx.checker.check_model(str(path), full_check=True)
    inputs, outputs = _interface(path)
    assert len(inputs) == 1 and inputs[0][0] == INPUT_NAME and inputs[0][1][1:] == [3, 112, 112]
    assert isinstance(inputs[0][1][0], str)  # symbolic batch dimension
    assert len(outputs) == 1 and outputs[0][0] == OUTPUT_NAME and outputs[0][1][1] == 32
    assert compare_onnx(model, path, batch_sizes=(1, 5)) < 1e-4
    assert model.training


def test_vib_models_export_the_deterministic_mean(exported: dict) -> None:
    model, path = exported["cellvib_r18"]
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    model.train()
    torch.testing.assert_close(first, second)  # eval mode: no sampling
    images = ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    onnx_embedder = Embedder.from_onnx(path, batch_size=4)
    torch_embedder = Embedder.from_module(model, batch_size=4)
    np.testing.assert_allclose(onnx_embedder(images), torch_embedder(images), atol=1e-4)
    assert not onnx_embedder.has_uncertainty and torch_embedder.has_uncertainty


def test_legacy_exporter_targets_older_opsets(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = create_model("cellvib_r18", **TINY).eval()
    path = export_onnx(model, tmp_path / "m.onnx", dynamo=False, opset=17)
    assert onnx.load(str(path)).opset_import[0].version == 17
    assert compare_onnx(model, path, batch_sizes=(1, 5)) < 1e-4
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(model, tmp_path / "n.onnx", opset=17)


def test_checkpoint_to_onnx_through_load_embedder(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = create_model("deepvib_r18", **TINY).eval()
    checkpoint = tmp_path / "backbone.pt"
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict(), "config": {}}, checkpoint)
    path = export_onnx(load_embedder_model(checkpoint), tmp_path / "backbone.onnx", dynamo=False)
    images = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    from_checkpoint = load_embedder(checkpoint, batch_size=4)
    from_onnx = load_embedder(path, batch_size=4)
    assert from_onnx.backend == "onnxruntime:CPUExecutionProvider" and from_checkpoint.backend == "torch:cpu"
    np.testing.assert_allclose(from_onnx(images), from_checkpoint(images), atol=1e-4)
    np.testing.assert_allclose(from_onnx(images, flip=False), from_checkpoint.embed(images), atol=1e-4)


def test_arcface_torch_state_dict_needs_the_network_name(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = create_model("r18").eval()  # full size: a plain state dict carries no architecture
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="plain state_dict"):
        load_embedder(path)
    images = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    got = load_embedder(path, network="r18")(images)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        expected = (model(x) + model(torch.flip(x, dims=[3]))).numpy()
    scale = np.abs(expected).max()  # an untrained deep net's outputs are huge (~1e8)
    np.testing.assert_allclose(got / scale, expected / scale, atol=1e-5)


def load_embedder_model(checkpoint: Path) -> nn.Module:
    from facevib.models import load_backbone

    return load_backbone(checkpoint)


class _TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def test_models_without_one_embedding_output_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"one \(N, D\) tensor"):
        export_onnx(_TwoOutputs(), tmp_path / "x.onnx", dynamo=False, opset=17)


def test_bad_onnx_file_and_device(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        load_embedder(tmp_path / "bad.onnx")
    with pytest.raises(FileNotFoundError):
        load_embedder(tmp_path / "absent.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            Embedder.from_module(nn.Linear(2, 2), device="cuda")


@pytest.mark.gpu
def test_onnx_on_cuda_provider_when_available(exported: dict) -> None:
    _, path = exported["r18"]
    embedder = Embedder.from_onnx(path, device="cuda")
    assert embedder.backend.startswith("onnxruntime:")
    images = np.zeros((2, 112, 112, 3), np.uint8)
    assert embedder(images).shape == (2, 32)
