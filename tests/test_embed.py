"""The torch Embedder flips and normalises on the model's device: same result as doing it
by hand on the host."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from facevib.eval.embed import CUDA_BATCH_SIZE, Embedder, default_batch_size


def test_device_side_flip_and_normalisation_equal_the_host_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.LazyLinear(5))
    images = np.random.default_rng(0).integers(0, 256, (7, 16, 12, 3), dtype=np.uint8)
    model(torch.zeros(1, 3, 16, 12))  # materialise the lazy layer

    # By hand: mirror the width axis, (x / 255 - 0.5) / 0.5, NCHW.
    def reference(batch: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(batch.astype(np.float32) / 255.0 * 2.0 - 1.0).permute(0, 3, 1, 2)
        with torch.no_grad():
            return model(pixels).numpy()

    embedder = Embedder.from_module(model, batch_size=4)  # 2 images + 2 flips per pass
    plain, flipped = embedder.embed_with_flip(images)
    np.testing.assert_allclose(plain, reference(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flipped, reference(images[:, :, ::-1].copy()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(images), reference(images), rtol=1e-5, atol=1e-6)


def test_default_batch_is_512_on_cuda_and_64_on_cpu():
    assert default_batch_size("cuda:1") == CUDA_BATCH_SIZE == 512
    assert default_batch_size("cpu") == 64
    assert Embedder.from_module(nn.Linear(2, 2), device="cpu").batch_size == 64


def _pooling_onnx(path: Path) -> Path:
    """(N, 3, 112, 112) -> (N, 3) channel means: the smallest file the ONNX embedder accepts."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["fc1"]),
        ],
        "pool",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime build has a CUDA provider"
)
def test_cuda_request_on_a_cpu_build_says_the_build_lacks_it(tmp_path: Path) -> None:
    embedder = Embedder.from_onnx(_pooling_onnx(tmp_path / "pool.onnx"), device="cuda")
    assert (
        embedder.backend
        == "onnxruntime:CPUExecutionProvider (CUDA requested but this onnxruntime build has no CUDA provider)"
    )
    image = np.full((1, 112, 112, 3), 255, dtype=np.uint8)
    np.testing.assert_allclose(embedder.embed(image), [[1.0, 1.0, 1.0]], atol=1e-6)
