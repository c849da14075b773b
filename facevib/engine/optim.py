"""Optimisers and the per-iteration learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from facevib.config import OptimConfig, ScheduleConfig

__all__ = ["build_optimizer", "scaled_lr", "lr_factor", "set_lr"]


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """``cfg.lr`` scaled linearly from ``cfg.lr_batch_size`` to the actual global batch."""
    if cfg.lr_batch_size == 0:
        return cfg.lr
    return cfg.lr * global_batch / cfg.lr_batch_size


def build_optimizer(cfg: OptimConfig, modules: Iterable[nn.Module], lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over every trainable parameter of ``modules``.

    One parameter group per module, in order, so checkpoint code can find the Partial FC
    shard's state by position.
    """
    groups = [{"params": [p for p in m.parameters() if p.requires_grad]} for m in modules]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name={cfg.name!r}: expected 'sgd' or 'adamw'")


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base lr at iteration ``step`` (0-based).

    Warmup is linear from 0; ``multistep`` multiplies by ``gamma`` at each milestone
    passed; ``poly`` decays as ``(1 - t)^power`` over the steps after warmup.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "multistep":
        passed = sum(1 for m in cfg.milestones if step >= m)
        return cfg.gamma**passed
    if cfg.kind == "poly":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return (1.0 - progress) ** cfg.power
    raise ValueError(f"schedule.kind={cfg.kind!r}: expected 'multistep' or 'poly'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
