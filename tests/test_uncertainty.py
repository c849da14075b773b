"""The per-image uncertainty: one pass with the embedding, equal to its definition, used by the Embedder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facevib.data.transforms import images_to_tensor
from facevib.eval.embed import Embedder
from facevib.models import create_model

TINY = {"layers": (1, 2, 1, 1), "widths": (8, 16, 16, 32), "embedding_dim": 32}


def _trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random sigma biases and BatchNorm statistics, so every cell and channel scores differently."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if module.__class__.__name__ == "VIBCell":
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) - 3.0)
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The documented statistic from hooks: log(softplus(F_sigma(input) + b)), element mean per cell,
    cell mean over the cells of the deepest stage that has any (cellVIB) or the embedding VIB."""
    if model.config.variant == "deep":
        captured = {}
        model.layer4[-1].register_forward_hook(lambda _m, _i, out: captured.setdefault("h", out))
        model(x)
        vib = model.vib
        return torch.log(F.softplus(vib.sigma(captured["h"]) + vib.bias)).mean(dim=1)
    stages = [getattr(model, f"layer{s}") for s in range(1, 5)]
    deepest = max(s for s, stage in enumerate(stages) if any(block.vib is not None for block in stage))
    scored = [block for block in stages[deepest] if block.vib is not None]
    inputs = {}
    for block in scored:
        block.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0]))
    model(x)
    per_cell = [
        torch.log(F.softplus(b.vib.sigma(inputs[b]) + b.vib.bias.view(1, -1, 1, 1))).flatten(1).mean(dim=1)
        for b in scored
    ]
    return torch.stack(per_cell).mean(dim=0)


@pytest.mark.parametrize(
    ("name", "overrides", "cells"),
    [
        ("cellvib_r18", {}, (4,)),  # every block a cell: the deepest stage holds block 4
        ("cellvib_r18", {"cells": (0, 1, 2)}, (1, 2)),  # stage 2 (blocks 1-2) is the deepest with cells
        ("deepvib_r18", {}, ()),
    ],
)
def test_one_pass_equals_forward_and_the_definition(name: str, overrides: dict, cells: tuple) -> None:
    torch.manual_seed(0)
    model = _trained_like(create_model(name, **TINY, **overrides), seed=1)
    assert model.uncertainty_cells == cells
    x = torch.rand(4, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        embedding, uncertainty = model.forward_with_uncertainty(x)
        assert torch.equal(embedding, model(x))  # the same embedding, bit for bit
        assert torch.equal(uncertainty, model.uncertainty(x))
        torch.testing.assert_close(uncertainty, _reference(model, x), rtol=1e-5, atol=1e-6)
    assert uncertainty.shape == (4,) and len(set(uncertainty.tolist())) == 4


def test_the_trunk_runs_once() -> None:
    model = create_model("cellvib_r18", **TINY).eval()
    calls = {"stem": 0, "last": 0}
    model.conv1.register_forward_hook(lambda *_: calls.__setitem__("stem", calls["stem"] + 1))
    model.features.register_forward_hook(lambda *_: calls.__setitem__("last", calls["last"] + 1))
    with torch.no_grad():
        model.forward_with_uncertainty(torch.zeros(2, 3, 112, 112))
    assert calls == {"stem": 1, "last": 1}


def test_plain_models_have_no_uncertainty() -> None:
    model = create_model("r18", **TINY).eval()
    assert not model.has_uncertainty and model.uncertainty_cells == ()
    with pytest.raises(ValueError, match="'r18' has no sigma branches"):
        model.forward_with_uncertainty(torch.zeros(1, 3, 112, 112))
    with pytest.raises(ValueError, match="provides no per-image uncertainty"):
        Embedder.from_module(model).embed_with_uncertainty(np.zeros((1, 112, 112, 3), np.uint8))


@pytest.mark.parametrize("flip", [True, False])
def test_embedder_returns_embeddings_and_uncertainty_of_the_same_passes(flip: bool) -> None:
    torch.manual_seed(2)
    model = _trained_like(create_model("cellvib_r18", **TINY), seed=3)
    images = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    embedder = Embedder.from_module(model, batch_size=4)  # several chunks
    embeddings, uncertainty = embedder.embed_with_uncertainty(images, flip=flip)
    np.testing.assert_array_equal(embeddings, embedder(images, flip=flip))
    np.testing.assert_array_equal(uncertainty, embedder.uncertainty(images, flip=flip))
    x = images_to_tensor(images)
    with torch.no_grad():
        emb, unc = model.forward_with_uncertainty(x)
        if flip:  # image + flip embeddings summed, uncertainties averaged
            emb_f, unc_f = model.forward_with_uncertainty(torch.flip(x, dims=[3]))
            emb, unc = emb + emb_f, (unc + unc_f) / 2
    np.testing.assert_allclose(embeddings, emb.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uncertainty, unc.numpy(), rtol=1e-5, atol=1e-6)
