"""Typed training configuration: dataclasses, one validation pass, CLI overrides.

A config file is a Python module that defines ``config = TrainConfig(...)`` (or a function
``get_config() -> TrainConfig``). ``--set section.field=value`` overrides any field; values
are parsed as Python literals and coerced to the field's declared type, so typos in names
or values fail at start-up with the offending field named, not hours into a run.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ModelConfig",
    "DataConfig",
    "HeadConfig",
    "OptimConfig",
    "ScheduleConfig",
    "RunConfig",
    "IFMConfig",
    "InfoConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "check_field_types",
    "validate",
    "config_to_dict",
    "config_from_dict",
    "parse_pairs",
]


@dataclass
class ModelConfig:
    """The backbone."""

    name: str = "cellvib_r100"  # any facevib.models.list_models() name
    # Keyword overrides for create_model, e.g. {"beta": {"kind": "linear", "beta_max": 1e-3}}.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # arcface_torch-format backbone.pth to start from (cellVIB fine-tuning: mean branches
    # are loaded, sigma branches start fresh).
    init_backbone: str | None = None


@dataclass
class DataConfig:
    """Training images and the verification sets checked during training."""

    rec: str = ""  # folder with train.rec/train.idx(/property), or a "…/train" prefix
    batch_size: int = 128  # per rank; the global batch is batch_size * world_size
    num_workers: int = 4  # DataLoader workers per rank
    skip_corrupt: bool = False  # skip (and count) undecodable records instead of stopping
    horizontal_flip: bool = True  # random flip, drawn per global sample position (resumable)
    val_dir: str | None = None  # folder with <target>.bin verification sets
    val_targets: list[str] = field(default_factory=list)  # e.g. ["lfw", "cfp_fp", "agedb_30"]


@dataclass
class HeadConfig:
    """Partial FC classifier and margin: logit = s * (cos(m1*theta + m2) - m3)."""

    scale: float = 64.0
    m1: float = 1.0  # must stay 1: the margin's theta + m2 > pi continuation holds only there
    m2: float = 0.5  # ArcFace additive angular margin
    m3: float = 0.0  # CosFace additive cosine margin
    # Fraction of class centres (per rank) in each softmax: positives + random negatives.
    sample_rate: float = 1.0
    # Reproduce arcface_torch, which computes the margin under no_grad (see facevib.losses).
    detach_margin: bool = False


@dataclass
class OptimConfig:
    """Optimiser and gradient handling."""

    name: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.1  # for the reference global batch (see lr_batch_size)
    # The lr above is for this global batch; it is scaled linearly with the real one
    # (0 disables the scaling).
    lr_batch_size: int = 512
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    # True: weight decay on every parameter (arcface_torch). False: BatchNorm/PReLU weights,
    # biases and the VIB sigma biases get none (decay would pull sigma toward softplus(0)).
    decay_norms_and_biases: bool = True
    clip_grad_norm: float | None = 5.0  # on backbone parameters; None disables


@dataclass
class ScheduleConfig:
    """Learning rate per iteration."""

    kind: str = "multistep"  # "multistep" | "poly"
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)  # multistep: steps where lr *= gamma
    gamma: float = 0.1
    power: float = 2.0  # poly: lr * (1 - t)^power after warmup


@dataclass
class RunConfig:
    """Length, precision, logging, checkpoints, reproducibility."""

    output: str = "runs/default"
    seed: int = 0
    total_steps: int = 0  # iterations; 0 means use `epochs`
    epochs: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU) | "bf16" | "fp16" | "none"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cudnn autotuning
    log_every: int = 50
    eval_every: int = 0  # steps between verification runs; 0: only at the end (if targets)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    # Steps with a non-finite loss that may be skipped (counted) before training stops;
    # 0 stops at the first one.
    max_nonfinite_steps: int = 0
    tensorboard: bool = True
    # Modules imported before a run is built; each registers auxiliary losses and callbacks
    # with facevib.engine.plugins (the default adds IFM and information-plane recording,
    # which stay off unless their sections turn them on).
    plugins: list[str] = field(default_factory=lambda: ["facevib.info.training"])


@dataclass
class IFMConfig:
    """Information flow maximisation (facevib.info.ifm): L = L_clf - weight * sum_l F_l.

    Off while ``weight`` is 0. ``pairs`` are "shallow:deep" module names of the backbone,
    e.g. ["layer1.1:layer2.0", "layer2.1:layer3.0"] on an r18; the critics are trained
    jointly and kept out of the backbone's state_dict and export.
    """

    pairs: list[str] = field(default_factory=list)
    weight: float = 0.0  # lambda; the IFM paper uses 1
    locations: int = 16  # feature locations sampled per image and pair each step


@dataclass
class InfoConfig:
    """Information-plane recording (facevib.info.recorder) at every evaluation.

    Off while ``record`` is False. Records at each evaluation (``run.eval_every`` steps and
    the end of a run with ``data.val_targets``) on a fixed probe set from ``data.rec``:
    ``max_classes`` identities, ``per_class`` images each, split alternately into the probe's
    fitting half and the held-out half. Written to ``<run.output>/infoplane.json`` + PNGs and
    logged as ``info/<layer>/...`` scalars (bits).
    """

    record: bool = False
    max_classes: int = 20
    per_class: int = 6  # >= 2, so every identity is on both sides
    bin_size: float = 0.67  # binning width (the binning paper's)


@dataclass
class TrainConfig:
    """Everything one training run needs; saved resolved with every run and checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ifm: IFMConfig = field(default_factory=IFMConfig)
    info: InfoConfig = field(default_factory=InfoConfig)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path, config_type: type | None = None) -> Any:
    """Load a config module (``config = TrainConfig(...)`` or ``get_config()``).

    ``config_type`` is the class the module must define an instance of (default
    :class:`TrainConfig`; the classification experiments pass their own).

    The config's folder is importable while it loads, so a config can start from another
    (``from ms1mv3_r100_cellvib import config as paper``) and change what differs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"facevib_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python config module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    if hasattr(module, "get_config"):
        cfg = module.get_config()
    elif hasattr(module, "config"):
        cfg = module.config
    else:
        raise ValueError(f"{path}: defines neither `config` nor `get_config()`")
    config_type = config_type or TrainConfig
    if not isinstance(cfg, config_type):
        raise ValueError(
            f"{path}: `config` is a {type(cfg).__name__}, expected {config_type.__module__}.{config_type.__name__}"
        )
    return cfg


def _parse_literal(text: str) -> Any:
    """A Python literal when the text is one, else the text itself (bare strings)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert ``value`` to the declared field type, or raise ValueError naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, name)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{name}: cannot be {value!r}")
    if annotation is Any:
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            if isinstance(value, str) and origin is list:
                value = [v for v in value.split(",") if v]
            else:
                raise ValueError(f"{name}: expected a {origin.__name__}, got {value!r}")
        items = list(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"{name}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, name) for v, a in zip(items, args, strict=True))
        inner = args[0] if args else Any
        return origin(_coerce(v, inner, name) for v in items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a dict, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    raise ValueError(f"{name}: unsupported field type {annotation!r}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """Apply ``section.field=value`` strings to ``cfg`` (in place) and return it.

    ``model.kwargs.beta={'kind': 'constant', 'value': 1e-4}`` sets one key inside a dict
    field.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected section.field=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) < 2:
            raise ValueError(f"override {item!r}: expected section.field=value, e.g. optim.lr=0.05")
        section_name, field_name, *keys = parts
        section = getattr(cfg, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            names = ", ".join(f.name for f in dataclasses.fields(cfg))
            raise ValueError(f"override {item!r}: unknown section {section_name!r} (one of {names})")
        types_ = _field_types(type(section))
        if field_name not in types_:
            names = ", ".join(types_)
            raise ValueError(f"override {item!r}: {section_name} has no field {field_name!r} (fields: {names})")
        value = _parse_literal(raw.strip())
        if keys:
            target = getattr(section, field_name)
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {section_name}.{field_name} is not a dict")
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = value
        else:
            setattr(section, field_name, _coerce(value, types_[field_name], f"{section_name}.{field_name}"))
    return cfg


# ----------------------------------------------------------------------------- validation

_CHOICES = {
    ("optim", "name"): ("sgd", "adamw"),
    ("schedule", "kind"): ("multistep", "poly"),
    ("run", "device"): ("auto", "cpu", "cuda"),
    ("run", "amp"): ("auto", "bf16", "fp16", "none"),
}


def check_field_types(cfg: Any) -> None:
    """Check every field of every section of a config dataclass against its annotation.

    Works on any config made of dataclass sections (:class:`TrainConfig`, the
    classification experiments' config); raises ValueError naming ``section.field``.
    """
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for name, annotation in _field_types(type(obj)).items():
            _coerce(getattr(obj, name), annotation, f"{section.name}.{name}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every field once; raise ValueError naming the first bad one."""
    check_field_types(cfg)
    for (section, name), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ValueError(f"{section}.{name}={value!r}: must be one of {', '.join(choices)}")

    def positive(path: str, value: float, allow_zero: bool = False) -> None:
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{path}={value!r}: must be {'>= 0' if allow_zero else '> 0'}")

    if not cfg.data.rec:
        raise ValueError("data.rec is empty: point it at a folder with train.rec/train.idx")
    positive("data.batch_size", cfg.data.batch_size)
    positive("data.num_workers", cfg.data.num_workers, allow_zero=True)
    if cfg.data.val_targets and not cfg.data.val_dir:
        raise ValueError("data.val_targets is set but data.val_dir is empty")
    positive("head.scale", cfg.head.scale)
    if cfg.head.m1 != 1.0:
        raise ValueError(f"head.m1={cfg.head.m1!r}: only 1 is supported (no multiplicative SphereFace margin)")
    if not 0.0 < cfg.head.sample_rate <= 1.0:
        raise ValueError(f"head.sample_rate={cfg.head.sample_rate!r}: must be in (0, 1]")
    positive("optim.lr", cfg.optim.lr)
    positive("optim.lr_batch_size", cfg.optim.lr_batch_size, allow_zero=True)
    positive("optim.weight_decay", cfg.optim.weight_decay, allow_zero=True)
    if cfg.optim.clip_grad_norm is not None:
        positive("optim.clip_grad_norm", cfg.optim.clip_grad_norm)
    if (cfg.run.total_steps > 0) == (cfg.run.epochs > 0):
        raise ValueError(
            f"run.total_steps={cfg.run.total_steps}, run.epochs={cfg.run.epochs}: set exactly one of them (> 0)"
        )
    positive("run.total_steps", cfg.run.total_steps, allow_zero=True)
    positive("run.epochs", cfg.run.epochs, allow_zero=True)
    positive("schedule.warmup_steps", cfg.schedule.warmup_steps, allow_zero=True)
    if list(cfg.schedule.milestones) != sorted(cfg.schedule.milestones):
        raise ValueError(f"schedule.milestones={cfg.schedule.milestones!r}: must be increasing")
    positive("run.log_every", cfg.run.log_every)
    positive("run.checkpoint_every", cfg.run.checkpoint_every, allow_zero=True)
    positive("run.keep_checkpoints", cfg.run.keep_checkpoints)
    positive("run.eval_every", cfg.run.eval_every, allow_zero=True)
    positive("run.max_nonfinite_steps", cfg.run.max_nonfinite_steps, allow_zero=True)
    validate_ifm(cfg.ifm)
    validate_info(cfg)
    return cfg


def validate_info(cfg: TrainConfig) -> None:
    """Check the info section: sizes, bin width, and an evaluation to record at."""
    info = cfg.info
    if info.max_classes < 2:
        raise ValueError(f"info.max_classes={info.max_classes!r}: must be >= 2")
    if info.per_class < 2:
        raise ValueError(f"info.per_class={info.per_class!r}: must be >= 2 (one image per probe side)")
    if not info.bin_size > 0:
        raise ValueError(f"info.bin_size={info.bin_size!r}: must be > 0")
    if info.record and not (cfg.run.eval_every or cfg.data.val_targets):
        raise ValueError("info.record=True records at evaluations: set run.eval_every or data.val_targets")


def validate_ifm(ifm: IFMConfig) -> None:
    """Check the IFM section: a weight >= 0, pairs given when it is on, locations > 0."""
    if not ifm.weight >= 0:
        raise ValueError(f"ifm.weight={ifm.weight!r}: must be >= 0")
    if ifm.locations <= 0:
        raise ValueError(f"ifm.locations={ifm.locations!r}: must be > 0")
    if ifm.weight > 0:
        try:
            parse_pairs(ifm.pairs)
        except ValueError as exc:
            raise ValueError(f"ifm.pairs={ifm.pairs!r}: {exc}") from exc


def parse_pairs(pairs: Iterable[str | Iterable[str]]) -> list[tuple[str, str]]:
    """Layer pairs from ``("a", "b")`` items or ``"a:b"`` strings (the ``ifm.pairs`` form).

    Raises:
        ValueError: an item that is not two non-empty names, or no pairs at all.
    """
    parsed: list[tuple[str, str]] = []
    for item in pairs:
        names = item.split(":") if isinstance(item, str) else list(item)
        if len(names) != 2 or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"IFM layer pair {item!r}: expected 'shallow:deep' (two module names)")
        parsed.append((names[0], names[1]))
    if not parsed:
        raise ValueError("IFM needs at least one layer pair")
    return parsed


# ----------------------------------------------------------------------------- (de)serialising


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved by :func:`config_to_dict` (unknown keys are an error)."""
    cfg = TrainConfig()
    for section_name, values in data.items():
        section = getattr(cfg, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            raise ValueError(f"saved config has unknown section {section_name!r}")
        types_ = _field_types(type(section))
        for name, value in values.items():
            if name not in types_:
                raise ValueError(f"saved config has unknown field {section_name}.{name}")
            setattr(section, name, _coerce(value, types_[name], f"{section_name}.{name}"))
    return cfg
