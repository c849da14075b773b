"""Train and evaluate a classifier with optional VIB cells (beta-weighted KL) and IFM.

Loss per step: ``CE(logits, y) + sum_i beta_i KL_i`` (cellVIB eq. 6) ``- lambda sum_l F_l``
(IFM eq. 5) when an :class:`~facevib.info.ifm.IFMRegularizer` is given; the critics are
optimised jointly with the model by the same optimiser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from facevib.info.ifm import IFMRegularizer

__all__ = ["ArrayDataset", "OptimSettings", "accuracy", "fit_classifier", "lr_at"]


@dataclass
class OptimSettings:
    """Optimiser and per-epoch learning-rate schedule (the papers' settings are configs)."""

    name: str = "adam"  # "adam" | "sgd"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)  # Adam; cellVIB §4.1 uses (0.5, 0.999)
    momentum: float = 0.9  # SGD
    weight_decay: float = 0.0
    decay_every: int = 0  # epochs between lr *= decay_gamma (cellVIB §4.1: 0.97 every 2); 0: off
    decay_gamma: float = 1.0
    milestones: list[int] = field(default_factory=list)  # epochs where lr *= milestone_gamma
    milestone_gamma: float = 0.2  # cellVIB §4.2 (WRN): divided by 5 at 60, 120, 160


def lr_at(settings: OptimSettings, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``."""
    lr = settings.lr
    if settings.decay_every:
        lr *= settings.decay_gamma ** (epoch // settings.decay_every)
    return lr * settings.milestone_gamma ** sum(epoch >= m for m in settings.milestones)


def _optimizer(settings: OptimSettings, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if settings.name == "adam":
        return torch.optim.Adam(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    if settings.name == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    raise ValueError(f"optim.name must be 'adam' or 'sgd', got {settings.name!r}")


class ArrayDataset(Dataset):
    """In-memory images and labels; uint8 images are scaled to [-1, 1], floats kept as they are.

    Args:
        images: (N, ...) uint8 or float array.
        labels: (N,) ints.
        augment: pad-4 random crop and horizontal flip of (C, H, W) images (the WRN
            CIFAR-10 augmentation), drawn from the DataLoader worker's torch generator.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        image = image.float() / 127.5 - 1.0 if image.dtype == torch.uint8 else image.float()
        if self.augment:
            height, width = image.shape[-2:]
            padded = F.pad(image, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            image = padded[..., top : top + height, left : left + width]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return image, self.labels[index]


def fit_classifier(
    model: nn.Module,
    train_set: Dataset,
    settings: OptimSettings,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    ifm: IFMRegularizer | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` (forward(x, return_kl=True) -> (logits, kl), ``kl_loss``) in place.

    Batches are shuffled by a generator seeded with ``seed``; the last incomplete batch is
    dropped (IFM's negative pairs need two samples). Returns one dict per epoch: mean
    cross-entropy, weighted KL, per-cell KL, IFM flows F_l and the learning rate.
    """
    device = torch.device(device)
    model.to(device)
    params = list(model.parameters())
    if ifm is not None:
        ifm.to(device)
        params += list(ifm.parameters())
    optimizer = _optimizer(settings, params)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training samples is less than one batch of {batch_size}")
    history = []
    for epoch in range(epochs):
        lr = lr_at(settings, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        if ifm is not None:
            ifm.train()
        sums: dict[str, Tensor] = {}
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits, kl = model(images, return_kl=True)
            ce = F.cross_entropy(logits, labels)
            kl_term = model.kl_loss(kl)
            loss = ce + kl_term
            parts = {"ce": ce.detach(), "kl_loss": kl_term.detach(), "kl": kl.detach()}
            if ifm is not None:
                ifm_term, flows = ifm()
                loss = loss + ifm_term
                parts["flows"] = flows
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0) + value
        record: dict[str, float] = {"epoch": epoch + 1, "lr": lr}
        for key, value in sums.items():
            mean = (value / len(loader)).tolist()
            record[key] = mean
        if not np.isfinite(record["ce"]):
            raise FloatingPointError(f"epoch {epoch + 1}: non-finite cross-entropy {record['ce']}; lower optim.lr")
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    model.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` in eval mode (VIB cells return their means)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        predictions = model(images.to(device)).argmax(dim=1).cpu()
        correct += int((predictions == labels).sum())
        total += len(labels)
    model.train(was_training)
    if total == 0:
        raise ValueError("accuracy of an empty dataset")
    return correct / total
