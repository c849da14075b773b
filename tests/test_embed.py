"""The torch Embedder flips and normalises on the model's device: same result as doing it
by hand on the host."""

from __future__ import annotations

import numpy as np
import torch
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
