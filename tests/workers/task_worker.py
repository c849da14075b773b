"""One training-task step (backbone + Partial FC + KL + an auxiliary loss) on a fixed global batch.

Launched as a plain process (one rank, the whole batch) and under torchrun with 2 gloo ranks
(half the batch each); tests/test_task_ranks.py compares what rank 0 saves. The task runs in
eval mode: BatchNorm uses its running statistics and the VIB cells return their mean, so
nothing depends on how the batch is split or on per-rank noise, while the KL (and its
gradient through both branches) is still computed.

    python tests/workers/task_worker.py OUT.pt
    torchrun --standalone --nproc_per_node=2 tests/workers/task_worker.py OUT.pt
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from facevib.distributed import gather_rows, init_distributed, shutdown_distributed
from facevib.engine.task import FaceRecognitionTask, TaskBatch
from facevib.losses import CombinedMarginLoss
from facevib.models import create_model
from facevib.partial_fc import PartialFC

GLOBAL_BATCH, NUM_CLASSES = 8, 7  # 7 classes: uneven Partial FC shards on 2 ranks
TINY = {"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "embedding_dim": 16}


class EmbeddingNormPenalty(nn.Module):
    """An auxiliary loss over this rank's samples: the mean squared embedding norm."""

    def forward(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        norms = batch.embeddings.square().sum(dim=1)
        return norms.mean(), {"mean_norm": norms.sqrt().mean()}


def main(out_path: str) -> None:
    env = init_distributed("cpu")
    data = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, 3, 112, 112, generator=data)
    labels = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=data)
    torch.manual_seed(1)
    backbone = create_model("cellvib_r18", **TINY)
    pfc = PartialFC(
        CombinedMarginLoss(s=16.0, m2=0.5),
        TINY["embedding_dim"],
        NUM_CLASSES,
        seed=2,
    )
    task = FaceRecognitionTask(backbone, pfc, env, aux_losses={"norm": EmbeddingNormPenalty()}).eval()

    per_rank = GLOBAL_BATCH // env.world_size
    mine = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    loss, metrics = task(images[mine], labels[mine])
    loss.backward()
    weight_grad = gather_rows(pfc.weight.grad, NUM_CLASSES)
    if env.is_main:
        torch.save(
            {
                "metrics": {name: value.detach().clone() for name, value in metrics.items()},
                "pfc_weight_grad": weight_grad,
                "backbone_grads": {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None},
            },
            out_path,
        )
    del task, loss, metrics  # release DDP and the graph while the process group exists (see partial_fc_worker.py)
    env.barrier()
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
