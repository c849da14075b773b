"""The optimizer update of a step, cancelled on the device when the step is not finite.

Reading the loss on the host to decide whether to step would make the CPU wait for the
backward pass and its all-reduces every step, and leave the GPU idle while the next step is
queued. Instead the decision stays a 0-dim tensor on the device, ``skip``, and the update
obeys it there:

* the fused SGD / AdamW kernels (:func:`facevib.engine.optim.build_optimizer` builds fused
  optimizers on CPU and CUDA) skip their update when the optimizer's ``found_inf``
  attribute is 1, the hand-over torch's own ``GradScaler.step`` uses with them; parameters,
  momentum and AdamW's moments and step count are then left exactly as they were;
* the Partial FC update folded into SGD's step (:meth:`facevib.partial_fc.PartialFC.fold_sgd_updates`)
  reads the same attribute;
* under float16 the ``GradScaler`` keeps its scale when the *loss* was non-finite; an
  overflow of the gradients alone is the scaler's business (it skips and backs off).

Which steps are skipped: a non-finite loss, or a non-finite gradient norm of the replicated
parameters (backbone and auxiliary losses, equal on every rank after DDP's all-reduce, so
every rank takes the same decision; the Partial FC shards differ per rank and are left out).

Two cases read the flag on the host instead (one synchronisation): an optimizer that is not
fused, and the first update of SGD with momentum, whose fused kernel would leave
uninitialised momentum buffers behind if it skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["GuardedUpdate", "masked_step"]


def _fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(group.get("fused") for group in optimizer.param_groups)


def _first_momentum_step(optimizer: torch.optim.Optimizer) -> bool:
    """SGD with momentum that has not made its first update for some parameter yet."""
    for group in optimizer.param_groups:
        if not group.get("momentum"):
            continue
        for param in group["params"]:
            if param.grad is not None and optimizer.state.get(param, {}).get("momentum_buffer") is None:
                return True
    return False


def masked_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``skip`` (a 0-dim bool tensor) is true, decided on the device.

    A skipped step leaves the parameters and the optimizer state as they were. Non-fused
    optimizers and SGD's first momentum step read ``skip`` on the host (see the module
    docstring).
    """
    if not _fused(optimizer) or _first_momentum_step(optimizer):
        if not bool(skip):
            optimizer.step()
        return
    optimizer.found_inf = skip.to(torch.float32)
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


class GuardedUpdate:
    """Unscale (float16), clip, check finiteness and step: the end of a training step.

    Args:
        optimizer: the run's optimizer.
        scaler: its ``GradScaler`` (disabled unless float16).
        clipped: parameters whose gradient norm is clipped (the backbone), or ().
        clip_norm: ``optim.clip_grad_norm``, or None for no clipping.
        checked: further replicated parameters whose gradients must be finite (auxiliary
            losses); the clipped ones are always checked.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        clipped: Iterable[nn.Parameter],
        clip_norm: float | None,
        checked: Iterable[nn.Parameter] = (),
    ) -> None:
        self.optimizer = optimizer
        self.scaler = scaler
        self.clip_norm = clip_norm
        clipped = list(clipped)
        self.clipped = clipped if clip_norm is not None else []
        self.checked = list(checked) + ([] if clip_norm is not None else clipped)

    def __call__(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update after ``backward`` of the step whose (replicated) objective is ``loss``.

        Returns ``(skipped, grad_norm)``: 0-dim device tensors, True when this call left
        the parameters unchanged because the step was not finite (a float16 gradient
        overflow, which the scaler handles, does not count); the gradient norm of the
        replicated parameters before clipping.
        """
        scaled = self.scaler.is_enabled()
        if scaled:  # the norms and the clip are about the true gradients
            self.scaler.unscale_(self.optimizer)
        norms = []
        if self.clipped:
            norms.append(nn.utils.clip_grad_norm_(self.clipped, self.clip_norm))
        grads = [p.grad for p in self.checked if p.grad is not None]
        if grads:
            norms.append(nn.utils.get_total_norm(grads))
        grad_norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=loss.device)
        bad_loss = ~torch.isfinite(loss)
        skip = bad_loss | ~torch.isfinite(grad_norm)
        if not scaled:
            masked_step(self.optimizer, skip)
            return skip, grad_norm
        scale = self.scaler.scale(torch.ones((), device=loss.device))
        masked_step(self.optimizer, skip)
        self.scaler.update()  # backs off after a gradient overflow, grows after enough good steps
        # After a non-finite loss, the scale it had (the growth counter's public state is
        # reachable only through a host read, so it is not restored).
        self.scaler.update(torch.where(bad_loss, scale, self.scaler.scale(torch.ones((), device=loss.device))))
        return bad_loss, grad_norm
