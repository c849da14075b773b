"""The quality benchmark end to end (``benchmarks/quality.py --tiny``) and the nuisance renderer it uses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facevib.quality.served import load_quality
from facevib.synth.nuisance import NUISANCE_LEVELS, render_aligned

ROOT = Path(__file__).resolve().parents[1]


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_forced_nuisances_change_the_photo_in_their_direction():
    clean = render_aligned(0, 3, 0, "clean", 0)
    assert clean.shape == (112, 112, 3) and clean.dtype == np.uint8
    # The same photo number shares its scene: only the nuisance differs.
    blurred = [render_aligned(0, 3, 0, "blur", level) for level in (1, 2, 3)]
    sharpness = [_sharpness(clean)] + [_sharpness(image) for image in blurred]
    assert sharpness == sorted(sharpness, reverse=True), sharpness
    noisy = render_aligned(0, 3, 0, "noise", 3)
    assert _sharpness(noisy) > 4 * _sharpness(clean)  # Laplacian variance grows with sensor noise
    for name, levels in NUISANCE_LEVELS.items():
        for level in range(1, len(levels) + 1):
            assert np.abs(render_aligned(0, 3, 0, name, level).astype(int) - clean).mean() > 1.0, (name, level)
    with pytest.raises(ValueError, match="level must be 1..3"):
        render_aligned(0, 3, 0, "blur", 4)
    with pytest.raises(ValueError, match="unknown nuisance"):
        render_aligned(0, 3, 0, "fog", 1)


def test_tiny_benchmark_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "quality.json"
    assert module.main(["--tiny", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["candidates"]) == {"random", "uncertainty", "beta_sigma", "norm", "pfe", "cr_fiqa"}
    for result in report["candidates"].values():
        assert len(result["curve"]) == len(report["grid"]) == 51
        assert result["curve"][0] == pytest.approx(report["fnmr_full"])  # nothing discarded at 0
        assert 0.0 <= result["area"] <= 0.2 and result["area_se"] >= 0.0
    assert report["winner"] is None or report["winner"] in report["candidates"]
    assert report["test"]["impostor_pairs"] * report["fmr"] >= 1
    _, definition = load_quality(report["heads_file"], "cr_fiqa", 128)
    assert definition["name"] == "cr_fiqa" and len(definition["quantiles"]) == 101
