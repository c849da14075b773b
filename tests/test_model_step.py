"""benchmarks/model_step.py: the saved-bytes target of the VIB cell, and the benchmark end to end.

Bytes saved for backward depend only on shapes and dtypes (not on the CPU or its
threads), so the issue's target, <= 1.40x the baseline for r50 at batch 8 and for the
demo's narrow r18 at batch 32, is asserted here; step times are not (tests check
behaviour, not speed).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(script: str = "model_step"):
    spec = importlib.util.spec_from_file_location(f"{script}_benchmark", ROOT / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("shape", "batch"), [("r50", 8), ("demo_r18", 32)])
def test_cellvib_saves_at_most_1_4x_the_baseline_bytes_for_backward(shape, batch):
    bench = _benchmark()
    depth, overrides = bench.SHAPES.get(shape, (shape, {}))
    torch.manual_seed(0)
    images = torch.rand(batch, 3, 112, 112) * 2 - 1
    saved = {}
    for variant in ("baseline", "cellvib_composed", "cellvib"):
        model = bench.create_model(bench.VARIANTS[variant] + depth, **overrides)
        model = bench._PREPARE.get(variant, lambda m: m)(model).train()
        saved[variant] = bench.saved_activation_bytes(bench.make_step(model, images, torch.float32), model)
    assert saved["cellvib"] <= 1.40 * saved["baseline"], saved
    # The composed autograd ops keep about five fp32 activation-sized tensors per cell.
    assert saved["cellvib_composed"] >= 1.6 * saved["baseline"], saved


def test_benchmark_times_and_profiles_every_variant(tmp_path):
    bench = _benchmark()
    out = tmp_path / "model_step.json"
    variants = "cellvib_composed cellvib_separate cellvib_merged cellvib cellvib_compiled_sample deepvib".split()
    argv = ["--models", "demo_r18:2", "--variants", *variants, "--steps", "1", "--warmup", "0"]
    bench.main([*argv, "--threads", "1", "--device", "cpu", "--profile", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [row["variant"] for row in rows] == ["baseline", *variants]
    for row in rows:
        assert row["median_ms"] > 0 and row["saved_bytes"] > 0
        split = row["profile"]
        assert split["conv_ms"] > 0 and split["other_ms"] > 0
        # One thread: op self times are disjoint slices of the step's wall time.
        assert 0 <= split["outside_ms"] < split["wall_ms"]
    baseline = rows[0]
    assert baseline["profile"]["conv_ms_ratio_to_baseline"] == 1.0
    # A sigma branch adds convolutions: more parameters than the baseline, fewer than two.
    for row in rows[1:6]:
        assert baseline["params_m"] < row["params_m"] < 2 * baseline["params_m"]
    # The per-op split sees the cells' own ops: the eager noise draw is absent from the baseline.
    assert "aten::normal_" not in baseline["profile"]["op_ms"]
    for row in rows[1:5]:
        assert row["profile"]["op_ms"]["aten::normal_"] > 0, row["variant"]


def test_profile_refuses_cuda():
    with pytest.raises(SystemExit):
        _benchmark().parse_args(["--profile", "1", "--device", "cuda"])


def test_cell_blocks_benchmark_times_every_stage_and_names_the_rule(tmp_path):
    bench = _benchmark("cell_blocks")
    out = tmp_path / "cell_blocks.json"
    bench.main(["--models", "demo_r18:2", "--rounds", "1", "--threads", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [row["stage"] for row in rows] == [1, 2, 3, 4]
    assert [row["input"] for row in rows] == [[2, 16, 56, 56], [2, 32, 28, 28], [2, 64, 14, 14], [2, 128, 7, 7]]
    # 2 x 56^2 = 6272 activation values per input channel against 4 x 9 x (16 + 4) = 720;
    # 2 x 7^2 = 98 against 4 x 9 x (128 + 32).
    assert rows[0]["rule"] == "merge" and rows[3]["rule"] == "separate"
    assert all(row["plain_ms"] > 0 and row["separate_ratio"] > 0 and row["merged_ratio"] > 0 for row in rows)
