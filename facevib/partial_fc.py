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
# Elements of the centres' gradient formed at once by a folded update: 64 MiB of float32,
# small beside a shard (a 2,059,906 x 512 matrix over 8 ranks is 500 MiB per rank).
_FOLD_BLOCK_ELEMENTS = 1 << 24


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
        ctx,
        embeddings: torch.Tensor,
        weight: torch.Tensor,
        local_labels: torch.Tensor,
        margin: CombinedMarginLoss,
        folded: _FoldedCentreGradient | None = None,
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
        ctx.folded = folded
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
        if ctx.folded is None:
            grad_weight = _centre_gradient(grad, unit, weight, weight_norm)
        else:  # the optimizer step forms it, row block by row block (PartialFC.fold_sgd_updates)
            ctx.folded.grad, ctx.folded.unit, ctx.folded.weight, ctx.folded.weight_norm = (
                grad,
                unit,
                weight,
                weight_norm,
            )
            grad_weight = None
        radial_unit = (grad_unit * unit).sum(dim=1, keepdim=True)
        grad_embeddings = (grad_unit - radial_unit * unit) / embedding_norm
        return grad_embeddings, grad_weight, None, None, None


def _centre_gradient(grad: torch.Tensor, unit: torch.Tensor, weight: torch.Tensor, weight_norm: torch.Tensor):
    """dL/dW for centre rows ``weight``: G - (W . G) W / |W|^2 with G = grad^T unit, where
    ``grad`` (B, rows) is dL/dcos already divided by |W| (see the class docstring)."""
    gradient = torch.mm(grad.t(), unit)  # G
    radial = torch.einsum("cd,cd->c", weight, gradient) / weight_norm.square()
    return gradient.addcmul_(weight, radial.unsqueeze(1), value=-1.0)


