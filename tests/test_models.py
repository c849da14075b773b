"""Model library: registry, every model's forward/backward, sizes, arcface_torch keys, loading."""

from __future__ import annotations

import warnings

import pytest
import torch

from facevib.models import (
    IResNet,
    beta_schedule,
    create_model,
    is_vib_key,
    list_models,
    load_arcface_state_dict,
    load_backbone,
    resolve_cells,
)

# 32x32 inputs keep every test fast; test_default_input_size_and_wrong_input_shape runs 112x112.
TINY = {"layers": (1, 2, 1, 1), "widths": (8, 16, 16, 32), "embedding_dim": 32, "input_size": 32}
DEPTHS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _arcface_keys(layers, widths=(64, 128, 256, 512)) -> set[str]:
    """Key names written by arcface_torch's IResNet (backbones/iresnet.py), built from its code."""
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"}
    keys |= {f"{bn}.{k}" for bn in ("bn1", "bn2", "features") for k in BN_KEYS}
    for stage, depth in enumerate(layers, start=1):
        for i in range(depth):
            p = f"layer{stage}.{i}."
            keys |= {p + "conv1.weight", p + "conv2.weight", p + "prelu.weight"}
            keys |= {f"{p}{bn}.{k}" for bn in ("bn1", "bn2", "bn3") for k in BN_KEYS}
            if i == 0:  # every stage starts with stride 2, so its first block downsamples
                keys |= {p + "downsample.0.weight"} | {f"{p}downsample.1.{k}" for k in BN_KEYS}
    return keys


def _branch_params(inplanes: int, inner: int, planes: int) -> int:
    """BN-conv3x3-BN-PReLU-conv3x3-BN parameters."""
    return 2 * inplanes + 9 * inplanes * inner + 2 * inner + inner + 9 * inner * planes + 2 * planes


def _expected_params(layers, widths=(64, 128, 256, 512), emb=512, size=112, sigma_ratio=None, deep=False) -> int:
    """Parameter count written out from the architecture (independent of the module code)."""
    total = 27 * widths[0] + 2 * widths[0] + widths[0]  # stem conv, BN, PReLU
    inplanes = widths[0]
    for planes, depth in zip(widths, layers, strict=True):
        for i in range(depth):
            total += _branch_params(inplanes, planes, planes)
            if i == 0:
                total += inplanes * planes + 2 * planes  # 1x1 downsample + BN
            if sigma_ratio is not None:
                total += _branch_params(inplanes, max(1, round(planes * sigma_ratio)), planes) + planes
            inplanes = planes
    spatial = (size // 16) ** 2
    total += 2 * widths[-1] + widths[-1] * spatial * emb + emb + 2 * emb  # bn2, fc, features
    if deep:
        total += 2 * widths[-1] + widths[-1] * emb + emb + 2 * emb + emb  # sigma head + bias
    return total


def _count(name: str, **overrides) -> int:
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_variant_and_depth():
    expected = [prefix + depth for prefix in ("", "cellvib_", "deepvib_") for depth in DEPTHS]
    assert list_models("iresnet") == expected


@pytest.mark.parametrize("name", list_models("iresnet"))
def test_every_model_forward_backward_tiny(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY).train()
    embedding, kl = model(torch.randn(3, 3, 32, 32), return_kl=True)
    assert embedding.shape == (3, 32) and kl.shape == (model.num_cells,)
    loss = embedding.square().mean() + model.kl_loss(kl) + 1e-3 * kl.sum()
    loss.backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name
    assert not model.features.weight.requires_grad  # arcface_torch's frozen embedding BN scale


@pytest.mark.parametrize(
    ("name", "millions"),
    [("r50", 43.59), ("r100", 65.16), ("cellvib_r100", 78.23), ("deepvib_r100", 65.42)],
)
def test_full_size_parameter_counts(name, millions):
    count = _count(name)
    layers = DEPTHS[name.rsplit("_", 1)[-1]]
    expected = _expected_params(layers, sigma_ratio=0.25 if "cellvib" in name else None, deep="deepvib" in name)
    assert count == expected
    assert abs(count / 1e6 - millions) < 0.01
    if name == "r100":
        assert 65.1e6 <= count <= 65.2e6


def test_state_dict_uses_arcface_torch_key_names():
    with torch.device("meta"):
        r100 = create_model("r100")
        cell = create_model("cellvib_r100")
    assert set(r100.state_dict()) == _arcface_keys(DEPTHS["r100"])
    cell_keys = set(cell.state_dict())
    assert {k for k in cell_keys if not is_vib_key(k)} == _arcface_keys(DEPTHS["r100"])
    assert len([k for k in cell_keys if k.endswith("vib.bias")]) == 49


def test_eval_is_deterministic_and_train_cells_sample():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("r18", "cellvib_r18", "deepvib_r18"):
        model = create_model(name, **TINY)
        train_differs = not torch.equal(model(x), model(x))
        assert train_differs == name.startswith(("cellvib", "deepvib")), name
        model.eval()
        assert torch.equal(model(x), model(x))
        embedding, kl = model(x, return_kl=True)  # eval + KL: still the mean embedding
        assert torch.equal(embedding, model(x)) and kl.shape == (model.num_cells,)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["r18", "cellvib_r18", "deepvib_r18"])
