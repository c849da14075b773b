"""Typed configuration of a classification experiment (sections like the face TrainConfig).

A config file defines ``config = ClassicConfig(...)``; ``--set section.field=value``
overrides fields exactly as for face training (:func:`facevib.config.apply_overrides`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facevib.config import IFMConfig, ModelConfig, check_field_types, load_config, validate_ifm
from facevib.experiments.classify import OptimSettings

__all__ = ["ClassicConfig", "ClassicData", "ClassicRun", "DATASETS", "load_classic_config", "validate_classic"]

DATASETS = ("mnist", "cifar10", "pacs", "digits", "shifted_digits")


@dataclass
class ClassicData:
    """Which data set, where its files are, and what is done to it."""

    name: str = "mnist"  # one of DATASETS
    root: str = ""  # folder with the published files (not needed for digits / shifted_digits)
    batch_size: int = 100
    label_noise: float = 0.0  # symmetric noise rate r on the training labels (cellVIB eq. 8)
    augment: bool = False  # pad-4 random crop + flip (CIFAR-10, PACS)
    cifar10c_root: str = ""  # CIFAR-10-C folder: also report accuracy per severity over corruptions
    corruptions: list[str] = field(default_factory=list)  # empty: all 19
    pacs_target: str = "sketch"  # PACS: train on the other three domains, test on this one
    image_size: int = 224  # PACS resize
    test_fraction: float = 0.3  # digits / shifted_digits: stratified held-out part


@dataclass
class ClassicRun:
    """Length, reproducibility, outputs."""

    epochs: int = 10
    seed: int = 0
    device: str = "cpu"  # "cpu" | "cuda"
    output: str = "runs/classic"


@dataclass
class ClassicConfig:
    """One classification experiment."""

    data: ClassicData = field(default_factory=ClassicData)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="cellvib_mlp"))
    optim: OptimSettings = field(default_factory=OptimSettings)
    ifm: IFMConfig = field(default_factory=IFMConfig)
    run: ClassicRun = field(default_factory=ClassicRun)


def load_classic_config(path: str | Path) -> ClassicConfig:
    """Load a config module defining ``config = ClassicConfig(...)``."""
    return load_config(path, ClassicConfig)


def validate_classic(cfg: ClassicConfig) -> ClassicConfig:
    """Check every field's type and the values that can be checked before reading data."""
    check_field_types(cfg)
    if cfg.data.name not in DATASETS:
        raise ValueError(f"data.name={cfg.data.name!r}: must be one of {', '.join(DATASETS)}")
    if cfg.data.name in ("mnist", "cifar10", "pacs") and not cfg.data.root:
        raise ValueError(f"data.root is empty: point it at the {cfg.data.name} files (not shipped or downloaded)")
    if not 0.0 <= cfg.data.label_noise <= 1.0:
        raise ValueError(f"data.label_noise={cfg.data.label_noise!r}: must be in [0, 1]")
    if cfg.data.batch_size < 2:
        raise ValueError(f"data.batch_size={cfg.data.batch_size!r}: must be >= 2")
    if cfg.optim.name not in ("adam", "sgd"):
        raise ValueError(f"optim.name={cfg.optim.name!r}: must be 'adam' or 'sgd'")
    if not cfg.optim.lr > 0:
        raise ValueError(f"optim.lr={cfg.optim.lr!r}: must be > 0")
    if cfg.run.epochs <= 0:
        raise ValueError(f"run.epochs={cfg.run.epochs!r}: must be > 0")
    if cfg.run.device not in ("cpu", "cuda"):
        raise ValueError(f"run.device={cfg.run.device!r}: must be 'cpu' or 'cuda'")
    validate_ifm(cfg.ifm)
    return cfg
