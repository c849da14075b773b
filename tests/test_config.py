"""Config loading, overrides, validation and (de)serialisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from facevib.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


def _valid() -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.rec = "some/dir"
    cfg.run.total_steps = 10
    return cfg


def test_overrides_are_coerced_to_field_types():
    cfg = apply_overrides(
        _valid(),
        [
            "optim.lr=0.05",
            "run.total_steps=7",
            "run.channels_last=true",
            "optim.clip_grad_norm=None",
            "schedule.milestones=[3, 5]",
            "optim.betas=(0.5, 0.999)",
            "data.val_targets=lfw,cfp_fp",
            "data.val_dir=some/dir",
            "model.kwargs.beta=constant",
            "run.output=runs/x",
        ],
    )
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.run.total_steps == 7
    assert cfg.run.channels_last is True
    assert cfg.optim.clip_grad_norm is None
    assert cfg.schedule.milestones == [3, 5]
    assert cfg.optim.betas == (0.5, 0.999)
    assert cfg.data.val_targets == ["lfw", "cfp_fp"]
    assert cfg.model.kwargs == {"beta": "constant"}
    assert cfg.run.output == "runs/x"
    validate(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=fast", "optim.lr"),
        ("optim.nope=1", "has no field 'nope'"),
        ("nosection.lr=1", "unknown section 'nosection'"),
        ("run.total_steps=1.5", "run.total_steps"),
        ("optim.betas=(0.9,)", "optim.betas"),
        ("optim.lr", "expected section.field=value"),
        ("run.channels_last=maybe", "run.channels_last"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(_valid(), [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.rec=", "data.rec"),
        ("optim.name=lamb", "optim.name"),
        ("head.sample_rate=1.5", "head.sample_rate"),
        ("head.m1=1.35", r"head.m1=1.35: only 1 is supported"),
        ("run.epochs=3", "set exactly one"),
        ("schedule.milestones=[5, 3]", "schedule.milestones"),
        ("run.amp=fp8", "run.amp"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_targets=[lfw]", "data.val_dir"),
    ],
)
def test_validation_names_the_field(override, message):
    cfg = apply_overrides(_valid(), [override])
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_round_trip_through_dict():
    cfg = apply_overrides(_valid(), ["optim.betas=(0.5, 0.9)", "model.kwargs.cells='last:3'"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown field run.bogus"):
        config_from_dict({"run": {"bogus": 1}})


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_config(tmp_path / "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="neither `config` nor `get_config"):
        load_config(empty)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("config = {'lr': 1}\n")
    with pytest.raises(ValueError, match="expected facevib.config.TrainConfig"):
        load_config(wrong)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    validate(load_config(path))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_shipped_configs_build_their_model(path):
    import torch

    from facevib.models import create_model

    cfg = load_config(path)
    with torch.device("meta"):  # shapes only: no memory, no init cost for r100
        model = create_model(cfg.model.name, **cfg.model.kwargs)
    assert model.arch["name"] == cfg.model.name
