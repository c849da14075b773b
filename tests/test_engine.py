"""The engine's seams: plug-ins (aux losses, callbacks) registered by a module the config
names, the core importing no research code, the one checkpoint reader's errors, and the
training step that never waits for the device (non-finite steps skipped there, metrics
read once per log interval)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facevib.engine import plugins
from facevib.engine.checkpoint import Checkpointer, read_checkpoint
from facevib.engine.readout import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "embedding_dim": 32}

PLUGIN = '''
import torch
from torch import nn

from facevib.engine.callbacks import Callback
from facevib.engine.plugins import register_aux_loss, register_callback

SEEN = []


class Probe(nn.Module):
    """An auxiliary loss 0.5 * w^2 on one trainable scalar: SGD drives w toward 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, batch):
        return 0.5 * self.w**2, {"w": self.w.detach()}


class Steps(Callback):
    def on_step_end(self, trainer, metrics):
        SEEN.append(("step", trainer.step))

    def on_train_end(self, trainer):
        SEEN.append(("end", trainer.step))


@register_aux_loss("probe")
def probe(cfg, backbone, device):
    return {"probe": Probe().to(device)}


@register_callback("steps")
def steps(cfg, trainer):
    return Steps()
'''


def test_core_engine_and_config_import_no_research_code():
    code = (
        "import sys, facevib.config, facevib.engine.trainer, facevib.engine.build, facevib.models.loading;"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['facevib', 'info']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_plugin_module_named_in_the_config_adds_an_aux_loss_and_a_callback(synthetic_dir, tmp_path, monkeypatch):
    from facevib.config import TrainConfig, validate
    from facevib.distributed import DistEnv
    from facevib.engine import Trainer

    # Registrations of this test's plug-in stay in this test. The default plug-ins register
    # first, into the real tables: a module first imported under the patch would register into
    # the copy, and being cached, never again (later trainers would then run without IFM).
    plugins.import_plugins(TrainConfig().run.plugins)
    monkeypatch.setattr(plugins, "_AUX_LOSSES", dict(plugins._AUX_LOSSES))
    monkeypatch.setattr(plugins, "_CALLBACKS", dict(plugins._CALLBACKS))
    (tmp_path / "probe_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_plugin", raising=False)

    cfg = TrainConfig()
    cfg.model.name, cfg.model.kwargs = "cellvib_r18", dict(TINY)
    cfg.data.rec, cfg.data.batch_size, cfg.data.num_workers = str(synthetic_dir), 16, 0
    cfg.optim.weight_decay, cfg.optim.momentum = 0.0, 0.0
    cfg.run.output, cfg.run.total_steps, cfg.run.log_every = str(tmp_path / "run"), 3, 1
    cfg.run.checkpoint_every, cfg.run.tensorboard = 0, False
    cfg.run.plugins = [*cfg.run.plugins, "probe_plugin"]
    validate(cfg)
    trainer = Trainer(cfg, DistEnv())
    lr = trainer.base_lr
    trainer.fit()

    assert sys.modules["probe_plugin"].SEEN == [("step", 1), ("step", 2), ("step", 3), ("end", 3)]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["probe/w"] for r in records if r["kind"] == "train"]
    # Plain SGD on 0.5 w^2 (warm-up off, multistep without milestones): w <- w (1 - lr), the
    # value logged before each update; lr is at most 0.1 * 16 / 512 here, far from clipping.
    expected = [(1 - lr) ** k for k in range(3)]
    assert logged == pytest.approx(expected, rel=1e-6)
    state = read_checkpoint(tmp_path / "run" / "checkpoint_00000003").state
    assert float(state["auxiliary"]["probe.w"]) == pytest.approx((1 - lr) ** 3, rel=1e-6)


def test_an_unknown_plugin_module_is_named():
    with pytest.raises(ValueError, match="run.plugins: cannot import 'no_such_plugin'"):
        plugins.import_plugins(["no_such_plugin"])


def test_a_name_registered_twice_is_refused(monkeypatch):
    monkeypatch.setattr(plugins, "_AUX_LOSSES", {})
    plugins.register_aux_loss("x")(lambda cfg, backbone, device: {})
    with pytest.raises(ValueError, match="auxiliary loss 'x' is registered twice"):
        plugins.register_aux_loss("x")(lambda cfg, backbone, device: {})


def test_the_reader_and_the_checkpointer_name_what_is_wrong(tmp_path):
    backbone = tmp_path / "backbone.pt"
    torch.save({"format": "facevib", "arch": {"name": "r18", "kwargs": {}}, "backbone": {}, "config": 3}, backbone)
    with pytest.raises(ValueError, match="backbone.pt: field 'config' must be a dict, got int"):
        read_checkpoint(backbone)
    torch.save({"format": "facevib", "arch": {"name": "r18", "kwargs": {}}, "backbone": {}}, backbone)
    assert read_checkpoint(backbone).arch == {"name": "r18", "kwargs": {}}
    checkpointer = Checkpointer(tmp_path, keep=1)
    with pytest.raises(ValueError, match="backbone.pt: a backbone file, not a training checkpoint folder"):
        checkpointer.load(backbone)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpointer.load(tmp_path / "checkpoint_00000001")
    with pytest.raises(FileNotFoundError, match="folder without state.pt"):
        read_checkpoint(tmp_path)
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt: not a facevib checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
    assert read_checkpoint(tmp_path / "plain.pt", plain_ok=True).arch is None
    assert checkpointer.resolve("latest") is None


# ---------------------------------------------------------------- the step without host syncs


def tiny_trainer(data: Path, output: Path, **run: object):
    """A Trainer of the tiny cellVIB on the session's synthetic set, in this process."""
    from facevib.config import TrainConfig, validate
    from facevib.distributed import DistEnv
    from facevib.engine import Trainer

    cfg = TrainConfig()
    cfg.model.name, cfg.model.kwargs = "cellvib_r18", dict(TINY)
    cfg.data.rec, cfg.data.batch_size, cfg.data.num_workers, cfg.data.val_targets = str(data), 16, 0, []
    cfg.run.output, cfg.run.total_steps, cfg.run.checkpoint_every, cfg.run.tensorboard = str(output), 6, 0, False
    cfg.schedule.warmup_steps = 0
    for key, value in run.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    validate(cfg)
    return Trainer(cfg, DistEnv())


def everything_trained(trainer) -> dict[str, torch.Tensor]:
    """Copies of every parameter and optimizer state tensor, by name (BatchNorm's running
    statistics follow the forward pass, finite or not, as in any skipped step)."""
    out = {f"task.{k}": v.detach().clone() for k, v in trainer.task.named_parameters()}
    for i, group in enumerate(trainer.optimizer.param_groups):
        for name, param in zip(group["param_names"], group["params"], strict=True):
            for key, value in trainer.optimizer.state.get(param, {}).items():
                out[f"optim.{i}.{name}.{key}"] = value.detach().clone()
    return out


@pytest.mark.parametrize(
    "settings",
    [
        {},  # SGD: fused kernel for the backbone, the Partial FC update folded into the step
        {"optim__name": "adamw", "optim__lr": 1e-3},  # fused AdamW for both
        {"run__amp": "fp16", "optim__momentum": 0.0},  # GradScaler, dense Partial FC gradient
    ],
    ids=["sgd-folded", "adamw", "fp16-scaler"],
)
def test_a_non_finite_step_is_skipped_on_the_device_and_counted(synthetic_dir, tmp_path, settings):
    trainer = tiny_trainer(synthetic_dir, tmp_path / "run", run__max_nonfinite_steps=1, **settings)
    images, labels = next(trainer._batches())
    for _ in range(2):  # optimizer state exists, the Partial FC rows have moved
        trainer.train_step(images, labels)
        trainer.step += 1
        if trainer.scaler.is_enabled():  # a scale of 1: no float16 gradient overflow here
            trainer.scaler.update(1.0)
    assert trainer.readout.read()["loss"] > 0
    before, scale = everything_trained(trainer), trainer.scaler.get_scale()

    # A scale of 1e39 overflows float32: the forward pass itself yields a NaN loss.
    margin = trainer.pfc.margin_loss
    margin.s, real_scale = 1e39, margin.s
    trainer.train_step(images, labels)
    margin.s = real_scale
    after = everything_trained(trainer)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert trainer.scaler.get_scale() == scale
    read = trainer.readout.read()
    assert read["skipped"] is True and math.isnan(read["loss"]) and trainer.nonfinite_steps == 1

    trainer.step += 1
    trainer.train_step(images, labels)  # finite again: the update happens
    assert not torch.equal(trainer.pfc.weight, before["task.pfc.weight"])
    assert not trainer.readout.read().get("skipped") and trainer.nonfinite_steps == 1


def test_too_many_non_finite_steps_stop_the_run_at_the_next_read(synthetic_dir, tmp_path):
    trainer = tiny_trainer(synthetic_dir, tmp_path / "run", run__max_nonfinite_steps=1, run__log_every=4)
    trainer.pfc.margin_loss.s = 1e39  # every step's loss is NaN
    start = everything_trained(trainer)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 1 .*; 2 such step\(s\) so far"):
        trainer.fit()
    assert trainer.step == 4  # read after step 4: steps 0-3 ran, none updated anything
    for name, value in start.items():
        if not name.startswith("optim."):
            assert torch.equal(everything_trained(trainer)[name], value), name


def test_metrics_are_read_to_the_host_once_per_log_interval(synthetic_dir, tmp_path, monkeypatch):
    """Every device-to-host read of a tensor's values goes through ``item`` or ``tolist``:
    6 steps logged every 3 read twice. Not counted: the DataLoader's seed draw per epoch
    (a CPU tensor of its own, never on the device). The CPU-only exact label check and SGD's
    first momentum step use ``bool``."""
    trainer = tiny_trainer(synthetic_dir, tmp_path / "run", run__log_every=3)
    calls = []
    for method in ("item", "tolist"):
        real = getattr(torch.Tensor, method)

        def counted(self, *args, _real=real, _name=method, **kwargs):
            if not sys._getframe(1).f_globals.get("__name__", "").startswith("torch.utils.data"):
                calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    trainer.fit()
    monkeypatch.undo()
    assert calls == ["tolist", "tolist"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 and len(r["kl_cells"]) > 0 for r in records)


# ---------------------------------------------------------------- deterministic mode on CUDA


def test_the_deterministic_cuda_check_names_the_layers_without_a_deterministic_backward():
    from facevib.config import ConfigError
    from facevib.engine.backends import check_deterministic, nondeterministic_cuda_layers

    head = torch.nn.Sequential(
        torch.nn.ReflectionPad2d(1),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.AdaptiveAvgPool2d(1),  # a mean: deterministic
        torch.nn.Upsample(scale_factor=2, mode="bilinear"),
        torch.nn.Upsample(scale_factor=2, mode="nearest"),  # not in torch's list
    )
    # Asked for CUDA by argument: no GPU is needed to list them.
    assert nondeterministic_cuda_layers({"head": head}, "cuda") == [
        "head.0 (ReflectionPad2d((1, 1, 1, 1)))",
        "head.1 (AdaptiveAvgPool2d(output_size=2))",
        "head.3 (Upsample(scale_factor=2.0, mode='bilinear'))",
    ]
    assert nondeterministic_cuda_layers({"head": head}, "cpu") == []
    with pytest.raises(ConfigError) as caught:
        check_deterministic({"head": head}, torch.device("cuda", 0))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("run.deterministic=true on cuda: ")
    assert "head.1 (AdaptiveAvgPool2d(output_size=2))" in message and "run.deterministic=false" in message


@pytest.mark.parametrize("name", ["deepvib_r18", "cellvib_r18", "r18"])
def test_the_face_models_train_deterministically_on_cuda(name):
    from facevib.engine.backends import nondeterministic_cuda_layers
    from facevib.models import create_model

    assert nondeterministic_cuda_layers({"backbone": create_model(name, **TINY)}, "cuda") == []
    # Deep VIB's sigma head pools to 1x1, which torch computes as a mean over H and W: its
    # backward is the mean's, not the adaptive pool's CUDA kernel that has no deterministic form.
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    for image in (x, x.contiguous(memory_format=torch.channels_last)):
        node, chain = torch.nn.AdaptiveAvgPool2d(1)(image).grad_fn, []
        while node is not None:  # back to the input
            chain.append(type(node).__name__)
            node = node.next_functions[0][0] if node.next_functions else None
        assert any("Mean" in n for n in chain) and not any("AdaptiveAvgPool" in n for n in chain), chain


def test_a_samples_flip_depends_on_its_global_position_not_on_the_ranks():
    from facevib.engine.data import random_flip

    images = torch.arange(8 * 3 * 2 * 5, dtype=torch.uint8).view(8, 3, 2, 5)
    whole = random_flip(images, seed=3, step=7, rank=0, world_size=1)
    halves = [random_flip(images[4 * r : 4 * (r + 1)], seed=3, step=7, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)
    # Half flipped on average: 16 steps x 8 samples, within 4 binomial standard errors (5.7) of 64.
    flips = 0
    for step in range(16):
        out = random_flip(images, seed=3, step=step, rank=0, world_size=1)
        for i in range(8):
            assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))
            flips += torch.equal(out[i], images[i].flip(-1))
    assert abs(flips - 64) <= 4 * 5.66, flips
