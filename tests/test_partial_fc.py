"""Partial FC: sharding, sampling, and equivalence of W gloo ranks with one full FC."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facevib.distributed import shard_range
from facevib.losses import CombinedMarginLoss
from facevib.partial_fc import INIT_BLOCK_ROWS, INIT_STD, PartialFC, init_rows

ROOT = Path(__file__).resolve().parents[1]
WORKER = "tests/workers/partial_fc_worker.py"


@pytest.mark.parametrize(("num_items", "world"), [(11, 2), (11, 3), (4, 4), (10, 4), (93431, 8)])
def test_shards_are_laid_out_as_torch_chunk_splits_rows(num_items, world):
    """The layout of DTensor's Shard(0), which DCP reshards by itself."""
    chunks = torch.arange(num_items).chunk(world)
    ranges = [shard_range(num_items, r, world) for r in range(world)]
    assert [list(range(start, stop)) for start, stop in ranges[: len(chunks)]] == [c.tolist() for c in chunks]
    assert all(start == stop == num_items for start, stop in ranges[len(chunks) :])


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


def test_a_world_that_leaves_a_rank_without_classes_is_refused(monkeypatch):
    import facevib.partial_fc as partial_fc

    # 5 classes over 4 ranks split 2, 2, 1, 0 (torch.chunk): the last rank would be empty.
    monkeypatch.setattr(partial_fc, "_world", lambda: (0, 4))
    with pytest.raises(ValueError, match="num_classes=5 over 4 ranks leaves the last rank without classes"):
        PartialFC(CombinedMarginLoss(), embedding_dim=4, num_classes=5)
    monkeypatch.setattr(partial_fc, "_world", lambda: (3, 4))
    assert PartialFC(CombinedMarginLoss(), embedding_dim=4, num_classes=4).num_local == 1


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


@pytest.mark.parametrize(("num_classes", "dim"), [(11, 8), (37, 3), (4099, 16), (9000, 1)])
def test_shard_init_is_the_same_matrix_at_any_world_size(num_classes, dim):
    full = init_rows(torch.empty(num_classes, dim), 0, seed=7)
    for world in (2, 3, 4):
        for rank in range(world):
            start, stop = shard_range(num_classes, rank, world)
            rows = init_rows(torch.empty(stop - start, dim), start, seed=7)
            torch.testing.assert_close(rows, full[start:stop], rtol=0, atol=0, msg=f"rank {rank}/{world}")
    # A row depends on the seed and its index only, not on how many classes there are.
    torch.testing.assert_close(init_rows(torch.empty(5, dim), 0, seed=7), full[:5], rtol=0, atol=0)


def test_init_draws_independent_normal_rows_per_seed_and_block():
    rows = 3 * INIT_BLOCK_ROWS
    centres = init_rows(torch.empty(rows, 8), 0, seed=3).double()
    n = centres.numel()
    # N(0, 0.01): mean within 4 standard errors of 0, std within 4 standard errors of 0.01.
    assert abs(centres.mean().item()) < 4 * INIT_STD / n**0.5
    assert abs(centres.std().item() - INIT_STD) < 4 * INIT_STD / (2 * n) ** 0.5
    blocks = centres.view(3, INIT_BLOCK_ROWS, 8)
    # Blocks are not copies of one another, and another seed gives another matrix: the
    # correlation of independent draws is within 4 standard errors (1 / sqrt(n)) of 0.
    block_n = INIT_BLOCK_ROWS * 8
    assert abs(torch.corrcoef(blocks.flatten(1))[0, 1:]).max().item() < 4 / block_n**0.5
    other = init_rows(torch.empty(INIT_BLOCK_ROWS, 8), 0, seed=4).double()
    assert abs(torch.corrcoef(torch.stack([blocks[0].flatten(), other.flatten()]))[0, 1].item()) < 4 / block_n**0.5


@pytest.mark.parametrize("detach_margin", [False, True])
@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 3.0, 0.0)])
def test_in_place_margin_cross_entropy_equals_the_autograd_reference(m1, m2, m3, detach_margin):
    """Loss and gradients against margin_logits + F.cross_entropy differentiated by autograd
    (m2=3.0 puts most targets in the theta + m > pi fallback)."""
    torch.manual_seed(0)
    margin = CombinedMarginLoss(s=32.0, m1=m1, m2=m2, m3=m3, detach_margin=detach_margin)
    pfc = PartialFC(margin, embedding_dim=8, num_classes=17, seed=1)
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

    pfc = PartialFC(CombinedMarginLoss(), embedding_dim=4, num_classes=9, seed=0)
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
    weight = got["initial_weight"].clone().requires_grad_(True)
    cos = (F.normalize(backbone(inputs)) @ F.normalize(weight[sampled]).T).clamp(-1, 1)
    target = torch.searchsorted(sampled, labels)
    expected = F.cross_entropy(CombinedMarginLoss(s=16.0, m2=0.5)(cos, target), target)
    expected.backward()
    # The fused backward sums in another order than autograd's: float32 rounding only.
    torch.testing.assert_close(got["loss"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["weight_grad"], weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["backbone_weight_grad"], backbone.weight.grad, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_of_the_previous_row_block_layout_loads(tmp_path):
    """tests/fixtures/rowshard_partial_fc was written by 2 gloo ranks with the row-block
    layout used before the DTensor one (ranks of 19 and 18 rows, blocks of 5 rows), holding
    weight[i, j] = i + j / 100 and momentum[i, j] = -(10 i + j)."""
    from facevib.engine.checkpoint import load_sharded, sharded_entries

    checkpoint = tmp_path / "checkpoint_00000001"
    shutil.copytree(ROOT / "tests" / "fixtures" / "rowshard_partial_fc", checkpoint / "partial_fc")
    rows, cols = torch.arange(37.0).unsqueeze(1), torch.arange(6.0).unsqueeze(0)
    pfc = PartialFC(CombinedMarginLoss(), embedding_dim=6, num_classes=37)
    optimizer = torch.optim.SGD([pfc.weight], lr=0.1, momentum=0.9)
    load_sharded(checkpoint, pfc.sharded_state_dict(optimizer, sharded_entries(checkpoint)))
    torch.testing.assert_close(pfc.weight.data, rows + cols / 100, rtol=0, atol=0)
    torch.testing.assert_close(pfc.optimizer_state(optimizer)["momentum_buffer"], -(rows * 10 + cols), rtol=0, atol=0)


def _sgd_run(fold: bool, sample_rate: float, steps: int = 3, skip_step: int | None = None):
    """Train a Partial FC and a linear backbone with SGD (momentum, weight decay, fused as in
    training); returns the centres, the momentum and the backbone weight."""
    from facevib.config import OptimConfig
    from facevib.engine.optim import build_optimizer

    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, 8)
    pfc = PartialFC(CombinedMarginLoss(s=16.0, m2=0.5), 8, 300, sample_rate, seed=2)
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
    # The folded update sums each centre's gradient in another order than autograd's dense one:
    # float32 rounding of values near 0.03 then differs by a few ulps (5e-7 measured under
    # ATEN_CPU_CAPABILITY=default). A dropped weight decay alone moves such a centre by ~1e-5
    # over these 3 steps, well outside the bound.
    for got, expected in zip(folded, dense, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The update moved every centre (weight decay reaches rows outside the sample too).
    initial = PartialFC(CombinedMarginLoss(), 8, 300, seed=2).weight.detach()
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
    pfc = PartialFC(CombinedMarginLoss(s=8.0, m2=0.0), 4, 10, seed=0)
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
