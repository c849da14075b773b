"""Class-parallel margin softmax (Partial FC, An et al., "Killing Two Birds with One Stone:
Efficient and Robust Training of Face Recognition CNNs by Partial FC", arXiv:2203.15565).

Class centres are sharded contiguously over ranks. Every rank all-gathers the embeddings
and labels of the global batch, computes cosine logits against its own shard, applies the
margin, and the softmax normaliser is assembled with two all-reduces (max, then sum). The
result is the mean cross-entropy over the *global* batch, identical on every rank.

Gradient bookkeeping (so that W ranks reproduce one process exactly at sample_rate 1):

* the all-gather's backward sums every rank's contribution into the local embeddings;
* every rank computes the same replicated loss from the all-reduced sums, so the local
  logits' gradient needs no reduction;
* the backbone's DDP all-reduce must therefore *sum* (not average) gradients — see
  :func:`facevib.distributed.wrap_ddp` — and the class-centre shards are local
  parameters that need no reduction at all.

Memory. At WebFace42M scale (2,059,906 identities) the (global batch, local classes)
logits dominate the activations: :class:`_CosineMarginSoftmaxCrossEntropy` turns the
cosine matrix into logits, probabilities and finally its own gradient *in place*, and
never copies the centres to normalise them, so the loss adds one such buffer besides the
weight gradient. The centres are initialised shard by shard (:func:`init_rows`),
and checkpoints go through :meth:`PartialFC.sharded_state_dict`, so no rank ever holds
the full (C, D) matrix. Shards follow DTensor's ``Shard(0)`` layout (``torch.chunk`` over
ranks), which ``torch.distributed.checkpoint`` reshards by itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from facevib.distributed import all_gather_with_grad, shard_range
from facevib.losses import CombinedMarginLoss
from facevib.row_shards import checkpoint_view

__all__ = ["PartialFC", "init_rows", "INIT_STD"]

INIT_STD = 0.01  # N(0, 0.01) centres, as arcface_torch
# Rows per independently seeded block of the initial centres: a fixed number, so the
# blocks (and therefore every row) do not depend on the world size or the class count.
INIT_BLOCK_ROWS = 4096
_NORM_EPS = 1e-12  # as F.normalize


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _block_generator(seed: int, block: int) -> torch.Generator:
    """A CPU generator for row block ``block`` of the centres of run seed ``seed``."""
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


@torch.no_grad()
def init_rows(out: torch.Tensor, row_start: int, seed: int, std: float = INIT_STD) -> torch.Tensor:
    """Fill ``out`` (any device) with rows ``[row_start, row_start + len(out))`` of the
    N(0, std) centre matrix of ``seed``.

    Rows come in blocks of :data:`INIT_BLOCK_ROWS`; block ``b`` is drawn whole, on the CPU,
    from its own generator seeded by ``(seed, b)``, and copied to ``out``'s device. A row
    thus depends on the seed and its index only: the same at any world size, for any class
    count, and on CPU and CUDA alike (no device sampler is involved). A rank draws at most
    two blocks beyond its own rows, and holds one block at a time.
    """
    rows, dim = out.shape
    stop = row_start + rows
    for block in range(row_start // INIT_BLOCK_ROWS, -(-stop // INIT_BLOCK_ROWS)):
        first = block * INIT_BLOCK_ROWS
        drawn = torch.empty(INIT_BLOCK_ROWS, dim).normal_(0.0, std, generator=_block_generator(seed, block))
        lo, hi = max(first, row_start), min(first + INIT_BLOCK_ROWS, stop)
        out[lo - row_start : hi - row_start].copy_(drawn[lo - first : hi - first])
    return out


class _CosineMarginSoftmaxCrossEntropy(torch.autograd.Function):
    """Cosine classifier, margin, scale and class-parallel softmax cross-entropy, in place.

    Forward: ``cos = normalize(E) @ W.T / |W|`` — the centres are divided by their norms
    inside the product, so no normalised copy of ``W`` exists — then ``cos`` (B, C_local)
    is overwritten with the logits and the probabilities; in backward it becomes the
    gradient. Besides that one buffer only the (C_local, D) weight gradient is allocated,
    which the optimizer needs anyway:

        dL/dW_j = G_j - (W_j . G_j) W_j / |W_j|^2,   G_j = sum_b g_bj e_b / |W_j|

    with g = dL/dcos and e_b the normalised embeddings. The target logit's derivative
    ``s * dphi/dcos`` is computed on the (B,) target cosines alone.
    """

    @staticmethod
    def forward(
        ctx, embeddings: torch.Tensor, weight: torch.Tensor, local_labels: torch.Tensor, margin: CombinedMarginLoss
    ) -> torch.Tensor:
        batch = embeddings.shape[0]
        embedding_norm = embeddings.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)
        unit = embeddings / embedding_norm
        weight_norm = weight.norm(dim=1).clamp_min(_NORM_EPS)
        cos = torch.mm(unit, weight.t()).div_(weight_norm).clamp_(-1.0, 1.0)

        on_shard = local_labels >= 0
        column = torch.where(on_shard, local_labels, torch.zeros_like(local_labels)).unsqueeze(1)
        target_cos = cos.gather(1, column).squeeze(1)
        with torch.enable_grad():
            leaf = target_cos.detach().requires_grad_(True)
            phi = margin.phi(leaf)
            slope = torch.ones_like(leaf) if margin.detach_margin else torch.autograd.grad(phi.sum(), leaf)[0]
        phi = phi.detach().to(cos.dtype)
        logits = cos.mul_(margin.s)
        logits.scatter_(1, column, (margin.s * torch.where(on_shard, phi, target_cos)).unsqueeze(1))

        row_max = logits.max(dim=1, keepdim=True).values
        if _distributed():
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        logits.sub_(row_max)
        target = torch.where(on_shard, logits.gather(1, column).squeeze(1), torch.zeros_like(target_cos))
        probs = logits.exp_()
        sum_exp = probs.sum(dim=1)
        if _distributed():
            packed = torch.cat([sum_exp, target])  # one all-reduce for both sums
            dist.all_reduce(packed)
            sum_exp, target = packed[:batch], packed[batch:]
        probs.div_(sum_exp.unsqueeze(1))
        ctx.save_for_backward(probs, column, on_shard, slope.to(probs.dtype), unit, embedding_norm, weight, weight_norm)
        ctx.scale = margin.s
        return (sum_exp.log() - target).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        probs, column, on_shard, slope, unit, embedding_norm, weight, weight_norm = ctx.saved_tensors
        grad = probs  # reused in place: d loss / d logit = (p - onehot) / B
        picked = grad.gather(1, column).squeeze(1)
        picked = torch.where(on_shard, (picked - 1.0) * slope, picked)  # target: times dphi/dcos
        grad.scatter_(1, column, picked.unsqueeze(1))
        grad.mul_(grad_loss * ctx.scale / probs.shape[0])  # now dL/dcos
        grad.div_(weight_norm)  # cos = unit . W_j / |W_j|
        grad_unit = torch.mm(grad, weight)
        grad_weight = torch.mm(grad.t(), unit)  # G
        radial = torch.einsum("cd,cd->c", weight, grad_weight) / weight_norm.square()
        grad_weight.addcmul_(weight, radial.unsqueeze(1), value=-1.0)
        radial_unit = (grad_unit * unit).sum(dim=1, keepdim=True)
        grad_embeddings = (grad_unit - radial_unit * unit) / embedding_norm
        return grad_embeddings, grad_weight, None, None


class PartialFC(nn.Module):
    """Sharded class centres + margin loss + distributed softmax cross-entropy.

    Args:
        margin_loss: the margin (scale ``s`` and target transform ``phi``), a
            :class:`facevib.losses.CombinedMarginLoss`.
        embedding_dim: size of the backbone's embedding.
        num_classes: total number of identities (over all ranks).
        sample_rate: fraction of this rank's centres used per step; all positive centres
            of the global batch are always kept, random negatives fill the rest.
        seed: seed of the initial centres (:func:`init_rows`).
        device: where the shard lives.

    The module owns its state: :meth:`sharded_state_dict` exposes its shard of the weight
    and of the optimizer state for ``torch.distributed.checkpoint``, which saves and
    reloads it at any world size.
    """

    def __init__(
        self,
        margin_loss: CombinedMarginLoss,
        embedding_dim: int,
        num_classes: int,
        sample_rate: float = 1.0,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: must be >= 1")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate}: must be in (0, 1]")
        self.rank, self.world_size = _world()
        last_start = shard_range(num_classes, self.world_size - 1, self.world_size)[0]
        if last_start >= num_classes:
            per_rank = -(-num_classes // self.world_size)
            raise ValueError(
                f"num_classes={num_classes} over {self.world_size} ranks leaves the last rank without classes "
                f"({per_rank} per rank, as torch.chunk splits them); use fewer ranks"
            )
        self.margin_loss = margin_loss
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.class_start, self.class_stop = shard_range(num_classes, self.rank, self.world_size)
        self.num_local = self.class_stop - self.class_start
        self.num_sample = max(1, int(round(sample_rate * self.num_local)))
        self.weight = nn.Parameter(torch.empty(self.num_local, embedding_dim, device=device))
        # Local indices of the centres used by the last training step (sampling only).
        self.last_sample: torch.Tensor | None = None
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int = 0) -> None:
        """N(0, 0.01) as arcface_torch, row by row a function of ``seed`` alone, so the
        centres do not depend on the world size or the device; only this shard (plus one
        block) is ever allocated (see :func:`init_rows`)."""
        init_rows(self.weight.data, self.class_start, seed)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, shard=[{self.class_start}, {self.class_stop}), "
            f"embedding_dim={self.embedding_dim}, sample_rate={self.sample_rate}"
        )

    # ------------------------------------------------------------------ forward

    def _label_poison(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Labels in [0, num_classes): an exact check on CPU; elsewhere a 0-dim tensor that is
        NaN when a label is outside, added to the loss, so the trainer's on-device
        finiteness check stops the step without a host synchronisation here (torch has no
        public asynchronous assert). The trainer validates the dataset's labels up front."""
        bad = (labels < 0) | (labels >= self.num_classes)
        if labels.device.type == "cpu":
            if bool(bad.any()):
                raise ValueError(f"label {labels[bad][0].item()} is outside [0, {self.num_classes}) (check the labels)")
            return None
        return torch.where(bad.any(), torch.nan, 0.0)

    def _sample(
        self, local_labels: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the centres for this step; return (centre indices, labels remapped to them).

        Random scores, positives forced to the top, keep the best ``k``. ``k`` is
        ``num_sample``, raised to the global batch size when that is larger (and the shard
        allows), so every positive fits without counting them on the host.
        """
        in_shard = local_labels >= 0
        k = min(self.num_local, max(self.num_sample, local_labels.numel()))
        scores = torch.rand(self.num_local + 1, generator=generator, device="cpu").to(local_labels.device)
        # Off-shard rows write into the extra last slot, which is dropped.
        slot = torch.where(in_shard, local_labels, torch.full_like(local_labels, self.num_local))
        scores.scatter_(0, slot, torch.full_like(slot, 2, dtype=scores.dtype))
        index = torch.topk(scores[: self.num_local], k=k).indices.sort().values
        remapped = torch.where(in_shard, torch.searchsorted(index, local_labels.clamp(min=0)), local_labels)
        return index, remapped

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean margin-softmax cross-entropy over the global batch (same value on all ranks).

        Computed in float32 with autocast disabled: the margin acts on cosines near 1,
        where bfloat16's 8 bits of mantissa would move theta by several degrees.

        Args:
            embeddings: (B, D) this rank's embeddings (B equal on every rank).
            labels: (B,) global class ids in [0, num_classes).
            generator: CPU generator for negative sampling (only used when sample_rate < 1).
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings of shape {tuple(embeddings.shape)}: expected (B, {self.embedding_dim})")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match {embeddings.shape[0]} embeddings")
        with torch.autocast(embeddings.device.type, enabled=False):
            all_embeddings = all_gather_with_grad(embeddings.float())
            all_labels = all_gather_with_grad(labels.long())  # integers: nothing flows back
            poison = self._label_poison(all_labels)
            local_labels = all_labels - self.class_start
            local_labels = torch.where(
                (local_labels >= 0) & (local_labels < self.num_local), local_labels, torch.full_like(local_labels, -1)
            )
            weight = self.weight
            self.last_sample = None
            if self.training and self.num_sample < self.num_local:
                index, local_labels = self._sample(local_labels, generator)
                self.last_sample = index
                weight = weight[index]
            loss = _CosineMarginSoftmaxCrossEntropy.apply(all_embeddings, weight, local_labels, self.margin_loss)
            return loss if poison is None else loss + poison

    # ------------------------------------------------------------------ state

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """The optimizer's per-parameter state of this shard (e.g. SGD ``momentum_buffer``)."""
        return optimizer.state[self.weight]  # a defaultdict: created empty when missing

    def sharded_state_dict(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        saved: dict[str, tuple[torch.Size, torch.dtype]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Live, checkpointable views of this shard's state, for ``torch.distributed.checkpoint``.

        ``weight`` and every optimizer tensor shaped like it (``optimizer.<name>``, e.g. SGD's
        ``momentum_buffer``) are views over the global (num_classes, D) matrix
        (:func:`facevib.row_shards.checkpoint_view`: DTensors placed ``Shard(0)``); other optimizer tensors (AdamW's ``step``) are replicated
        plain tensors. The views share memory with the module and the optimizer, so
        ``dcp.load`` into this dict restores the state in place.

        Args:
            optimizer: include its state for :attr:`weight`.
            saved: for loading — global shape and dtype of each entry of the checkpoint;
                optimizer entries the live optimizer lacks (a fresh optimizer has none)
                are created first, as zeros of this shard's size.
        """
        state: dict[str, torch.Tensor] = {"weight": checkpoint_view(self.weight.data, self.num_classes)}
        if optimizer is None:
            return state
        live = optimizer.state[self.weight]
        full = torch.Size([self.num_classes, self.embedding_dim])
        for key, (shape, dtype) in (saved or {}).items():
            name = key.removeprefix("optimizer.")
            if key.startswith("optimizer.") and name not in live:
                local = self.weight.shape if shape == full else shape
                live[name] = torch.zeros(local, dtype=dtype, device=self.weight.device)
        for name, value in live.items():
            if not torch.is_tensor(value):
                raise ValueError(f"Partial FC optimizer state {name!r} is a {type(value).__name__}, not a tensor")
            if value.shape == self.weight.shape and value.dim() == 2:
                state[f"optimizer.{name}"] = checkpoint_view(value, self.num_classes)
            else:
                state[f"optimizer.{name}"] = value
        return state
