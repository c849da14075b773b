"""benchmarks/gpu_check.py --dry-run: every check of the GPU acceptance run, tiny, on the CPU,
so the script that runs once on a GPU machine cannot rot in between."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_dry_run_runs_every_check_and_reports_them(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["failures"] == []
    train, serve = report["train"], report["serve"]

    # The gpu-marked tests were selected (and skipped: no CUDA here), none deselected by mistake.
    assert train["gpu_tests"]["counts"].get("skipped", 0) >= 1 and train["gpu_tests"]["ok"]
    # Baseline and cellVIB, compile off and on, each with a positive throughput.
    rows = [row for run in train["throughput"] for row in run["results"]]
    assert {(row["variant"], row["compile"]) for row in rows} == {
        (variant, compiled) for variant in ("baseline", "cellvib") for compiled in (False, True)
    }
    assert all(row["samples_per_s"] > 0 for row in rows)
    assert all(run["recompiles_after_warmup"] == 0 for run in train["throughput"])
    # The process group of one (gloo here, NCCL on CUDA) and a bit-exact DCP round trip.
    group = train["process_group"]
    assert group["backend"] == "gloo" and group["all_reduce_ok"] and group["dcp_round_trip_ok"]

    assert serve["onnxruntime"]["expected"] == "CPUExecutionProvider" and serve["onnxruntime"]["ok"]
    assert serve["onnxruntime"]["max_abs_diff_vs_torch"] < 1e-3
    server = serve["server"]
    assert set(server["server"]) == {"batch 32", "batch 1 (off)", "no overlap"}
    assert server["bare_ort"]["best_img_per_s"] > 0 and server["bare_ort"]["img_per_s_by_batch"]["1"] > 0
    assert all(cell["completed"] > 0 for cells in server["server"].values() for cell in cells)
    assert all(cell["live_probes"] > 0 for cells in server["server"].values() for cell in cells)
    assert server["server_runtime"]["no overlap"]["pipeline_depth"] == 1 and all(server["providers_ok"].values())
    assert set(server["overlap_speedup"]) == set(server["batching_speedup"]) == {"1", "2"}
    assert serve["embedding"]["finite"] and serve["embedding"]["img_per_s"] > 0
