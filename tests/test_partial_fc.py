"""Partial FC: sharding, sampling, and equivalence of W gloo ranks with one full FC."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facevib.distributed import shard_range
from facevib.losses import CombinedMarginLoss
from facevib.partial_fc import PartialFC

ROOT = Path(__file__).resolve().parents[1]
WORKER = "tests/workers/partial_fc_worker.py"


@pytest.mark.parametrize(("num_items", "world"), [(11, 2), (11, 3), (4, 4), (93431, 8)])
def test_shards_are_contiguous_and_balanced(num_items, world):
    ranges = [shard_range(num_items, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_items
    assert all(a[1] == b[0] for a, b in pairwise(ranges))
    sizes = [stop - start for start, stop in ranges]
    assert sizes == [num_items // world + (r < num_items % world) for r in range(world)]


def test_single_process_without_margin_is_scaled_cosine_cross_entropy():
    torch.manual_seed(0)
    pfc = PartialFC(CombinedMarginLoss(s=30.0, m1=1.0, m2=0.0, m3=0.0), embedding_dim=8, num_classes=13)
    embeddings = torch.randn(9, 8)
    labels = torch.randint(0, 13, (9,))
    expected = F.cross_entropy(30.0 * F.normalize(embeddings) @ F.normalize(pfc.weight).T, labels)
    torch.testing.assert_close(pfc(embeddings, labels), expected)


def test_sampling_keeps_positives_and_equals_a_softmax_over_the_sample():
    torch.manual_seed(0)
    pfc = PartialFC(CombinedMarginLoss(s=20.0, m2=0.0), embedding_dim=4, num_classes=50, sample_rate=0.2)
    embeddings = torch.randn(6, 4)
    labels = torch.tensor([3, 3, 17, 41, 8, 49])
    loss = pfc(embeddings, labels, generator=torch.Generator().manual_seed(5))
    loss.backward()
    touched = (pfc.weight.grad.abs().sum(dim=1) > 0).nonzero().flatten()
    assert len(touched) == pfc.num_sample == 10
    assert set(labels.tolist()) <= set(touched.tolist())
    # Reference: an ordinary softmax restricted to the sampled centres.
    sub = pfc.weight.detach()[touched]
    target = torch.searchsorted(touched, labels)
    expected = F.cross_entropy(20.0 * F.normalize(embeddings) @ F.normalize(sub).T, target)
    torch.testing.assert_close(loss.detach(), expected)
    # Same generator seed -> same sample; eval mode uses every centre.
    again = pfc(embeddings, labels, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(again.detach(), loss.detach())
    pfc.eval()
    full = F.cross_entropy(20.0 * F.normalize(embeddings) @ F.normalize(pfc.weight.detach()).T, labels)
    torch.testing.assert_close(pfc(embeddings, labels).detach(), full)


def test_bad_inputs_are_named():
    pfc = PartialFC(CombinedMarginLoss(), embedding_dim=4, num_classes=5)
    with pytest.raises(ValueError, match="label 7 is outside"):
        pfc(torch.randn(2, 4), torch.tensor([1, 7]))
    with pytest.raises(ValueError, match=r"expected \(B, 4\)"):
        pfc(torch.randn(2, 3), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(CombinedMarginLoss(), embedding_dim=4, num_classes=5, sample_rate=0.0)


@pytest.mark.slow
def test_two_and_three_gloo_ranks_equal_one_full_fc(tmp_path, run_torchrun):
    reference = tmp_path / "one.pt"
    subprocess.run([sys.executable, WORKER, str(reference)], check=True, cwd=ROOT, timeout=120)
    single = torch.load(reference)
    for world in (2, 3):
        out = tmp_path / f"world{world}.pt"
        run_torchrun(world, WORKER, str(out))
        sharded = torch.load(out)
        for key, value in single.items():
            torch.testing.assert_close(sharded[key], value, rtol=1e-5, atol=1e-6, msg=f"{key}, {world} ranks")
