"""Resume a Trainer from a checkpoint without training; rank 0 saves the reassembled
Partial FC weight and momentum, and the backbone state, as loaded.

    python tests/workers/checkpoint_worker.py OUT.pt CHECKPOINT --set section.field=value ...
    torchrun --standalone --nproc_per_node=3 tests/workers/checkpoint_worker.py OUT.pt CHECKPOINT ...

tests/test_train.py compares what each world size loaded with what was saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from facevib.config import apply_overrides, load_config, validate
from facevib.distributed import gather_rows, init_distributed, shutdown_distributed
from facevib.engine import Trainer

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic_r18_cellvib.py"


def main(out_path: str, checkpoint: str, overrides: list[str]) -> None:
    cfg = validate(apply_overrides(load_config(CONFIG), overrides))
    env = init_distributed("cpu")
    trainer = Trainer(cfg, env, resume=checkpoint)
    pfc = trainer.pfc
    weight = gather_rows(pfc.weight.data, pfc.num_classes)
    momentum = gather_rows(pfc.optimizer_state(trainer.optimizer)["momentum_buffer"], pfc.num_classes)
    if env.is_main:
        torch.save(
            {"weight": weight, "momentum": momentum, "step": trainer.step, "world_size": env.world_size}, out_path
        )
    # Release DDP (its reducer) while the process group still exists: destroying it after
    # the group was torn down sometimes hung a gloo rank on exit.
    del trainer, pfc
    env.barrier()
    shutdown_distributed()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], [a for a in args[2:] if a != "--set"])
