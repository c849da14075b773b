"""Training and evaluation sets of a classification experiment, from its config."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from facevib.data.classic import (
    CIFAR10C_CORRUPTIONS,
    PACS_DOMAINS,
    PACSDataset,
    load_cifar10,
    load_cifar10c,
    load_digits_split,
    load_mnist,
    make_shifted_digits,
    make_textures,
    symmetric_label_noise,
)
from facevib.experiments.classify import ArrayDataset
from facevib.experiments.config import ClassicData

__all__ = ["build_datasets"]

_NUM_CLASSES = {"mnist": 10, "cifar10": 10, "pacs": 7, "digits": 10, "shifted_digits": 10}


def _noisy(labels: np.ndarray, cfg: ClassicData, seed: int) -> np.ndarray:
    if cfg.label_noise == 0:
        return labels
    return symmetric_label_noise(labels, cfg.label_noise, _NUM_CLASSES[cfg.name], seed)[0]


def build_datasets(cfg: ClassicData, seed: int) -> tuple[Dataset, dict[str, Dataset]]:
    """``(train set, {name: evaluation set})``; label noise touches the training labels only.

    Evaluation sets: ``test`` always; CIFAR-10-C adds ``<corruption>/s<severity>``; shifted
    digits add ``test_texture`` (the same images labelled by their background texture).
    """
    if cfg.name == "mnist":
        x, y = load_mnist(cfg.root, "train")
        x_test, y_test = load_mnist(cfg.root, "test")
        return ArrayDataset(x[:, None], _noisy(y, cfg, seed)), {"test": ArrayDataset(x_test[:, None], y_test)}
    if cfg.name == "cifar10":
        x, y = load_cifar10(cfg.root, "train")
        x_test, y_test = load_cifar10(cfg.root, "test")
        evals: dict[str, Dataset] = {"test": ArrayDataset(x_test, y_test)}
        if cfg.cifar10c_root:
            for corruption in cfg.corruptions or CIFAR10C_CORRUPTIONS:
                for severity in range(1, 6):
                    images, labels = load_cifar10c(cfg.cifar10c_root, corruption, severity)
                    evals[f"{corruption}/s{severity}"] = ArrayDataset(images, labels)
        return ArrayDataset(x, _noisy(y, cfg, seed), augment=cfg.augment), evals
    if cfg.name == "pacs":
        if cfg.pacs_target not in PACS_DOMAINS:
            raise ValueError(f"data.pacs_target={cfg.pacs_target!r}: must be one of {', '.join(PACS_DOMAINS)}")
        sources = [d for d in PACS_DOMAINS if d != cfg.pacs_target]
        if cfg.label_noise:
            raise ValueError("data.label_noise is not supported for PACS (a folder dataset)")
        train = PACSDataset(cfg.root, sources, cfg.image_size)
        return train, {"test": PACSDataset(cfg.root, [cfg.pacs_target], cfg.image_size)}
    x, y, x_test, y_test = load_digits_split(cfg.test_fraction, seed)
    if cfg.name == "digits":
        return ArrayDataset(x[:, None], _noisy(y, cfg, seed)), {"test": ArrayDataset(x_test[:, None], y_test)}
    textures = make_textures(10, seed=seed)
    train_images, _ = make_shifted_digits(x, y, textures, tied=True, seed=seed)
    test_images, texture_ids = make_shifted_digits(x_test, y_test, textures, tied=False, seed=seed + 1)
    return ArrayDataset(train_images, _noisy(y, cfg, seed)), {
        "test": ArrayDataset(test_images, y_test),
        "test_texture": ArrayDataset(test_images, texture_ids),
    }
