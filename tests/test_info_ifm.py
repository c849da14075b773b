"""IFM regulariser: sample pairs, critics kept apart from the backbone, training and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import facevib.experiments.models  # noqa: F401  (registers the research families)
from facevib.engine.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from facevib.experiments import ArrayDataset, OptimSettings, fit_classifier
from facevib.info.ifm import IFMRegularizer, parse_pairs
from facevib.info.jsd import sample_pairs
from facevib.models import create_model

TINY_CNN = {"in_channels": 1, "input_size": 16, "widths": (4, 8, 8), "num_classes": 3}
PAIRS = ["conv1:conv2", "conv2:conv3"]


def _coded_maps(batch: int, channels: int, side: int, offset: float) -> torch.Tensor:
    """Feature maps whose every vector encodes (sample, row, column) so pairs can be decoded."""
    b = torch.arange(batch).view(batch, 1, 1, 1).float()
    y = torch.arange(side).view(1, 1, side, 1).float()
    x = torch.arange(side).view(1, 1, 1, side).float()
    code = 1000 * b + 10 * y + x + offset
    return code.expand(batch, channels, side, side).clone()


def test_pairs_match_locations_and_negatives_come_from_other_samples():
    torch.manual_seed(0)
    shallow = _coded_maps(5, 2, 8, 0.0)
    deep = _coded_maps(5, 3, 4, 0.0)  # half resolution: nearest up-sampling repeats each 2x2
    joint, marginal = sample_pairs(shallow, deep, locations=20)
    assert joint.shape == marginal.shape == (5 * 20, 5)
    a_sample, a_y, a_x = joint[:, 0] // 1000, (joint[:, 0] % 1000) // 10, joint[:, 0] % 10
    b_sample, b_y, b_x = joint[:, 2] // 1000, (joint[:, 2] % 1000) // 10, joint[:, 2] % 10
    assert torch.equal(a_sample, b_sample)
    assert torch.equal(b_y, a_y // 2) and torch.equal(b_x, a_x // 2)
    assert torch.equal(a_sample, torch.arange(5).repeat_interleave(20).float())
    assert (marginal[:, 0] // 1000 != marginal[:, 2] // 1000).all()
    # Token sequences (a location per token) and vectors (one location per sample).
    j, m = sample_pairs(torch.randn(4, 7, 6), torch.randn(4, 7, 2), locations=3)
    assert j.shape == (12, 8)
    vectors = torch.arange(4.0).view(4, 1)
    j, m = sample_pairs(vectors, vectors + 10, locations=3)
    assert torch.equal(j[:, 1] - j[:, 0], torch.full((12,), 10.0)) and (m[:, 1] - m[:, 0] != 10).all()
    with pytest.raises(ValueError, match="do not share batch and locations"):
        sample_pairs(torch.randn(4, 7, 6), torch.randn(4, 5, 6), 3)


def test_parse_pairs_and_unknown_layers():
    assert parse_pairs(["a:b", ("c", "d")]) == [("a", "b"), ("c", "d")]
    with pytest.raises(ValueError, match="expected 'shallow:deep'"):
        parse_pairs(["a:b:c"])
    with pytest.raises(ValueError, match="has no module 'conv9'"):
        IFMRegularizer.for_model(create_model("ifm_cnn", **TINY_CNN), ["conv1:conv9"], torch.zeros(2, 1, 16, 16))


def test_critics_are_sized_and_kept_out_of_the_backbone():
    torch.manual_seed(0)
    model = create_model("ifm_cnn", **TINY_CNN)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ifm = IFMRegularizer.for_model(model, PAIRS, torch.randn(2, 1, 16, 16))
    # Table 2's D: N -> 256 -> 128 -> 64 -> 1 with N = C_l + C_{l+1}.
    assert [critic[0].in_features for critic in ifm.critics] == [4 + 8, 8 + 8]
    assert [m.out_features for m in ifm.critics[0] if isinstance(m, torch.nn.Linear)] == [256, 128, 64, 1]
    after = model.state_dict()
    assert after.keys() == before.keys()  # no critic keys
    for key, value in before.items():  # sizing pass left BatchNorm statistics as they were
        assert torch.equal(after[key], value), key
    with pytest.raises(RuntimeError, match="no training-mode output of 'conv1'"):
        ifm()
    model.eval()(torch.randn(2, 1, 16, 16))
    with pytest.raises(RuntimeError, match="no training-mode output"):
        ifm()  # evaluation forwards are not recorded


def test_ifm_term_trains_critics_and_backbone_jointly():
    torch.manual_seed(0)
    model = create_model("ifm_cnn", **TINY_CNN)
    ifm = IFMRegularizer.for_model(model, PAIRS, torch.randn(2, 1, 16, 16), weight=1.0, locations=8)
    model.train()
    model(torch.randn(8, 1, 16, 16))
    term, flows = ifm()
    term.backward()
    torch.testing.assert_close(term.detach(), -flows.sum())
    assert model.conv1[0].weight.grad.abs().sum() > 0  # the backbone is pushed to carry information
    assert model.fc.weight.grad is None  # the classifier is not part of any pair
    assert all(p.grad is not None for p in ifm.parameters())

    # A few joint steps on fixed data: the critics learn to tell the pairs apart (F rises).
    images = torch.randn(64, 1, 16, 16)
    data = ArrayDataset(images.numpy(), torch.randint(0, 3, (64,)).numpy())
    history = fit_classifier(
        model, data, OptimSettings(name="adam", lr=1e-3, betas=(0.9, 0.999)), epochs=6, batch_size=16, seed=0, ifm=ifm
    )
    first, last = sum(history[0]["flows"]), sum(history[-1]["flows"])
    assert last > first + 0.1, (first, last)
    assert len(history[-1]["flows"]) == 2


def test_backbone_exports_to_onnx_with_ifm_attached(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    import onnx

    from facevib.export import export_onnx

    torch.manual_seed(0)
    model = create_model("ifm_cnn", **{**TINY_CNN, "in_channels": 3})
    ifm = IFMRegularizer.for_model(model, PAIRS, torch.randn(2, 3, 16, 16))
    path = export_onnx(model, tmp_path / "m.onnx", input_size=16, dynamo=False)
    graph = onnx.load(str(path)).graph
    # No critic weights in the graph: exactly the backbone's parameters are initialisers.
    assert sum(int(torch.tensor(i.dims).prod()) for i in graph.initializer) <= sum(
        p.numel() for p in model.parameters()
    ) + sum(b.numel() for b in model.buffers())
    assert not any(i.dims == [256, 12] or i.dims == [12, 256] for i in graph.initializer)
    x = torch.randn(3, 3, 16, 16)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model.eval()(x), rtol=1e-4, atol=1e-4)
    ifm.detach()


def test_face_trainer_runs_with_ifm(synthetic_dir, tmp_path):
    """One tiny single-process face training run with IFM on two block pairs, then a resume."""
    from facevib.config import apply_overrides, load_config, validate
    from facevib.distributed import DistEnv
    from facevib.engine import Trainer

    out = tmp_path / "run"
    tiny = {"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "embedding_dim": 32}
    settings = [f"model.kwargs.{key}={value!r}" for key, value in tiny.items()] + [
        f"data.rec={synthetic_dir}",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.val_targets=[]",
        f"run.output={out}",
        "run.epochs=0",
        "run.total_steps=4",
        "run.log_every=1",
        "run.checkpoint_every=2",
        "run.tensorboard=false",
        "ifm.pairs=['layer1.0:layer2.0', 'layer2.0:layer3.0']",
        "ifm.weight=0.5",
        "ifm.locations=4",
    ]
    config_path = Path(__file__).parents[1] / "configs/synthetic_r18_cellvib.py"
    cfg = validate(apply_overrides(load_config(config_path), settings))
    trainer = Trainer(cfg, DistEnv())
    trainer.fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    flows = [r["ifm/flows"] for r in records if r["kind"] == "train"]
    assert len(flows) == 4 and all(len(f) == 2 for f in flows)

    exported = torch.load(out / "backbone.pt", weights_only=True)
    assert set(exported["backbone"]) == set(trainer.backbone.state_dict())  # no critic keys
    checkpoint = read_checkpoint(latest_checkpoint(out)).state
    assert set(checkpoint["backbone"]) == set(exported["backbone"])
    critics = trainer.task.aux_losses.state_dict()
    assert critics and all(key.startswith("ifm.regularizer.critics.") for key in critics)
    assert set(checkpoint["auxiliary"]) == set(critics)
    assert json.loads((out / "config.json").read_text())["config"]["ifm"]["weight"] == 0.5

    first = list_checkpoints(out)[0]
    resumed = Trainer(cfg, DistEnv(), resume=str(first))
    saved = read_checkpoint(first).state["auxiliary"]
    for key, value in resumed.task.aux_losses.state_dict().items():
        assert torch.equal(value.cpu(), saved[key]), key
    resumed.logger.close()
    with pytest.raises(ValueError, match=r"ifm.pairs=\[\]: IFM needs at least one layer pair"):
        validate(apply_overrides(cfg, ["ifm.pairs=[]"]))
