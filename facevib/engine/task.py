"""The training task: backbone (DDP) + Partial FC + margin + beta-weighted KL -> (loss, metrics).

Objective per step (cellVIB, "Cell Variational Information Bottleneck Network",
arXiv:2403.15082 (withdrawn), Eq. 6 summed over cells, with the ArcFace classifier as the
likelihood term)::

    L = CE_margin(global batch) + sum_i beta_i * KL_i + sum_j L_aux_j

KL_i is each VIB cell's batch-mean KL in nats. The task knows nothing about data loading,
optimisers, schedules, precision or checkpoints: the loop (:class:`facevib.engine.Trainer`)
owns those and calls the task under ``torch.autocast`` when mixed precision is on; the
task never enables autocast itself (the Partial FC keeps its classifier in float32).

Extension point: auxiliary losses. Each is an ``nn.Module`` whose ``forward(batch:
TaskBatch) -> (loss, metrics)`` returns a scalar to *add* to the objective (a term to
maximise is returned negated, e.g. IFM's ``-lambda * sum_l F_l``) computed over this
rank's samples, and a dict of scalar tensors to log under ``"<name>/<key>"``. The task
divides the loss by the world size (DDP sums gradients, see
:func:`facevib.distributed.wrap_ddp`) and averages the metrics over ranks. A loss that
needs intermediate feature maps registers forward hooks on the backbone blocks it reads
(``backbone.iter_blocks()``) when it is built; hooks run inside the same forward. Modules
with trainable parameters are wrapped in DDP here and trained in the optimizer's
``"auxiliary"`` group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from facevib.distributed import DistEnv, wrap_ddp

__all__ = ["TaskBatch", "FaceRecognitionTask"]


@dataclass
class TaskBatch:
    """What an auxiliary loss sees of a step (this rank's samples)."""

    images: torch.Tensor  # (B, 3, H, W), normalised, on the device
    labels: torch.Tensor  # (B,) class ids
    embeddings: torch.Tensor  # (B, D), the backbone output (training mode)


class FaceRecognitionTask(nn.Module):
    """Backbone + Partial FC + KL (+ auxiliary losses); ``forward`` returns ``(loss, metrics)``.

    Args:
        backbone: an :class:`facevib.models.iresnet.IResNet` (anything with
            ``forward(x, return_kl=True) -> (embedding, kl)`` and ``kl_loss(kl)``).
        pfc: the :class:`facevib.partial_fc.PartialFC` classifier.
        env: the distributed environment (the backbone is wrapped in DDP when distributed).
        aux_losses: ``{name: module}`` auxiliary losses (see the module docstring).
        compile_backend: ``torch.compile`` the (DDP-wrapped) backbone with this backend.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pfc: nn.Module,
        env: DistEnv,
        aux_losses: dict[str, nn.Module] | None = None,
        compile_backend: str | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pfc = pfc
        self.env = env
        self.aux_losses = nn.ModuleDict(aux_losses or {})
        # Wrappers are kept out of the module tree so that state_dict / named_parameters
        # name the real modules ("backbone.conv1.weight", not "model.module.conv1.weight").
        model = wrap_ddp(backbone, env)
        if compile_backend is not None:
            model = torch.compile(model, backend=compile_backend)
        self.__dict__["model"] = model
        self.__dict__["aux_runners"] = {
            name: wrap_ddp(module, env) if any(p.requires_grad for p in module.parameters()) else module
            for name, module in self.aux_losses.items()
        }

    def train(self, mode: bool = True) -> FaceRecognitionTask:
        """Set training mode on the modules and on their DDP / compiled wrappers."""
        super().train(mode)
        self.model.train(mode)
        for runner in self.aux_runners.values():
            runner.train(mode)
        return self

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, sampling: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's objective on this rank's share of a global batch.

        Args:
            images: (B, 3, H, W) normalised images on the device.
            labels: (B,) class ids.
            sampling: CPU generator for Partial FC negative sampling (sample_rate < 1).

        Returns:
            ``loss``: this rank's share; the gradients summed over ranks (DDP) are those of
            the global-batch objective. ``metrics``: detached tensors, equal on every rank
            — ``loss`` (the global objective), ``margin_loss``, ``kl_loss`` (weighted),
            ``kl_cells`` (per-cell KL, nats) and ``<aux name>/<key>`` — read them with
            one host transfer.
        """
        world = self.env.world_size
        embeddings, kl = self.model(images, return_kl=True)
        margin_loss = self.pfc(embeddings, labels, generator=sampling)  # global mean, replicated
        kl = kl.float()
        kl_loss = self.backbone.kl_loss(kl)
        # Local terms are means over this rank's samples: dividing by the world size makes
        # the summed DDP gradients those of the global-batch mean.
        loss = margin_loss + kl_loss / world
        local = {"kl_loss": kl_loss.detach().view(1), "kl_cells": kl.detach().view(-1)}
        if self.aux_runners:
            batch = TaskBatch(images=images, labels=labels, embeddings=embeddings)
            for name, runner in self.aux_runners.items():
                aux_loss, aux_metrics = runner(batch)
                loss = loss + aux_loss / world
                local[f"{name}/loss"] = aux_loss.detach().float().view(1)
                local.update({f"{name}/{k}": v.detach().float().view(-1) for k, v in aux_metrics.items()})
        metrics = {"margin_loss": margin_loss.detach(), **self._mean_over_ranks(local)}
        objective = metrics["margin_loss"] + metrics["kl_loss"]
        for name in self.aux_runners:
            objective = objective + metrics[f"{name}/loss"]
        metrics["loss"] = objective
        return loss, metrics

    def _mean_over_ranks(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average per-rank metric tensors over ranks with one all-reduce; 1-element ones
        become scalars."""
        packed = torch.cat(list(local.values()))
        if self.env.distributed:
            packed = packed / self.env.world_size
            torch.distributed.all_reduce(packed)
        out, offset = {}, 0
        for name, value in local.items():
            piece = packed[offset : offset + value.numel()]
            out[name] = piece[0] if name != "kl_cells" and value.numel() == 1 else piece
            offset += value.numel()
        return out
