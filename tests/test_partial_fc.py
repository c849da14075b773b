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
from facevib.partial_fc import INIT_STD, PartialFC, init_rows

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


@pytest.mark.parametrize(("num_classes", "dim"), [(11, 8), (50, 4), (37, 3), (4099, 16), (5, 2), (9000, 1)])
def test_shard_init_equals_slicing_the_full_draw_at_any_world_size(num_classes, dim):
    full = torch.empty(num_classes, dim).normal_(0.0, INIT_STD, generator=torch.Generator().manual_seed(7))
    for world in (1, 2, 3, 4):
        for rank in range(world):
            start, stop = shard_range(num_classes, rank, world)
            rows = init_rows(torch.empty(stop - start, dim), start, num_classes, torch.Generator().manual_seed(7))
            torch.testing.assert_close(rows, full[start:stop], rtol=0, atol=0, msg=f"rank {rank}/{world}")


@pytest.mark.parametrize("detach_margin", [False, True])
@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 3.0, 0.0)])
def test_in_place_margin_cross_entropy_equals_the_autograd_reference(m1, m2, m3, detach_margin):
    """Loss and gradients against margin_logits + F.cross_entropy differentiated by autograd
    (m2=3.0 puts most targets in the theta + m > pi fallback)."""
    torch.manual_seed(0)
    margin = CombinedMarginLoss(s=32.0, m1=m1, m2=m2, m3=m3, detach_margin=detach_margin)
    pfc = PartialFC(margin, embedding_dim=8, num_classes=17, generator=torch.Generator().manual_seed(1))
    embeddings = torch.randn(10, 8, requires_grad=True)
    labels = torch.randint(0, 17, (10,))
    loss = pfc(embeddings, labels)
    loss.backward()

    ref_embeddings = embeddings.detach().clone().requires_grad_(True)
    ref_weight = pfc.weight.detach().clone().requires_grad_(True)
    cos = (F.normalize(ref_embeddings) @ F.normalize(ref_weight).T).clamp(-1, 1)
    expected = F.cross_entropy(margin(cos, labels), labels)
    expected.backward()
    torch.testing.assert_close(loss.detach(), expected.detach())
    torch.testing.assert_close(embeddings.grad, ref_embeddings.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pfc.weight.grad, ref_weight.grad, rtol=1e-4, atol=1e-6)


def test_the_loss_keeps_one_logits_buffer_and_no_copy_of_the_centres():
    """Saved for backward: one (B, C) float buffer (the in-place probabilities) and the
    centres themselves (no normalised copy); the autograd reference of the same loss
    saves several (B, C) tensors and a normalised (C, D) copy."""

    def saved(fn) -> tuple[int, int]:
        logits, centre_copies = set(), set()

        def pack(tensor):
            ptr = tensor.untyped_storage().data_ptr()
            if tensor.shape == (64, 5000):
                logits.add(ptr)
            elif tensor.shape == (5000, 16) and ptr != pfc.weight.untyped_storage().data_ptr():
                centre_copies.add(ptr)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return len(logits), len(centre_copies)

    torch.manual_seed(0)
    margin = CombinedMarginLoss(s=64.0, m2=0.5)
    pfc = PartialFC(margin, embedding_dim=16, num_classes=5000)
    embeddings = torch.randn(64, 16, requires_grad=True)
    labels = torch.randint(0, 5000, (64,))

    def reference():
        cos = (F.normalize(embeddings) @ F.normalize(pfc.weight).T).clamp(-1, 1)
        return F.cross_entropy(margin(cos, labels), labels)

    assert saved(lambda: pfc(embeddings, labels)) == (1, 0)
    many_logits, copies = saved(reference)
    assert many_logits >= 3 and copies == 1


