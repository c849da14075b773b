"""Step metrics kept on the device and read to the host a window of steps at a time.

A training step's metrics (losses, per-cell KL, whether the update was skipped) are device
tensors. Reading them every step would synchronise the host with the device every step;
:class:`StepReadout` keeps them, and :meth:`StepReadout.read` copies every kept step in one
transfer, when the loop logs (every ``run.log_every`` steps and at the last) and before a
checkpoint. Skipped (non-finite) steps are counted there, in step order, and
:class:`NonFiniteLossError` is raised at the read that finds more than
``run.max_nonfinite_steps`` of them; the skipped updates changed nothing in the meantime.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["NonFiniteLossError", "StepReadout"]

# Kept steps beyond which a read happens anyway, whatever run.log_every says: bounds the
# memory of the kept tensors (a few floats each) and how late a non-finite run stops.
MAX_KEPT_STEPS = 1000


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf more often than ``run.max_nonfinite_steps`` allows."""


@dataclass
class _Kept:
    step: int
    lr: float
    layout: tuple[tuple[str, int, bool], ...]  # (name, elements, scalar) of each metric
    values: torch.Tensor  # skipped flag, grad norm, then the metrics, flattened


class StepReadout:
    """Per-step metrics on the device; host values and the non-finite count at each read.

    Args:
        max_nonfinite_steps: skipped steps allowed before :class:`NonFiniteLossError`.
        log: where a line per skipped step goes (rank 0 prints it).
        nonfinite_steps: skipped steps so far (a resumed run's count).
    """

    def __init__(self, max_nonfinite_steps: int, log: Callable[[str], None], nonfinite_steps: int = 0) -> None:
        self.max_nonfinite_steps = max_nonfinite_steps
        self.log = log
        self.nonfinite_steps = nonfinite_steps
        self._kept: list[_Kept] = []

    def record(
        self, step: int, lr: float, metrics: dict[str, torch.Tensor], skipped: torch.Tensor, grad_norm: torch.Tensor
    ) -> None:
        """Keep step ``step``'s metrics (device tensors; nothing is read here)."""
        layout = tuple((name, value.numel(), value.dim() == 0) for name, value in metrics.items())
        pieces = [skipped.float().view(1), grad_norm.detach().float().view(1)]
        pieces += [value.detach().float().reshape(-1) for value in metrics.values()]
        self._kept.append(_Kept(step, lr, layout, torch.cat(pieces)))
        if len(self._kept) >= MAX_KEPT_STEPS:
            self.read()

    def read(self) -> dict[str, Any] | None:
        """Read every kept step (one device-to-host copy); return the newest one's metrics.

        The metrics of a step are floats (scalars) and lists (vectors) by name, with
        ``lr`` and ``grad_norm``; a skipped step has only ``loss``, ``skipped`` and ``lr``.
        None when no step was kept since the last read.

        Raises:
            NonFiniteLossError: the skipped steps now exceed ``max_nonfinite_steps``.
        """
        kept, self._kept = self._kept, []
        if not kept:
            return None
        flat = torch.cat([k.values for k in kept]).tolist()
        newest, offset = None, 0
        for k in kept:
            skipped, grad_norm = bool(flat[offset]), flat[offset + 1]
            offset += 2
            values: dict[str, Any] = {}
            for name, numel, scalar in k.layout:
                piece = flat[offset : offset + numel]
                values[name] = piece[0] if scalar else piece
                offset += numel
            if skipped:
                self._count(k.step, values, grad_norm)
                newest = {"loss": values["loss"], "skipped": True, "lr": k.lr}
            else:
                newest = {**values, "grad_norm": grad_norm, "lr": k.lr}
        return newest

    def _count(self, step: int, values: dict[str, Any], grad_norm: float) -> None:
        self.nonfinite_steps += 1
        total = values["loss"]
        what = f"non-finite loss {total}" if not math.isfinite(total) else f"non-finite gradient norm {grad_norm}"
        detail = f"margin loss {values['margin_loss']}, weighted KL {values['kl_loss']}"
        allowed = self.max_nonfinite_steps
        if self.nonfinite_steps > allowed:
            raise NonFiniteLossError(
                f"{what} at step {step} ({detail}); "
                f"{self.nonfinite_steps} such step(s) so far, run.max_nonfinite_steps={allowed}. "
                f"Lower optim.lr, enable optim.clip_grad_norm, or use run.amp=bf16 instead of fp16."
            )
        self.log(f"step {step}: {what} ({detail}); update skipped ({self.nonfinite_steps}/{allowed} allowed)")
