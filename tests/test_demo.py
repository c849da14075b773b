"""``make demo``, shortened: the Makefile's own targets (render, train cellVIB and the ArcFace
baseline under torchrun, evaluate, export with a calibrated threshold, serve over real HTTP,
report) on a tiny synthetic set and 3 training steps; plus the report's statistics and
document renderers against independent references.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from facevib.align import norm_crop
from facevib.report.document import Bullets, Code, Heading, Paragraph, Table, to_html, to_markdown
from facevib.report.stats import (
    Z95,
    fold_interval,
    paired_difference,
    pooled_correct,
    student_t95,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")

TINY_SYNTH = (
    "--identities 8 --images-per-identity 6 --lfw-identities 6 --lfw-pairs 40 --cfp-fp-identities 4 "
    "--cfp-fp-pairs 20 --agedb-30-identities 4 --agedb-30-pairs 20 --bin-images-per-identity 4 "
    "--ijb-identities 4 --ijb-templates-per-identity 3 --ijb-max-media 1 --ijb-max-frames 1 --workers 1"
)
TINY_TRAIN = (
    "--set run.device=cpu --set run.log_every=1 --set data.val_targets=[] --set data.batch_size=8 "
    "--set data.num_workers=0"
)


def _script(folder: str, name: str):
    spec = importlib.util.spec_from_file_location(f"{folder}_script_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- statistics


def _wilson_by_root_finding(successes: int, trials: int) -> tuple[float, float]:
    """The Wilson interval from its definition: the p with |x/n - p| <= z sqrt(p (1 - p) / n)."""
    grid = np.linspace(0.0, 1.0, 2_000_001)
    inside = np.abs(successes / trials - grid) <= Z95 * np.sqrt(grid * (1 - grid) / trials)
    return float(grid[inside].min()), float(grid[inside].max())


@pytest.mark.parametrize(("successes", "trials"), [(0, 20), (7, 10), (2700, 3000), (320, 320), (1, 3)])
def test_wilson_interval_equals_its_definition(successes: int, trials: int) -> None:
    low, high = wilson_interval(successes, trials)
    ref_low, ref_high = _wilson_by_root_finding(successes, trials)
    assert low == pytest.approx(ref_low, abs=2e-6) and high == pytest.approx(ref_high, abs=2e-6)


def test_wilson_interval_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(1, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_pooled_correct_counts_unequal_folds() -> None:
    rng = np.random.default_rng(0)
    pairs, folds = 23, 10  # folds of 3, 3, 3, 2, ...
    sizes = [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    correct = [int(rng.integers(0, s + 1)) for s in sizes]
    assert pooled_correct([c / s for c, s in zip(correct, sizes, strict=True)], pairs) == sum(correct)
    assert len(sizes) == folds and sum(sizes) == pairs


@pytest.mark.parametrize("df", [1, 2, 5, 9, 10, 20, 30, 120])
def test_student_t_quantiles_equal_scipy(df: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    assert student_t95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)


def test_student_t_errs_wide_between_table_rows() -> None:
    stats = pytest.importorskip("scipy.stats")
    assert student_t95(27) >= stats.t.ppf(0.975, 27) and student_t95(500) == pytest.approx(Z95)


def _expected_interval(folds: list[float], pairs: int) -> tuple[float, float, bool]:
    """(low, high, from_folds) from scipy's t interval and the Wilson definition, the wider one."""
    stats = pytest.importorskip("scipy.stats")
    mean, sem = float(np.mean(folds)), float(stats.sem(folds))
    t_low, t_high = stats.t.interval(0.95, len(folds) - 1, loc=mean, scale=sem)
    w_low, w_high = _wilson_by_root_finding(pooled_correct(folds, pairs), pairs)
    if t_high - t_low > w_high - w_low:
        return max(t_low, 0.0), min(t_high, 1.0), True
    return w_low, w_high, False


def test_fold_interval_equals_scipy() -> None:
    folds = [0.8, 0.86, 0.9, 0.78, 0.84, 0.81, 0.88, 0.79, 0.83, 0.85]
    low, high, from_folds = _expected_interval(folds, 3000)
    assert from_folds and fold_interval(folds) == pytest.approx((low, high), abs=1e-4)


