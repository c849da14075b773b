"""The whole training task on 2 gloo ranks equals the same task on 1 rank with the whole batch.

Loss, margin loss, beta-weighted KL (total and per cell), the auxiliary loss and every
gradient (backbone, both VIB branches, Partial FC centres) must agree: the task's rank
scaling (local terms divided by the world size, DDP summing) is what makes this hold.
Tolerances are float32 summation-order noise, relative to each tensor's own scale.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = "tests/workers/task_worker.py"


def test_two_ranks_with_half_batches_equal_one_rank_with_the_whole_batch(tmp_path, run_torchrun):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, WORKER, str(one)], check=True, cwd=ROOT, timeout=300)
    run_torchrun(2, WORKER, str(two))
    single, sharded = torch.load(one), torch.load(two)

    assert (
        set(sharded["metrics"]) == set(single["metrics"]) >= {"loss", "margin_loss", "kl_loss", "kl_cells", "norm/loss"}
    )
    for name, value in single["metrics"].items():
        torch.testing.assert_close(sharded["metrics"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert single["metrics"]["kl_loss"] > 0 and single["metrics"]["norm/loss"] > 0

    torch.testing.assert_close(sharded["pfc_weight_grad"], single["pfc_weight_grad"], rtol=1e-4, atol=1e-7)
    sigma_grads = 0
    for name, grad in single["backbone_grads"].items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(sharded["backbone_grads"][name], grad, rtol=1e-4, atol=1e-5 * scale + 1e-9, msg=name)
        sigma_grads += ".sigma" in name and scale > 0
    assert sigma_grads > 0  # the KL's gradient reached the sigma branches being compared