def test_sharded_state_dict_round_trips_through_dcp_in_one_process(tmp_path):
    from facevib.engine.checkpoint import SHARDED_DIR, load_sharded, save_checkpoint, sharded_entries

    pfc = PartialFC(CombinedMarginLoss(), embedding_dim=4, num_classes=9, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([pfc.weight], lr=0.1, momentum=0.9)
    pfc(torch.randn(3, 4), torch.tensor([0, 4, 8])).backward()
    optimizer.step()
    path = save_checkpoint({"format": "facevib"}, pfc.sharded_state_dict(optimizer), tmp_path, step=1, keep=1)
    assert (path / SHARDED_DIR / ".metadata").is_file()
    assert sharded_entries(path) == {
        "weight": (torch.Size([9, 4]), torch.float32),
        "optimizer.momentum_buffer": (torch.Size([9, 4]), torch.float32),
    }
    fresh = PartialFC(CombinedMarginLoss(), embedding_dim=4, num_classes=9)
    fresh_optimizer = torch.optim.SGD([fresh.weight], lr=0.1, momentum=0.9)
    load_sharded(path, fresh.sharded_state_dict(fresh_optimizer, sharded_entries(path)))
    torch.testing.assert_close(fresh.weight, pfc.weight, rtol=0, atol=0)
    momentum = fresh.optimizer_state(fresh_optimizer)["momentum_buffer"]
    torch.testing.assert_close(momentum, optimizer.state[pfc.weight]["momentum_buffer"], rtol=0, atol=0)


@pytest.mark.slow
def test_two_gloo_ranks_with_sampling_equal_one_fc_over_the_same_centres(tmp_path, run_torchrun):
    """sample_rate 0.5 on 2 ranks: each rank samples its own centres; the result equals an
    ordinary softmax over the union of the sampled centres, computed here in one process."""
    out = tmp_path / "sampled.pt"
    run_torchrun(2, WORKER, str(out), "0.5")
    got = torch.load(out)
    sampled = got["sampled_classes"]
    # 40 classes, 20 per rank; 10 at rate 0.5, raised to the global batch of 12 per rank.
    assert len(sampled) == 24
    positives = set(got["labels"].tolist())
    assert positives <= set(sampled.tolist())

    torch.manual_seed(1)
    backbone = torch.nn.Linear(6, 8)
    inputs, labels = got["inputs"], got["labels"]
    weight = torch.empty(40, 8).normal_(0.0, INIT_STD, generator=torch.Generator().manual_seed(2))
    weight.requires_grad_(True)
    cos = (F.normalize(backbone(inputs)) @ F.normalize(weight[sampled]).T).clamp(-1, 1)
    target = torch.searchsorted(sampled, labels)
    expected = F.cross_entropy(CombinedMarginLoss(s=16.0, m2=0.5)(cos, target), target)
    expected.backward()
    # The fused backward sums in another order than autograd's: float32 rounding only.
    torch.testing.assert_close(got["loss"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["weight_grad"], weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["backbone_weight_grad"], backbone.weight.grad, rtol=1e-4, atol=1e-5)


def _sgd_run(fold: bool, sample_rate: float, steps: int = 3, skip_step: int | None = None):
    """Train a Partial FC and a linear backbone with SGD (momentum, weight decay, fused as in
    training); returns the centres, the momentum and the backbone weight."""
    from facevib.config import OptimConfig
    from facevib.engine.optim import build_optimizer

    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, 8)
    pfc = PartialFC(CombinedMarginLoss(s=16.0, m2=0.5), 8, 300, sample_rate, generator=torch.Generator().manual_seed(2))
    optim = OptimConfig(name="sgd", momentum=0.9, weight_decay=5e-4)
    optimizer = build_optimizer(optim, {"backbone": backbone, "partial_fc": pfc}, lr=0.1)
    if fold:
        pfc.fold_sgd_updates(optimizer)
    data = torch.Generator().manual_seed(3)
    for step in range(steps):
        inputs, labels = torch.randn(12, 6, generator=data), torch.randint(0, 300, (12,), generator=data)
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * (step + 1)  # a changing lr: the update must read the group's
        optimizer.zero_grad(set_to_none=True)
        pfc(backbone(inputs), labels, generator=torch.Generator().manual_seed(10 + step)).backward()
        if fold:
            assert pfc.weight.grad is None
        if step != skip_step:
            optimizer.step()
    return pfc.weight.detach().clone(), optimizer.state[pfc.weight]["momentum_buffer"].clone(), backbone.weight.detach()


@pytest.mark.parametrize("sample_rate", [1.0, 0.1])
def test_folded_sgd_update_equals_the_dense_gradient_and_torch_sgd(sample_rate):
    dense = _sgd_run(fold=False, sample_rate=sample_rate)
    folded = _sgd_run(fold=True, sample_rate=sample_rate)
    for got, expected in zip(folded, dense, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # The update moved every centre (weight decay reaches rows outside the sample too).
    initial = PartialFC(CombinedMarginLoss(), 8, 300, generator=torch.Generator().manual_seed(2)).weight.detach()
    assert ((folded[0] - initial).abs().sum(dim=1) > 0).all()


def test_folded_sgd_update_is_dropped_with_a_skipped_step():
    dense = _sgd_run(fold=False, sample_rate=1.0, skip_step=1)
    folded = _sgd_run(fold=True, sample_rate=1.0, skip_step=1)
    for got, expected in zip(folded, dense, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_folded_update_against_hand_written_sgd_in_blocks(monkeypatch):
    """Blocks of 3 rows (not dividing 10): buf = 0.9 buf + g + wd w, w -= lr buf, by hand."""
    import facevib.partial_fc as partial_fc

    monkeypatch.setattr(partial_fc, "_FOLD_BLOCK_ELEMENTS", 3 * 4)
    pfc = PartialFC(CombinedMarginLoss(s=8.0, m2=0.0), 4, 10, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([pfc.weight], lr=0.5, momentum=0.9, weight_decay=0.01)
    pfc.fold_sgd_updates(optimizer)
    embeddings, labels = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 3, 3, 7, 9])
    weight, buf = pfc.weight.detach().clone(), torch.zeros(10, 4)
    for _ in range(2):
        reference = weight.clone().requires_grad_(True)
        cos = F.normalize(embeddings) @ F.normalize(reference).T
        F.cross_entropy(8.0 * cos, labels).backward()
        buf = 0.9 * buf + reference.grad + 0.01 * weight
        weight = weight - 0.5 * buf
        pfc(embeddings, labels).backward()
        optimizer.step()
    torch.testing.assert_close(pfc.weight.detach(), weight, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(optimizer.state[pfc.weight]["momentum_buffer"], buf, rtol=1e-5, atol=1e-7)


def test_fold_rejects_optimizers_it_cannot_reproduce():
    pfc = PartialFC(CombinedMarginLoss(), 4, 10)
    with pytest.raises(ValueError, match="not torch.optim.SGD"):
        pfc.fold_sgd_updates(torch.optim.AdamW([pfc.weight]))
    with pytest.raises(ValueError, match="nesterov=True"):
        pfc.fold_sgd_updates(torch.optim.SGD([pfc.weight], lr=0.1, momentum=0.9, nesterov=True))
    with pytest.raises(ValueError, match="momentum=0"):
        pfc.fold_sgd_updates(torch.optim.SGD([pfc.weight], lr=0.1))
    with pytest.raises(ValueError, match="does not hold"):
        pfc.fold_sgd_updates(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9))
