"""The process-wide backend switches a run sets: determinism, cuDNN autotuning, TF32."""

from __future__ import annotations

import os

import torch

__all__ = ["configure_backends"]


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