def test_eval_forward_traces_without_sigma_ops(name):
    model = create_model(name, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    graph = str(traced.graph)
    assert "softplus" not in graph and "randn" not in graph
    other_batch = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(traced(other_batch), model(other_batch))


def test_return_kl_shapes_and_kl_loss():
    x = torch.randn(2, 3, 32, 32)
    plain = create_model("r18", **TINY)
    embedding, kl = plain(x, return_kl=True)
    assert kl.shape == (0,) and plain.kl_loss(kl).item() == 0.0 and not plain.has_uncertainty
    model = create_model("cellvib_r18", **TINY, beta=[1.0, 2.0, 3.0, 4.0, 5.0])
    _, kl = model(x, return_kl=True)
    torch.testing.assert_close(model.kl_loss(kl), (torch.arange(1.0, 6.0) * kl).sum())
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        model.kl_loss(kl[:3])


def test_cells_spec_selects_blocks():
    layers = (1, 2, 1, 1)
    assert resolve_cells("all", layers) == (0, 1, 2, 3, 4)
    assert resolve_cells("last:1", layers) == (4,)
    assert resolve_cells("last:3", layers) == (1, 2, 3, 4)
    assert resolve_cells([3, 0], layers) == (0, 3)
    model = create_model("cellvib_r18", **TINY, cells=[0, 2])
    assert [block.vib is not None for block in model.iter_blocks()] == [True, False, True, False, False]
    assert model.num_cells == 2
    for bad in ("last:5", "last:0", "first:1", "some", [5], [1, 1], [], [0.5], 3):
        with pytest.raises(ValueError, match="cells"):
            create_model("cellvib_r18", **TINY, cells=bad)


def test_beta_schedule_values():
    torch.testing.assert_close(beta_schedule("linear", 5), torch.tensor([1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0]))
    torch.testing.assert_close(beta_schedule("linear", 1), torch.tensor([1e-3]))
    torch.testing.assert_close(beta_schedule("linear", 3, beta_max=0.2, beta_min=0.1), torch.tensor([0.2, 0.15, 0.1]))
    torch.testing.assert_close(beta_schedule("constant", 3, beta_max=0.5), torch.full((3,), 0.5))
    torch.testing.assert_close(beta_schedule(0.25, 2), torch.full((2,), 0.25))
    torch.testing.assert_close(beta_schedule([0.1, 0.0], 2), torch.tensor([0.1, 0.0]))
    assert beta_schedule("linear", 0).shape == (0,)
    with pytest.raises(ValueError, match="3 values but the model has 2 cells"):
        beta_schedule([0.1, 0.2, 0.3], 2)
    for spec, match in (("cosine", "'cosine'"), (-1.0, "-1.0"), ([0.1, float("nan")], "nan"), (True, "True")):
        with pytest.raises(ValueError, match=match):
            beta_schedule(spec, 2)
    with pytest.raises(ValueError, match="beta_min"):
        beta_schedule("linear", 2, beta_max=0.1, beta_min=0.2)
    model = create_model("cellvib_r18", **TINY)
    torch.testing.assert_close(model.betas, beta_schedule("linear", 5))
    assert create_model("deepvib_r18", **TINY).betas.tolist() == [pytest.approx(1e-3)]


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("r101", {}, "'r101'"),
        ("r18", {"depth": 3}, "'depth'"),
        ("r18", {"cells": "all"}, "'cells'"),
        ("deepvib_r18", {"sigma_ratio": 0.5}, "'sigma_ratio'"),
        ("r18", {"widths": (8, 16, 32)}, r"\[8, 16, 32\]"),
        ("r18", {"layers": (1, 0, 1, 1)}, r"\[1, 0, 1, 1\]"),
        ("r18", {"input_size": 100}, "100"),
        ("r18", {"embedding_dim": 0}, "embedding_dim"),
        ("r18", {"dropout": 1.5}, "1.5"),
        ("cellvib_r18", {"sigma_ratio": 0.0}, "sigma_ratio"),
        ("cellvib_r18", {"beta": [0.1]}, "1 values but the model has 8 cells"),
    ],
)
def test_bad_overrides_raise_value_error(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **overrides)


def test_default_input_size_and_wrong_input_shape():
    model = create_model("cellvib_r18", **{**TINY, "input_size": 112}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 32)
        with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
            model(torch.randn(1, 3, 32, 32))


