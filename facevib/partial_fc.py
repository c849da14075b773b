"""Class-parallel margin softmax (Partial FC, An et al. 2022).

Class centres are sharded contiguously over ranks. Every rank all-gathers the embeddings
and labels of the global batch, computes cosine logits against its own shard, applies the
margin, and the softmax normaliser is assembled with two all-reduces (max, then sum). The
result is the mean cross-entropy over the *global* batch, identical on every rank.

Gradient bookkeeping (so that W ranks reproduce one process exactly at sample_rate 1):

* the all-gather's backward sums every rank's contribution into the local embeddings;
* the all-reduced sums pass gradients through unchanged, because each rank computes the
  same replicated loss from them;
* the backbone's DDP all-reduce must therefore *sum* (not average) gradients — see
  :func:`facevib.distributed.wrap_ddp` — and the class-centre shards are local
  parameters that need no reduction at all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facevib.distributed import all_gather_with_grad, all_reduce_sum_with_identity_grad, shard_range

__all__ = ["PartialFC"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PartialFC(nn.Module):
    """Sharded class centres + margin loss + distributed softmax cross-entropy.

    Args:
        margin_loss: maps (cosine logits (B, C_local), local labels with -1 for "not in
            this shard") to scaled, margin-adjusted logits — e.g.
            :class:`facevib.losses.CombinedMarginLoss`.
        embedding_dim: size of the backbone's embedding.
        num_classes: total number of identities (over all ranks).
        sample_rate: fraction of this rank's centres used per step; all positive centres
            of the global batch are always kept, random negatives fill the rest.
    """

    def __init__(self, margin_loss: nn.Module, embedding_dim: int, num_classes: int, sample_rate: float = 1.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: must be >= 1")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate}: must be in (0, 1]")
        self.rank, self.world_size = _world()
        if num_classes < self.world_size:
            raise ValueError(f"num_classes={num_classes} is smaller than the world size {self.world_size}")
        self.margin_loss = margin_loss
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.class_start, self.class_stop = shard_range(num_classes, self.rank, self.world_size)
        self.num_local = self.class_stop - self.class_start
        self.num_sample = max(1, int(round(sample_rate * self.num_local)))
        self.weight = nn.Parameter(torch.empty(self.num_local, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """N(0, 0.01) as arcface_torch; drawn for the *full* matrix and sliced, so the
        initial centres do not depend on the world size."""
        full = torch.empty(self.num_classes, self.embedding_dim).normal_(0.0, 0.01, generator=generator)
        with torch.no_grad():
            self.weight.copy_(full[self.class_start : self.class_stop])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, shard=[{self.class_start}, {self.class_stop}), "
            f"embedding_dim={self.embedding_dim}, sample_rate={self.sample_rate}"
        )

    def _sample(
        self, local_labels: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the centres for this step; return (centre indices, labels remapped to them)."""
        in_shard = local_labels >= 0
        positives = torch.unique(local_labels[in_shard], sorted=True)
        if self.num_sample <= positives.numel():
            index = positives
        else:
            # Random scores, positives forced to the top, keep the num_sample best.
            scores = torch.rand(self.num_local, generator=generator, device="cpu").to(local_labels.device)
            scores[positives] = 2.0
            index = torch.topk(scores, k=self.num_sample).indices.sort().values
        remapped = torch.full_like(local_labels, -1)
        remapped[in_shard] = torch.searchsorted(index, local_labels[in_shard])
        return index, remapped

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean margin-softmax cross-entropy over the global batch (same value on all ranks).

        Args:
            embeddings: (B, D) this rank's embeddings (B equal on every rank).
            labels: (B,) global class ids in [0, num_classes).
            generator: CPU generator for negative sampling (only used when sample_rate < 1).
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings of shape {tuple(embeddings.shape)}: expected (B, {self.embedding_dim})")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match {embeddings.shape[0]} embeddings")
        all_embeddings = all_gather_with_grad(embeddings.float())
        all_labels = all_gather_with_grad(labels.long())  # integers: nothing flows back
        if bool(((all_labels < 0) | (all_labels >= self.num_classes)).any()):
            bad = all_labels[(all_labels < 0) | (all_labels >= self.num_classes)][0].item()
            raise ValueError(f"label {bad} is outside [0, {self.num_classes}) (check data.rec / property)")

        local_labels = all_labels - self.class_start
        local_labels[(local_labels < 0) | (local_labels >= self.num_local)] = -1
        weight = self.weight
        if self.training and self.num_sample < self.num_local:
            index, local_labels = self._sample(local_labels, generator)
            weight = weight[index]

        cosine = F.linear(F.normalize(all_embeddings), F.normalize(weight)).clamp(-1.0, 1.0)
        logits = self.margin_loss(cosine, local_labels)
        return _distributed_cross_entropy(logits, local_labels)


def _distributed_cross_entropy(logits: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits split over ranks by class; ``local_labels`` is -1 off-shard."""
    with torch.no_grad():
        # The max only stabilises exp(); it is a constant for the gradient.
        row_max = logits.max(dim=1, keepdim=True).values
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
    shifted = logits - row_max
    sum_exp = all_reduce_sum_with_identity_grad(shifted.exp().sum(dim=1))
    on_shard = local_labels >= 0
    picked = shifted.gather(1, local_labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    target = all_reduce_sum_with_identity_grad(torch.where(on_shard, picked, torch.zeros_like(picked)))
    return (sum_exp.log() - target).mean()