def test_paired_difference_equals_scipy_paired_t_interval() -> None:
    stats = pytest.importorskip("scipy.stats")
    a = [0.84, 0.80, 0.88, 0.83, 0.86, 0.79, 0.85, 0.87, 0.82, 0.83]
    b = [0.86, 0.83, 0.89, 0.86, 0.87, 0.82, 0.88, 0.87, 0.85, 0.85]
    differences = np.subtract(a, b)
    low, high = stats.t.interval(0.95, 9, loc=differences.mean(), scale=stats.sem(differences))
    assert paired_difference(a, b) == pytest.approx((differences.mean(), low, high), abs=1e-4)
    with pytest.raises(ValueError, match="fold counts differ"):
        paired_difference(a, b[:5])


# ---------------------------------------------------------------- document


def test_markdown_and_html_hold_the_same_content(tmp_path: Path) -> None:
    blocks = [
        Heading("Results"),
        Paragraph("Accuracy of `lfw` <with> 3 folds"),
        Table(["set", "acc"], [["lfw", "91.00 ± 1.00 [89.9, 92.0]"], ["a|b", "x"]], note="note `n`"),
        Bullets(["one", "two `t`"]),
        Code("make demo\n"),
    ]
    markdown, page = to_markdown(blocks, tmp_path), to_html(blocks, "t")
    assert "| lfw | 91.00 ± 1.00 [89.9, 92.0] |" in markdown and "| a\\|b | x |" in markdown
    assert "<td>91.00 ± 1.00 [89.9, 92.0]</td>" in page and "<td>a|b</td>" in page
    assert "Accuracy of <code>lfw</code> &lt;with&gt; 3 folds" in page  # escaped, code span kept
    assert "Accuracy of `lfw` <with> 3 folds" in markdown
    assert page.count("<li>") == 2 and "<pre><code>make demo</code></pre>" in page


# ---------------------------------------------------------------- user mistakes