class _FoldedCentreGradient:
    """What the centres' gradient is made of, kept from backward to the optimizer step.

    ``grad`` (B, rows) is the loss' own logits buffer, already allocated, so keeping it
    costs nothing; the (rows, D) gradient is formed from it a block of rows at a time and
    added to the momentum buffer, and never exists whole.
    """

    def __init__(self, index: torch.Tensor | None) -> None:
        self.index = index  # the sampled rows, or None for every row of the shard
        self.grad: torch.Tensor | None = None
        self.unit: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.weight_norm: torch.Tensor | None = None


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
        # Set by fold_sgd_updates: the optimizer whose step applies the folded update, and
        # the last backward's gradient terms waiting for that step.
        self._folding_into: torch.optim.SGD | None = None
        self._fold_hook = None
        self._pending: _FoldedCentreGradient | None = None
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
        device = self.weight.device
        if generator is not None and generator.device != device:
            # Drawing on another device would need a blocking copy in the middle of the step.
            raise ValueError(
                f"Partial FC sampling: the generator is on {generator.device}, the centres on {device}; "
                "pass a generator on the centres' device"
            )
        scores = torch.rand(self.num_local + 1, generator=generator, device=device)
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
            generator: generator for negative sampling (only used when sample_rate < 1), on
                the centres' device; None: that device's global generator.
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
            index = None
            if self.training and self.num_sample < self.num_local:
                index, local_labels = self._sample(local_labels, generator)
                self.last_sample = index
            folded = None
            self._pending = None  # a step skipped after the last backward drops its update
            if self._folding_into is not None and self.training and torch.is_grad_enabled():
                folded = self._pending = _FoldedCentreGradient(index)
                # A leaf of its own whose .grad backward leaves empty: it keeps the loss
                # differentiable when nothing else is (a frozen backbone).
                weight = (weight.detach() if index is None else weight.detach()[index]).requires_grad_(True)
            elif index is not None:
                weight = weight[index]
            loss = _CosineMarginSoftmaxCrossEntropy.apply(
                all_embeddings, weight, local_labels, self.margin_loss, folded
            )
            return loss if poison is None else loss + poison

    # ------------------------------------------------------------------ folded SGD

    def fold_sgd_updates(self, optimizer: torch.optim.Optimizer) -> None:
        """Update the centres inside ``optimizer.step()`` without a (C_local, D) gradient.

        From now on backward leaves ``weight.grad`` empty and keeps the terms the centres'
        gradient is made of; a post-step hook of ``optimizer`` then does SGD's update,
        a block of rows at a time:

            buf = momentum * buf + (grad + weight_decay * w);   w -= lr * buf

        with the lr, momentum and weight decay of the parameter group holding
        :attr:`weight` and the buffer in ``optimizer.state[weight]["momentum_buffer"]``
        (so checkpoints are unchanged). Rows not sampled get zero gradient, as with the
        dense update. Memory: weight + momentum + the loss' own logits buffer; the dense
        path holds a third (C_local, D) matrix, the gradient. A step the caller skips
        (``optimizer.step()`` not called, or called with ``optimizer.found_inf`` = 1 as the
        fused kernels obey it) drops the update, as it drops ``.grad``.

        Gradient scaling (float16 ``GradScaler``) is not supported: the kept terms are
        scaled, and the scaler unscales only ``.grad``.

        Raises:
            ValueError: ``optimizer`` is not SGD with momentum > 0, dampening 0, no
                Nesterov, not maximising, or does not hold :attr:`weight`.
        """
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(f"fold_sgd_updates: {type(optimizer).__name__} is not torch.optim.SGD")
        group = self._weight_group(optimizer)
        if group["momentum"] <= 0 or group["dampening"] != 0 or group["nesterov"] or group["maximize"]:
            raise ValueError(
                "fold_sgd_updates: needs SGD with momentum > 0, dampening 0, nesterov=False, maximize=False; "
                f"got momentum={group['momentum']}, dampening={group['dampening']}, "
                f"nesterov={group['nesterov']}, maximize={group['maximize']}"
            )
        if self._fold_hook is not None:
            self._fold_hook.remove()
        self._folding_into = optimizer
        self._fold_hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: self._apply_folded_update())

    def _weight_group(self, optimizer: torch.optim.Optimizer) -> dict:
        for group in optimizer.param_groups:
            if any(param is self.weight for param in group["params"]):
                return group
        raise ValueError("fold_sgd_updates: the optimizer does not hold this Partial FC's weight")

    @torch.no_grad()
    def _apply_folded_update(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending.grad is None:  # no backward since the last step
            return
        optimizer = self._folding_into
        group = self._weight_group(optimizer)
        state = optimizer.state[self.weight]
        weight = self.weight.data
        buf = state.get("momentum_buffer")
        if buf is None:  # SGD's first step sets buf = d_p, which 0 * momentum + d_p equals
            buf = state["momentum_buffer"] = torch.zeros_like(weight)
        # A step cancelled on the device (found_inf = 1, as GradScaler hands it to the fused
        # kernels; see facevib.engine.update) multiplies by 1 and adds zeros: weight and
        # buffer stay as they were, and nothing is read on the host to decide.
        found_inf = getattr(optimizer, "found_inf", None)
        skip = torch.zeros((), dtype=torch.bool, device=weight.device) if found_inf is None else found_inf > 0
        lr, momentum, decay = (
            torch.where(skip, off, on).to(weight.dtype)  # scalars: no host-to-device copy
            for on, off in ((-group["lr"], 0.0), (group["momentum"], 1.0), (group["weight_decay"], 0.0))
        )
        # Every row: the momentum decay and the weight decay (in place, no temporary).
        buf.mul_(momentum)
        buf.addcmul_(weight, decay)
        rows = pending.grad.shape[1]
        block = max(1, _FOLD_BLOCK_ELEMENTS // self.embedding_dim)
        for lo in range(0, rows, block):
            hi = min(rows, lo + block)
            gradient = _centre_gradient(
                pending.grad[:, lo:hi], pending.unit, pending.weight[lo:hi], pending.weight_norm[lo:hi]
            )
            gradient = torch.where(skip, 0.0, gradient)  # a skipped step's gradient may be NaN
            if pending.index is None:
                buf[lo:hi].add_(gradient)
            else:
                buf.index_add_(0, pending.index[lo:hi], gradient)
        weight.addcmul_(buf, lr)

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
