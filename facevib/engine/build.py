"""``build_*``: turn a validated config into the parts of a run (data, model, task,
optimizer, schedule, precision), each a plain function the :class:`Trainer` calls once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from facevib.config import ConfigError, TrainConfig
from facevib.data.datasets import MXFaceDataset
from facevib.distributed import DistEnv
from facevib.engine.optim import build_optimizer, lr_factor, scaled_lr
from facevib.engine.reader import read_checkpoint
from facevib.engine.seeding import Stream, derive_seed
from facevib.engine.task import FaceRecognitionTask
from facevib.losses import CombinedMarginLoss
from facevib.models import create_model, load_arcface_state_dict
from facevib.partial_fc import PartialFC

__all__ = [
    "amp_dtype",
    "build_backbone",
    "build_dataset",
    "build_optim",
    "build_partial_fc",
    "build_schedule",
    "build_task",
    "check_labels",
]


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training images of ``data.rec``.

    uint8 samples, no per-sample flip: workers only read and decode (4x less to copy between
    processes and to the GPU); flips and normalisation happen per batch on the device, the
    flips drawn per global sample position so that a resume repeats them.
    """
    return MXFaceDataset(cfg.data.rec, train=False, skip_corrupt=cfg.data.skip_corrupt, normalize=False)


def check_labels(dataset: Dataset, num_classes: int, rec: str) -> None:
    """Labels in [0, num_classes), checked once here rather than (with a host
    synchronisation) in every step; datasets without a ``labels`` array are checked by the
    Partial FC per step (exactly on CPU, by an asynchronous assert on CUDA)."""
    labels = getattr(dataset, "labels", None)
    if labels is None or len(labels) == 0:
        return
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"{rec}: sample {index} has label {int(labels[index])}, outside "
            f"[0, {num_classes}) ({int(bad.sum())} such samples; check property / train.idx)"
        )


def build_backbone(cfg: TrainConfig, device: torch.device, log: Callable[[str], None]) -> nn.Module:
    """The configured backbone, the same initial weights on every rank and in every run with
    this seed, optionally initialised from ``model.init_backbone``."""
    torch.manual_seed(derive_seed(cfg.run.seed, Stream.INIT, 0))
    try:
        backbone = create_model(cfg.model.name, **cfg.model.kwargs)
    except (TypeError, ValueError) as exc:  # the model's own check of the configured kwargs
        raise ConfigError(f"model.name={cfg.model.name!r}, model.kwargs={cfg.model.kwargs!r}: {exc}") from exc
    if cfg.model.init_backbone:
        _initialise_from(backbone, Path(cfg.model.init_backbone), log)
    backbone.to(device)
    if cfg.run.channels_last:
        backbone.to(memory_format=torch.channels_last)
    return backbone


def _initialise_from(backbone: nn.Module, path: Path, log: Callable[[str], None]) -> None:
    """Load an arcface_torch ``backbone.pth`` (or a facevib checkpoint) into ``backbone``.

    Mean branches and the head take the checkpoint's weights; VIB sigma branches, which
    arcface_torch models do not have, keep their fresh initialisation.
    """
    try:
        checkpoint = read_checkpoint(path, what="model.init_backbone", plain_ok=True)
        report = load_arcface_state_dict(backbone, checkpoint.backbone)
    except ValueError as exc:
        message = str(exc)
        raise ConfigError(
            message if message.startswith("model.init_backbone") else f"model.init_backbone: {exc}"
        ) from exc
    log(
        f"initialised from {checkpoint.path}: {len(checkpoint.backbone)} tensors loaded, "
        f"{len(report.missing_keys)} VIB tensors left at their initialisation"
    )


def build_partial_fc(cfg: TrainConfig, embedding_dim: int, num_classes: int, device: torch.device) -> PartialFC:
    """This rank's Partial FC classifier with the configured margin."""
    head = cfg.head
    margin = CombinedMarginLoss(s=head.scale, m1=head.m1, m2=head.m2, m3=head.m3, detach_margin=head.detach_margin)
    return PartialFC(
        margin,
        embedding_dim,
        num_classes,
        head.sample_rate,
        seed=derive_seed(cfg.run.seed, Stream.INIT, 1),
        device=device,
    )


def build_task(
    cfg: TrainConfig, backbone: nn.Module, pfc: PartialFC, env: DistEnv, aux_losses: dict[str, nn.Module]
) -> FaceRecognitionTask:
    """The objective, on the run's device (DDP-wrapped when distributed)."""
    compile_backend = cfg.run.compile_backend if cfg.run.compile else None
    return FaceRecognitionTask(backbone, pfc, env, aux_losses=aux_losses, compile_backend=compile_backend).to(
        env.device
    )


def build_optim(cfg: TrainConfig, task: FaceRecognitionTask, global_batch: int) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer over backbone, Partial FC and auxiliary parameters, and its base lr.

    With SGD (momentum > 0) and no float16 gradient scaling, the Partial FC's update is
    folded into the step (:meth:`PartialFC.fold_sgd_updates`): the same SGD result without
    a (C_local, D) gradient.
    """
    base_lr = scaled_lr(cfg.optim, global_batch)
    trained: dict[str, nn.Module] = {"backbone": task.backbone, "partial_fc": task.pfc}
    if len(task.aux_losses):
        trained["auxiliary"] = task.aux_losses
    optimizer = build_optimizer(cfg.optim, trained, base_lr)
    scaled = amp_dtype(cfg.run.amp, task.pfc.weight.device) == torch.float16  # GradScaler on
    if cfg.optim.name == "sgd" and cfg.optim.momentum > 0 and not scaled:
        task.pfc.fold_sgd_updates(optimizer)
    return optimizer, base_lr


def build_schedule(cfg: TrainConfig, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """The learning rate of each (0-based) step."""
    return lambda step: base_lr * lr_factor(cfg.schedule, step, total_steps)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``run.amp`` on ``device`` (None: full precision)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