def test_report_names_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = _script("eval", "report").main(["--run", f"x={tmp_path}", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path}/config.json does not exist" in err and len(err.strip().splitlines()) == 1


def test_report_rejects_a_run_without_a_label(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _script("eval", "report").main(["--run", str(tmp_path), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "LABEL=DIR" in capsys.readouterr().err


def test_exchange_names_a_missing_ijb_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--url", "http://127.0.0.1:9", "--ijb-root", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")]
    code = _script("serve", "exchange").main(argv)
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "nope") in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the pipeline


def _onnx_outputs(model: Path, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and uncertainties straight from ONNX Runtime: the reference for the server."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    blob = ((np.stack(crops).astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    embedding, uncertainty = session.run(["embedding", "uncertainty"], {"data": blob})
    return embedding, uncertainty


def _crop(path: Path, landmarks: list[list[float]]) -> np.ndarray:
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return norm_crop(rgb, np.asarray(landmarks, dtype=np.float32))


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(MAKE is None, reason="GNU make is not installed (the demo is a Makefile)")
def test_demo_pipeline_end_to_end(tmp_path: Path, launch) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    targets = ["demo-data", "demo-train", "demo-eval", "demo-serve", "demo-report"]
    variables = [
        f"PY={sys.executable}",
        f"DEMO_DATA={data}",
        f"DEMO_OUT={out}",
        "DEMO_STEPS=3",
        "DEMO_NPROC=2",
        f"DEMO_SYNTH_FLAGS={TINY_SYNTH}",
        f"DEMO_TRAIN_FLAGS={TINY_TRAIN}",
        "DEMO_EXPORT_FLAGS=--legacy-exporter",  # the TorchScript exporter: same file, ~10x less time
    ]
    proc = launch([MAKE, "--no-print-directory", *targets, *variables])
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-8000:]
    manifest = json.loads((data / "synth.json").read_text())

    # Training: both models, same budget, with their progress lines.
    for run, name in (("cellvib", "cellvib_r18"), ("arcface", "r18")):
        records = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
        assert json.loads((out / run / "config.json").read_text())["config"]["model"]["name"] == name
        assert (out / run / "backbone.pt").is_file() and any((out / run / "tensorboard").iterdir())
    assert output.count("step 3/3") == 2

    # Evaluation: every .bin set with every pair, IJB by protocol and with fusion.
    for run in ("cellvib", "arcface"):
        results = json.loads((out / run / "eval" / "verification.json").read_text())["results"]
        assert {k: v["pairs"] for k, v in results.items()} == {k: len(v) for k, v in manifest["pairs"].items()}
        assert json.loads((out / run / "eval" / "ijbc.json").read_text())["weighting"] == "detector score"
    fused = json.loads((out / "cellvib" / "eval" / "fusion" / "ijbc.json").read_text())
    assert fused["weighting"].startswith("detector score x exp(")

    # Serving: the server's answers equal ONNX Runtime run directly on the same aligned crops.
    transcript = json.loads((out / "http_exchange.json").read_text())
    statuses = [c["status"] for c in transcript["calls"]]
    info = next(c["response"] for c in transcript["calls"] if c["path"] == "/v1/info")
    assert statuses == [200] * (6 if info.get("detector") else 5)  # + the photo through the detector
    calibration = transcript["model"]["calibration"]
    assert transcript["model"]["outputs"] == ["embedding", "uncertainty"]
    # The threshold the server applies is the one in the model file, read here with the onnx
    # package itself (not facevib's metadata reader).
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx"), load_external_data=False).metadata_props}
    stored = json.loads(props["facevib.calibration"])
    assert stored["protocol"] == "single_image" and calibration["threshold"] == pytest.approx(stored["threshold"])
    verify_calls = [c for c in transcript["calls"] if c["path"] == "/v1/verify"]
    for call, kind in zip(verify_calls, ("genuine", "impostor"), strict=True):
        names = [re.search(r"(\d+\.jpg)$", image).group(1) for image in call["images"]]
        crops = [
            _crop(data / "IJBC" / "loose_crop" / name, call["request"][side]["landmarks"])
            for name, side in zip(names, "ab", strict=True)
        ]
        embedding, _ = _onnx_outputs(out / "model.onnx", crops)
        unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
        answer = transcript["verify"][kind]
        assert answer["score"] == pytest.approx(float(unit[0] @ unit[1]), abs=0.02)  # JPEG decoders may differ by 1
        assert answer["threshold"] == pytest.approx(stored["threshold"], abs=1e-6)
        independent_score = float(unit[0] @ unit[1])
        if abs(independent_score - stored["threshold"]) > 0.02:  # not within JPEG-decoder noise of the line
            assert answer["match"] == (independent_score > stored["threshold"]), (independent_score, stored)
    from skimage import data as skdata

    from facevib.report.exchange import ASTRONAUT_LANDMARKS

    astronaut = norm_crop(skdata.astronaut(), np.asarray(ASTRONAUT_LANDMARKS, dtype=np.float32))
    embedding, uncertainty = _onnx_outputs(out / "model.onnx", [astronaut])
    assert transcript["photo"]["norm"] == pytest.approx(float(np.linalg.norm(embedding[0])), rel=0.02)
    assert transcript["photo"]["uncertainty"] == pytest.approx(float(uncertainty[0]), abs=0.05)
    if info.get("detector"):  # the detector's points agree with the hand-placed ones
        found = np.asarray(transcript["photo"]["detected"]["landmarks"])
        eye_distance = ASTRONAUT_LANDMARKS[1][0] - ASTRONAUT_LANDMARKS[0][0]
        assert np.abs(found - np.asarray(ASTRONAUT_LANDMARKS)).max() < 0.15 * eye_distance
    with pytest.raises(httpx.TransportError):  # the server was stopped
        httpx.get(f"{transcript['base_url']}/health", timeout=2.0)

    # Report: the numbers of the evaluation files, with their intervals, in both renderings.
    report, page = (out / "REPORT.md").read_text(), (out / "report.html").read_text()
    lfw = json.loads((out / "arcface" / "eval" / "verification.json").read_text())["results"]["lfw"]
    low, high, from_folds = _expected_interval(lfw["fold_accuracies"], lfw["pairs"])
    cell = f"{100 * lfw['accuracy']:.2f} ± {100 * lfw['accuracy_std']:.2f} [{100 * low:.1f}, {100 * high:.1f}]"
    cell += "" if from_folds else " (p)"
    assert cell in report and f"<td>{cell}</td>" in page
    images = re.findall(r"!\[[^]]*\]\((plots/[a-z_]+\.png)\)", report)
    assert sorted(images) == ["plots/kl_per_cell.png", "plots/roc.png", "plots/training_curves.png"]
    for image in images:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count("data:image/png;base64,") == len(images)
    prose = re.sub(r"```.*?```", "", report, flags=re.DOTALL)  # '#' in code blocks is not a heading
    for heading in re.findall(r"^#+ (.+)$", prose, flags=re.MULTILINE):
        assert heading.replace("&", "&amp;") in page
    assert math.isfinite(float(re.search(r"cosine > (-?[\d.]+)", report).group(1)))
    # The shipped threshold is single-image, and the report gives its rates on held-out identities.
    held = calibration["holdout"]
    assert calibration["protocol"] == "single_image" and held["identities"] >= 2
    assert f"held-out identities the same threshold gives FPR {held['fpr']:.2e}" in report