def test_arch_rebuilds_the_model(tmp_path):
    model = create_model("cellvib_r18", **{**TINY, "input_size": 64}, cells="last:2", beta="constant")
    arch = model.arch
    torch.save({"arch": arch}, tmp_path / "arch.pt")
    restored = torch.load(tmp_path / "arch.pt", weights_only=True)["arch"]
    rebuilt = create_model(restored["name"], **restored["kwargs"])
    assert rebuilt.config == model.config and rebuilt.arch == arch
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def _trained_like(model: IResNet) -> IResNet:
    """Non-trivial BN statistics and weights, so loaded-vs-fresh differences show."""
    torch.manual_seed(4)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor)).abs_()
    return model


def test_arcface_state_dict_loads_into_cellvib_mean_branches(tmp_path):
    source = _trained_like(create_model("r18", **TINY)).eval()
    arcface_sd = {"module." + k: v for k, v in source.state_dict().items()}  # DDP-saved
    assert {k.removeprefix("module.") for k in arcface_sd} == _arcface_keys(TINY["layers"])
    target = create_model("cellvib_r18", **TINY)
    fresh_vib = {k: v.clone() for k, v in target.state_dict().items() if is_vib_key(k)}
    report = load_arcface_state_dict(target, arcface_sd)
    assert set(report.missing_keys) == set(fresh_vib) and report.unexpected_keys == ()
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in fresh_vib.items())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(target.eval()(x), source(x))  # eval cellVIB == its mean network

    torch.save(arcface_sd, tmp_path / "backbone.pth")
    plain = load_backbone(tmp_path / "backbone.pth", "r18", **TINY)
    assert not plain.training and torch.equal(plain(x), source(x))
    with pytest.warns(UserWarning, match="VIB keys"):
        cell = load_backbone(tmp_path / "backbone.pth", "deepvib_r18", **TINY)
    assert torch.equal(cell(x), source(x))


def test_load_arcface_state_dict_reports_mismatches():
    source = create_model("r18", **TINY).state_dict()
    deeper = create_model("r18", **{**TINY, "layers": (1, 3, 1, 1)})
    with pytest.raises(ValueError, match=r"lacks 18 non-VIB model keys, e\.g\. \['layer2\.2"):
        load_arcface_state_dict(deeper, source)
    report = load_arcface_state_dict(deeper, source, strict=False)
    assert len(report.missing_keys) == 18 and report.unexpected_keys == ()
    wider = create_model("r18", **{**TINY, "embedding_dim": 64})
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \(32, 128\) vs model \(64, 128\)"):
        load_arcface_state_dict(wider, source)
    with pytest.raises(ValueError, match="'layer5.0.conv1.weight'"):
        load_arcface_state_dict(create_model("r18", **TINY), {**source, "layer5.0.conv1.weight": torch.zeros(1)})


def test_load_backbone_facevib_checkpoint_and_errors(tmp_path):
    model = _trained_like(create_model("cellvib_r18", **TINY, cells="last:1")).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict(), "config": {}}, path)
    loaded = load_backbone(path)
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(loaded, IResNet) and not loaded.training
    assert torch.equal(loaded(x), model(x)) and torch.equal(loaded.uncertainty(x), model.uncertainty(x))
    folder = tmp_path / "checkpoint_00000010"  # a training checkpoint folder reads its state.pt
    folder.mkdir()
    (folder / "state.pt").write_bytes(path.read_bytes())
    assert torch.equal(load_backbone(folder)(x), model(x))
    with pytest.raises(FileNotFoundError, match="folder without state.pt"):
        load_backbone(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_backbone(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_backbone(path, "r18")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt.*needs name="):
        load_backbone(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_backbone(tmp_path / "junk.pt")
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="'bogus.weight' is not an arcface_torch iresnet key"):
        load_backbone(tmp_path / "foreign.pt", "r18", **TINY)


def test_uncertainty_scores():
    x = torch.randn(3, 3, 32, 32)
    with pytest.raises(ValueError, match="'r18' has no sigma"):
        create_model("r18", **TINY).eval().uncertainty(x)
    for name in ("cellvib_r18", "deepvib_r18"):
        model = create_model(name, **TINY).eval()
        score = model.uncertainty(x)
        assert score.shape == (3,) and torch.equal(score, model.uncertainty(x))
        with torch.no_grad():  # a larger softplus bias everywhere = larger sigma = larger score
            for module in model.modules():
                if module.__class__.__name__ == "VIBCell":
                    module.bias += 1.0
        assert (model.uncertainty(x) > score).all(), name


def test_channels_last_matches_contiguous():
    model = create_model("cellvib_r18", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)


def test_eval_forward_exports_with_dynamic_batch():
    model = create_model("cellvib_r18", **TINY).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    assert not any("softplus" in str(node.target) for node in exported.graph.nodes)
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(exported.module()(x), model(x))
