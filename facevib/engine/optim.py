"""Optimisers with named parameter groups, and the per-iteration learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from facevib.config import ConfigError, OptimConfig, ScheduleConfig

__all__ = [
    "NO_DECAY_TYPES",
    "build_optimizer",
    "excluded_from_decay",
    "group",
    "lr_factor",
    "param_groups",
    "scaled_lr",
    "set_lr",
]

# Parameters of these modules only scale or shift activations; decaying them toward 0
# changes the function without regularising capacity (timm's and torchvision's
# "no weight decay on norm and bias" recipes).
NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.PReLU)


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """``cfg.lr`` scaled linearly from ``cfg.lr_batch_size`` to the actual global batch."""
    if cfg.lr_batch_size == 0:
        return cfg.lr
    return cfg.lr * global_batch / cfg.lr_batch_size


def excluded_from_decay(module: nn.Module) -> set[str]:
    """Names (relative to ``module``) of the parameters that the no-decay option exempts:
    BatchNorm/LayerNorm/GroupNorm weights and biases, PReLU slopes, every bias — which
    includes each VIB cell's sigma bias ``b`` (``...vib.bias``): decayed, it would pull
    sigma = softplus(b + F_sigma(x)) toward softplus(0) = 0.69 over a long run."""
    names = set()
    for prefix, child in module.named_modules():
        for name, _ in child.named_parameters(recurse=False):
            if isinstance(child, NO_DECAY_TYPES) or name == "bias":
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def param_groups(modules: dict[str, nn.Module], weight_decay: float, decay_norms_and_biases: bool = True) -> list[dict]:
    """Named optimizer groups: for each ``name, module``, ``name`` (decayed) and, when
    ``decay_norms_and_biases`` is False, ``name + "_no_decay"`` (weight decay 0).

    Every group carries ``"name"`` and ``"param_names"`` (``"<name>.<parameter>"``), so
    code finds a group or a parameter's state by name, never by position. Empty groups
    are left out; frozen parameters (``requires_grad=False``) are not optimised.
    """
    groups = []
    for name, module in modules.items():
        exempt = set() if decay_norms_and_biases else excluded_from_decay(module)
        decay, no_decay = [], []
        for pname, param in module.named_parameters():
            if param.requires_grad:
                (no_decay if pname in exempt else decay).append((f"{name}.{pname}", param))
        for group_name, members, wd in ((name, decay, weight_decay), (f"{name}_no_decay", no_decay, 0.0)):
            if members:
                groups.append(
                    {
                        "name": group_name,
                        "params": [p for _, p in members],
                        "param_names": [n for n, _ in members],
                        "weight_decay": wd,
                    }
                )
    return groups


def build_optimizer(cfg: OptimConfig, modules: dict[str, nn.Module], lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over :func:`param_groups` of ``modules``
    (fused implementation on CPU and CUDA)."""
    groups = param_groups(modules, cfg.weight_decay, cfg.decay_norms_and_biases)
    # Fused kernels update in place: the foreach/single-tensor paths allocate a temporary
    # the size of each parameter for the weight-decayed gradient, which for a WebFace42M
    # Partial FC shard is another full (C_local, D) matrix.
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"} or None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused)
    raise ConfigError(f"optim.name={cfg.name!r}: expected 'sgd' or 'adamw'")


def group(optimizer: torch.optim.Optimizer, name: str) -> dict:
    """The parameter group called ``name``."""
    for candidate in optimizer.param_groups:
        if candidate.get("name") == name:
            return candidate
    names = [g.get("name") for g in optimizer.param_groups]
    raise KeyError(f"optimizer has no parameter group {name!r} (groups: {names})")


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
    raise ConfigError(f"schedule.kind={cfg.kind!r}: expected 'multistep' or 'poly'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr


def named_state(optimizer: torch.optim.Optimizer, skip: tuple[torch.Tensor, ...] = ()) -> dict[str, dict]:
    """Per-parameter optimizer state keyed by parameter name (``"backbone.conv1.weight"``),
    on the CPU; ``skip`` leaves out parameters whose state is saved elsewhere (the Partial
    FC shard). Keyed by name, a checkpoint loads whatever the grouping (e.g. with weight
    decay exclusion switched on or off)."""
    skipped = {id(p) for p in skip}
    out = {}
    for param_group in optimizer.param_groups:
        for name, param in zip(param_group["param_names"], param_group["params"], strict=True):
            if id(param) in skipped or param not in optimizer.state:
                continue
            out[name] = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in optimizer.state[param].items()}
    return out


def load_named_state(optimizer: torch.optim.Optimizer, state: dict[str, dict], origin: str) -> None:
    """Install :func:`named_state` output; every saved name must be a parameter here."""
    params = {
        name: (param, param_group)
        for param_group in optimizer.param_groups
        for name, param in zip(param_group["param_names"], param_group["params"], strict=True)
    }
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ConfigError(f"{origin}: optimizer state for parameters this model lacks: {', '.join(unknown[:5])}")
    for name, entries in state.items():
        param, param_group = params[name]
        optimizer.state[param] = {key: _placed(key, value, param, param_group) for key, value in entries.items()}


def _placed(key: str, value: object, param: torch.Tensor, param_group: dict) -> object:
    """Where torch's own ``Optimizer.load_state_dict`` puts a state entry: per-element state
    next to the parameter; ``step`` a float32 scalar, on the parameter's device only for
    fused or capturable implementations."""
    if not torch.is_tensor(value):
        return value
    if key == "step":
        on_device = param_group.get("fused") or param_group.get("capturable")
        return value.to(dtype=torch.float32, device=param.device if on_device else "cpu")
    return value.to(param.device, param.dtype) if value.shape == param.shape else value
