"""Cell placements of the cellVIB paper: MLP (§4.1), Inception (§3.4), ViT attention (supplement)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import facevib.experiments.models  # noqa: F401  (registers the research families)
from facevib.models import VIBCell, create_model, gaussian_kl, list_models

# Tiny sizes keep every test well under a second.
TINY = {
    "mlp": {"input_dim": 20, "hidden": (16, 12), "bottleneck": 8, "num_classes": 5},
    "inception": {"in_channels": 3, "stem_width": 8, "widths": (16, 32), "pool_after": (0,), "num_classes": 5},
    "vit": {
        "image_size": 16,
        "patch_size": 4,
        "in_channels": 3,
        "embed_dim": 12,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 5,
    },
    "cnn": {"in_channels": 1, "input_size": 8, "widths": (4, 8), "num_classes": 5},
}
INPUTS = {"mlp": (3, 20), "inception": (3, 3, 16, 16), "vit": (3, 3, 16, 16), "cnn": (3, 1, 8, 8)}
FAMILY_OF = {name: family for family in TINY for name in list_models(family)}


def _tiny(name: str, **extra):
    return create_model(name, **TINY[FAMILY_OF[name]], **extra)


def _input(name: str) -> torch.Tensor:
    return torch.randn(*INPUTS[FAMILY_OF[name]], generator=torch.Generator().manual_seed(1))


def test_registry_names_per_family():
    assert list_models("mlp") == ["mlp", "deepvib_mlp", "cellvib_mlp"]
    assert list_models("inception") == ["inception", "cellvib_inception"]
    assert list_models("vit") == ["vit_tiny", "cellvib_vit_tiny"]
    assert list_models("cnn") == ["ifm_cnn"]
    assert set(list_models()) >= set(FAMILY_OF) | {"r100", "cellvib_r100"}


@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = _tiny(name).train()
    logits, kl = model(_input(name), return_kl=True)
    assert logits.shape == (3, 5) and kl.shape == (model.num_cells,) and kl.dtype == torch.float32
    loss = logits.square().mean() + model.kl_loss(kl) + 1e-3 * kl.sum()
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize(
    ("name", "cells"),
    [("mlp", 0), ("deepvib_mlp", 1), ("cellvib_mlp", 3), ("inception", 0), ("cellvib_inception", 2)]
    + [("vit_tiny", 0), ("cellvib_vit_tiny", 2), ("ifm_cnn", 0)],
)
def test_number_of_cells(name, cells):
    model = _tiny(name)
    assert model.num_cells == cells and model.betas.shape == (cells,)
    assert sum(isinstance(m, VIBCell) for m in model.modules()) == cells


@pytest.mark.parametrize(
    ("name", "plain"),
    [("deepvib_mlp", "mlp"), ("cellvib_mlp", "mlp")]
    + [("cellvib_inception", "inception"), ("cellvib_vit_tiny", "vit_tiny")],
)
def test_eval_is_deterministic_and_equals_the_mean_network(name, plain):
    """In eval mode every cell returns its mean: the plain network with the same mean weights."""
    torch.manual_seed(0)
    model = _tiny(name)
    x = _input(name)
    model.train()
    model(x)  # one training pass moves BatchNorm statistics away from their initial values
    reference = _tiny(plain)
    state = {k: v for k, v in model.state_dict().items() if "vib" not in k}
    reference.load_state_dict(state, strict=True)
    model.eval()
    reference.eval()
    first, second = model(x), model(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, reference(x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.equal(a, model(x))  # training samples


def test_mlp_matches_the_paper_layout_and_its_kl_the_closed_form():
    model = create_model("cellvib_mlp")
    assert [(layer.fc.in_features, layer.fc.out_features) for layer in model.layers] == [
        (784, 1024),
        (1024, 1024),
        (1024, 256),
    ]
    assert model.classifier.out_features == 10
    small = _tiny("cellvib_mlp", beta=[0.1, 0.2, 0.3])
    x = _input("cellvib_mlp")
    _, kl = small.eval()(x, return_kl=True)
    # Layer 0 written out: mu = relu(W x + c), sigma = softplus(W_s x + c_s + b).
    layer = small.layers[0]
    mu = F.relu(F.linear(x, layer.fc.weight, layer.fc.bias))
    sigma = F.softplus(F.linear(x, layer.vib.sigma.weight, layer.vib.sigma.bias) + layer.vib.bias)
    expected = 0.5 * (mu.square() + sigma.square() - 2 * sigma.log() - 1).sum(dim=1).mean()
    torch.testing.assert_close(kl[0], expected)
    torch.testing.assert_close(small.kl_loss(kl), (torch.tensor([0.1, 0.2, 0.3]) * kl).sum())


def test_ifm_cnn_matches_the_ifm_paper_table_1():
    model = create_model("ifm_cnn")
    assert model.layer_names == ("conv1", "conv2", "conv3", "conv4")
    assert [model.get_submodule(n)[0].out_channels for n in model.layer_names] == [32, 64, 128, 128]
    assert model.fc.in_features == 128 * 2 * 2 and model.get_submodule("conv1")[2].negative_slope == 0.2
    logits, kl = model(torch.zeros(2, 1, 32, 32), return_kl=True)
    assert logits.shape == (2, 10) and kl.shape == (0,) and model.kl_loss(kl).item() == 0.0


def test_mlp_variants_place_cells_as_data():
    assert [layer.vib is not None for layer in _tiny("deepvib_mlp").layers] == [False, False, True]
    assert [layer.vib is not None for layer in _tiny("cellvib_mlp", cells=(1, 2)).layers] == [False, True, True]
    # Any input size: a 1x8x8 image flattens to 64 values.
    model = create_model("cellvib_mlp", input_dim=64, hidden=(32,), bottleneck=16)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="expected 64 input values"):
        model(torch.zeros(2, 1, 28, 28))


def test_inception_cell_wraps_the_whole_block():
    model = _tiny("cellvib_inception")
    block = model.blocks[1]
    x = torch.randn(2, 16, 8, 8)
    # The concatenated module output (16 -> 32 channels: 8 + 16 + 4 + 4) is the cell's mean.
    assert block.mean(x).shape == (2, 32, 8, 8)
    assert [m.out_channels for m in (block.branch1[0], block.branch3[1][0], block.branch5[2][0])] == [8, 16, 4]
    _, kl = block.eval()(x, return_kl=True)
    mu = block.mean(x)
    log_sigma = block.vib.log_sigma(x)
    torch.testing.assert_close(kl, gaussian_kl(mu, log_sigma))


@pytest.mark.parametrize(
    ("cell_on", "attn", "ffn"), [("attn", True, False), ("ffn", False, True), ("both", True, True)]
)
def test_vit_cell_placement(cell_on, attn, ffn):
    model = _tiny("cellvib_vit_tiny", cell_on=cell_on)
    for block in model.blocks:
        assert (block.attn_vib is not None, block.ffn_vib is not None) == (attn, ffn)
    assert model.num_cells == 2 * (int(attn) + int(ffn))
    # The sigma attention is a quarter-width branch (12 * 0.25 = 3 -> rounded to 2 heads' multiple).
    if attn:
        assert model.blocks[0].attn_vib.sigma.proj.in_features == 4


def test_eval_export_to_onnx(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from facevib.export import export_onnx

    torch.manual_seed(0)
    model = _tiny("cellvib_inception").eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=16, dynamo=False)
    x = _input("cellvib_inception")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("mlp", {"beta": 1e-3}, "no override 'beta'"),
        ("cellvib_mlp", {"cells": (3,)}, "outside 0..2"),
        ("cellvib_mlp", {"hidden": (0,)}, "hidden must be a positive int"),
        ("cellvib_inception", {"widths": (24,)}, "multiples of 16"),
        ("cellvib_vit_tiny", {"cell_on": "mlp"}, "cell_on must be one of"),
        ("vit_tiny", {"image_size": 30, "patch_size": 4}, "not a multiple of patch_size"),
        ("cellvib_mlp", {"beta": [1.0]}, "explicit beta list has 1 values"),
    ],
)
def test_bad_overrides_name_the_field(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **overrides)


@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_arch_rebuilds_the_model(name):
    model = _tiny(name)
    rebuilt = create_model(model.arch["name"], **model.arch["kwargs"])
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.arch == model.arch
