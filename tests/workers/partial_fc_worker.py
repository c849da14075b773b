"""Run one Partial FC step on a fixed global batch; rank 0 saves loss and gradients.

Launched once as a plain process (a full FC on one rank) and under torchrun with several
gloo ranks; tests/test_partial_fc.py compares the saved results.

    python tests/workers/partial_fc_worker.py OUT.pt
    torchrun --standalone --nproc_per_node=2 tests/workers/partial_fc_worker.py OUT.pt [SAMPLE_RATE]

With a sample rate below 1 it also saves the global ids of the centres every rank sampled.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from facevib.distributed import gather_rows, init_distributed, shutdown_distributed, wrap_ddp
from facevib.losses import CombinedMarginLoss
from facevib.partial_fc import PartialFC

GLOBAL_BATCH, IN_DIM, EMBED_DIM, NUM_CLASSES = 12, 6, 8, 11  # 11 classes: uneven shards
SAMPLED_CLASSES = 40  # with sampling: 20 per rank on 2 ranks, 12 of them drawn per step


def main(out_path: str, sample_rate: float = 1.0) -> None:
    num_classes = NUM_CLASSES if sample_rate == 1.0 else SAMPLED_CLASSES
    env = init_distributed("cpu")
    data = torch.Generator().manual_seed(0)
    inputs = torch.randn(GLOBAL_BATCH, IN_DIM, generator=data)
    labels = torch.randint(0, num_classes, (GLOBAL_BATCH,), generator=data)
    torch.manual_seed(1)
    backbone = nn.Linear(IN_DIM, EMBED_DIM)
    pfc = PartialFC(
        CombinedMarginLoss(s=16.0, m2=0.5),
        EMBED_DIM,
        num_classes,
        sample_rate,
        seed=2,
    )
    model = wrap_ddp(backbone, env)
    initial_weight = gather_rows(pfc.weight.detach(), num_classes)

    per_rank = GLOBAL_BATCH // env.world_size
    mine = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    sampling = torch.Generator().manual_seed(10 + env.rank)
    loss = pfc(model(inputs[mine]), labels[mine], generator=sampling)
    loss.backward()
    weight_grad = gather_rows(pfc.weight.grad, num_classes)
    sampled = torch.arange(num_classes)
    if pfc.last_sample is not None:
        # Sample sizes differ per rank: mark the sampled rows in a gathered 0/1 column.
        mask = torch.zeros(pfc.num_local, 1)
        mask[pfc.last_sample] = 1.0
        sampled = gather_rows(mask, num_classes).flatten().nonzero().flatten()
    if env.is_main:
        torch.save(
            {
                "loss": loss.detach(),
                "weight_grad": weight_grad,
                "backbone_weight_grad": backbone.weight.grad,
                "backbone_bias_grad": backbone.bias.grad,
                "sampled_classes": sampled,
                "initial_weight": initial_weight,
                "inputs": inputs,
                "labels": labels,
            },
            out_path,
        )
    # Release DDP (its reducer) and the loss's graph (its all-gather nodes) while the process
    # group still exists: freed after it, gloo sometimes aborted a rank at exit.
    del model, loss
    env.barrier()  # leave together: tearing gloo down under a peer's feet can abort it
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
