"""The process-wide backend switches a run sets: determinism, cuDNN autotuning, TF32.

Deterministic mode on CUDA: ``torch.use_deterministic_algorithms(True)`` makes torch raise
a ``RuntimeError`` at the first backward through a layer that has no deterministic CUDA
implementation, i.e. mid-training. :func:`nondeterministic_cuda_layers` finds those layers
by module type before the first step, from :data:`NONDETERMINISTIC_CUDA_BACKWARD` (the
modules the ``torch.use_deterministic_algorithms`` documentation lists as raising, torch
2.4-2.13), and :func:`check_deterministic` refuses the run in one line naming them.
Operations called as functions (``F.interpolate(mode="bilinear")``, ``torch.cumsum`` ...) are
not modules and cannot be listed this way; facevib's training code calls none of the
listed ones (IFM resizes feature maps with ``mode="nearest"``, which is not listed).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from facevib.config import ConfigError

__all__ = [
    "NONDETERMINISTIC_CUDA_BACKWARD",
    "check_deterministic",
    "configure_backends",
    "nondeterministic_cuda_layers",
]


def _not_global_average(module: nn.Module) -> bool:
    # torch computes a 1x1 adaptive average pool as a mean over H and W (its backward,
    # MeanBackward, is deterministic); only other output sizes reach the CUDA kernel
    # without a deterministic backward.
    size = module.output_size
    return tuple(size) != (1, 1) if isinstance(size, tuple) else size != 1


def _resizes_linearly(module: nn.Module) -> bool:
    return module.mode in ("linear", "bilinear", "bicubic", "trilinear")


def _max_mode(module: nn.Module) -> bool:
    return module.mode == "max"


def _always(module: nn.Module) -> bool:
    return True


# Module type -> when its CUDA backward raises under deterministic algorithms.
NONDETERMINISTIC_CUDA_BACKWARD: dict[type[nn.Module], Callable[[nn.Module], bool]] = {
    nn.AvgPool3d: _always,
    nn.AdaptiveAvgPool2d: _not_global_average,
    nn.AdaptiveAvgPool3d: _always,
    nn.AdaptiveMaxPool2d: _always,
    nn.FractionalMaxPool2d: _always,
    nn.FractionalMaxPool3d: _always,
    nn.MaxUnpool1d: _always,
    nn.MaxUnpool2d: _always,
    nn.MaxUnpool3d: _always,
    nn.Upsample: _resizes_linearly,
    nn.ReflectionPad1d: _always,
    nn.ReflectionPad2d: _always,
    nn.ReflectionPad3d: _always,
    nn.NLLLoss: _always,
    nn.CTCLoss: _always,
    nn.EmbeddingBag: _max_mode,
}


def nondeterministic_cuda_layers(modules: dict[str, nn.Module], device: torch.device | str) -> list[str]:
    """``"<name>.<layer> (<Module repr>)"`` of every trained layer without a deterministic
    backward on ``device``; always empty for devices other than CUDA (torch's CPU kernels
    are deterministic)."""
    if torch.device(device).type != "cuda":
        return []
    found = []
    for prefix, module in modules.items():
        for name, layer in module.named_modules():
            when = NONDETERMINISTIC_CUDA_BACKWARD.get(type(layer))
            if when is not None and when(layer):
                found.append(f"{prefix}.{name} ({layer})" if name else f"{prefix} ({layer})")
    return found


def check_deterministic(modules: dict[str, nn.Module], device: torch.device | str) -> None:
    """Raise one line naming the layers that would stop a ``run.deterministic=true`` run on
    ``device`` at their first backward.

    Raises:
        ConfigError: some layer of ``modules`` has no deterministic CUDA backward.
    """
    layers = nondeterministic_cuda_layers(modules, device)
    if layers:
        raise ConfigError(
            f"run.deterministic=true on {torch.device(device).type}: torch has no deterministic CUDA backward "
            f"for {', '.join(layers)}; set run.deterministic=false or train on the CPU"
        )


def configure_backends(deterministic: bool, device: torch.device) -> None:
    """Deterministic algorithms and no autotuning/TF32, or the fast defaults.

    Set both ways: these switches are process-wide, and an earlier run in the same process
    (a notebook, a test) may have left them on.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
