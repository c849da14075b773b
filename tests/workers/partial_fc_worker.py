"""Run one Partial FC step on a fixed global batch; rank 0 saves loss and gradients.

Launched once as a plain process (a full FC on one rank) and under torchrun with several
gloo ranks; tests/test_partial_fc.py compares the saved results.

    python tests/workers/partial_fc_worker.py OUT.pt
    torchrun --standalone --nproc_per_node=2 tests/workers/partial_fc_worker.py OUT.pt
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from facevib.distributed import gather_rows, init_distributed, shutdown_distributed, wrap_ddp
from facevib.losses import CombinedMarginLoss
from facevib.partial_fc import PartialFC

GLOBAL_BATCH, IN_DIM, EMBED_DIM, NUM_CLASSES = 12, 6, 8, 11  # 11 classes: uneven shards


def main(out_path: str) -> None:
    env = init_distributed("cpu")
    data = torch.Generator().manual_seed(0)
    inputs = torch.randn(GLOBAL_BATCH, IN_DIM, generator=data)
    labels = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=data)
    torch.manual_seed(1)
    backbone = nn.Linear(IN_DIM, EMBED_DIM)
    pfc = PartialFC(CombinedMarginLoss(s=16.0, m2=0.5), EMBED_DIM, NUM_CLASSES)
    pfc.reset_parameters(torch.Generator().manual_seed(2))
    model = wrap_ddp(backbone, env)

    per_rank = GLOBAL_BATCH // env.world_size
    mine = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    loss = pfc(model(inputs[mine]), labels[mine])
    loss.backward()
    weight_grad = gather_rows(pfc.weight.grad, NUM_CLASSES)
    if env.is_main:
        torch.save(
            {
                "loss": loss.detach(),
                "weight_grad": weight_grad,
                "backbone_weight_grad": backbone.weight.grad,
                "backbone_bias_grad": backbone.bias.grad,
            },
            out_path,
        )
    env.barrier()  # leave together: tearing gloo down under a peer's feet can abort it
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
