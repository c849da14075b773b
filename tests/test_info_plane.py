"""Information plane end to end: measure_plane, eval/infoplane.py on digits / RecordIO / .bin,
and the training recorder, checked against independent computations."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import facevib.experiments.models  # noqa: F401  (registers the research families)
from facevib.data.classic.digits import load_digits_split
from facevib.info import binning_mi, kernel_mi_bounds, vib_kl_bound
from facevib.info.plane import EMBEDDING, Samples, measure_plane
from facevib.info.recorder import InfoPlaneRecorder
from facevib.models import create_model

ROOT = Path(__file__).resolve().parents[1]
MLP = {"input_dim": 64, "hidden": (32,), "bottleneck": 16, "num_classes": 10}


def _cli():
    spec = importlib.util.spec_from_file_location("infoplane_cli", ROOT / "eval" / "infoplane.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_digits_split(0.3, 0)


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, recorder=None) -> None:
    """Minimal Adam loop (CE + sum_i beta_i KL_i), full-batch-ish for speed."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    step = 0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(128):
            logits, kl = model(xt[idx], return_kl=True)
            loss = F.cross_entropy(logits, yt[idx]) + model.kl_loss(kl)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if recorder is not None and recorder.due(step):
            recorder.record(step)


@pytest.fixture(scope="module")
def checkpoints(digits, tmp_path_factory) -> dict[float, Path]:
    x, y, _, _ = digits
    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for beta in (1e-4, 1e-1):
        model = create_model("cellvib_mlp", **MLP, beta="constant", beta_max=beta)
        _train(model, x, y, epochs=8)
        path = out / f"beta{beta:g}" / "backbone.pt"
        path.parent.mkdir()
        torch.save({"arch": model.arch, "backbone": model.state_dict()}, path)
        paths[beta] = path
    return paths


@pytest.mark.slow
def test_cli_on_digits_matches_independent_bounds(digits, checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "res"
    rc = _cli().main(["--model", *map(str, checkpoints.values()), "--data", "digits", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "layers.1" in printed and "bits" in printed
    payload = json.loads((out / "infoplane.json").read_text())
    for name in ("infoplane_depth.png", "infoplane_beta.png"):
        image = __import__("matplotlib.pyplot").pyplot.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200
    _, _, x_test, y_test = digits
    counts = np.bincount(y_test)
    h_y = float(-(counts / counts.sum() * np.log(counts / counts.sum())).sum())
    from facevib.models import load_backbone

    records = {rec["checkpoint"]: rec for rec in payload["models"]}
    for beta, path in checkpoints.items():
        rec = records[str(path)]
        assert rec["beta"] == pytest.approx(beta)
        model = load_backbone(path)
        with torch.no_grad():
            logits = model(torch.from_numpy(x_test))
        ce = F.cross_entropy(logits.double(), torch.from_numpy(y_test)).item()
        last = rec["layers"][-1]
        assert last["label_mi_test"] == pytest.approx(h_y - ce, abs=1e-6)
        kl = vib_kl_bound(model, [torch.from_numpy(x_test)])
        np.testing.assert_allclose([layer["kl_bound"] for layer in rec["layers"]], kl, rtol=1e-5)
        assert rec["point"]["i_zx_bound"] == pytest.approx(kl[-1], rel=1e-5)
        assert rec["layers"][-1]["binning"]["num_samples"] == len(y_test)
    low, high = records[str(checkpoints[1e-4])], records[str(checkpoints[1e-1])]
    # A heavier bottleneck keeps less of the input: the last cell's KL drops by orders of magnitude.
    assert high["point"]["i_zx_bound"] < 0.2 * low["point"]["i_zx_bound"]
    assert low["point"]["i_zy"] > 0.8 * h_y  # a trained digits classifier keeps most of H(Y)


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    cli = _cli()
    assert cli.main(["--model", str(tmp_path / "none.pt"), "--data", "digits", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none.pt" in err and "does not exist" in err
    assert cli.main(["--model", str(tmp_path / "none.pt"), "--data", str(tmp_path / "x.csv"), "--out", "o"]) == 2
    assert "x.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", "m.pt", "--data", "digits", "--out", "o", "--bin-size", "0"])
    assert exit_info.value.code == 2


def _face_images(num_classes: int, per_class: int) -> tuple[list[bytes], list[int]]:
    """JPEG crops of the astronaut photo, one colour tint per identity."""
    import cv2
    from skimage.data import astronaut

    from facevib.data.bins import encode_jpeg

    base = cv2.resize(astronaut()[30:250, 140:360], (112, 112))
    rng = np.random.default_rng(0)
    images, labels = [], []
    for cls in range(num_classes):
        tint = rng.uniform(0.4, 1.0, size=3)
        for _ in range(per_class):
            noisy = base * tint + rng.normal(0, 6, size=base.shape)
            images.append(encode_jpeg(np.clip(noisy, 0, 255).astype(np.uint8)))
            labels.append(cls)
    return images, labels


@pytest.mark.slow
def test_cli_on_face_recordio_and_bin(tmp_path, capsys) -> None:
    from facevib.data.bins import write_bin

    images, labels = _face_images(num_classes=4, per_class=4)
    rec_dir = _write_faces(tmp_path / "faces", num_classes=4, per_class=4)
    # Pairs alternate same identity (images 4c, 4c+1) and different (4c+2 with the next identity's 4c'+3).
    order = [i for c in range(4) for i in (4 * c, 4 * c + 1, 4 * c + 2, (4 * c + 7) % 16)]
    issame = [labels[order[2 * i]] == labels[order[2 * i + 1]] for i in range(8)]
    assert issame == [True, False] * 4
    write_bin(tmp_path / "tiny.bin", [images[i] for i in order], issame)
    torch.manual_seed(0)
    model = create_model("deepvib_r18", widths=(4, 8, 8, 16), embedding_dim=8)
    ckpt = tmp_path / "backbone.pt"
    torch.save({"arch": model.arch, "backbone": model.state_dict()}, ckpt)
    cli = _cli()
    assert (
        cli.main(["--model", str(ckpt), "--data", str(rec_dir), "--out", str(tmp_path / "r1"), "--device", "cpu"]) == 0
    )
    payload = json.loads((tmp_path / "r1" / "infoplane.json").read_text())
    layers = payload["models"][0]["layers"]
    assert [layer["name"] for layer in layers][-1] == EMBEDDING and len(layers) == 9  # 8 blocks + embedding
    assert [layer["kl_bound"] is not None for layer in layers] == [False] * 8 + [True]  # Deep VIB: head only
    assert layers[0]["binning"]["num_samples"] == 8 and layers[0]["binning"]["i_ty"] is not None
    assert cli.main(["--model", str(ckpt), "--data", str(tmp_path / "tiny.bin"), "--out", str(tmp_path / "r2")]) == 0
    layers = json.loads((tmp_path / "r2" / "infoplane.json").read_text())["models"][0]["layers"]
    assert layers[0]["binning"]["num_samples"] == 8 and layers[0]["binning"]["i_ty"] is None  # images, no class labels
    assert "verification" not in capsys.readouterr().err


def test_measure_plane_binning_matches_direct_estimate(digits) -> None:
    x, y, x_test, y_test = digits
    torch.manual_seed(1)
    model = create_model("mlp", **MLP)
    plane = measure_plane(
        model, Samples(torch.from_numpy(x), y), Samples(torch.from_numpy(x_test), y_test), kernel_noise_var=0.5
    )
    assert all(layer.kl_bound is None for layer in plane.layers) and plane.beta is None
    with torch.no_grad():
        hidden = model.layers[0](torch.from_numpy(x_test).flatten(1))
    direct = binning_mi(hidden.numpy(), y_test)
    kernel = kernel_mi_bounds(hidden.numpy(), 0.5, y_test)
    assert plane.layers[0].kernel.upper == pytest.approx(kernel.upper)
    assert plane.layers[0].kernel.label_lower == pytest.approx(kernel.label_lower)
    assert plane.layers[0].binning.h_t == pytest.approx(direct.h_t)
    assert plane.layers[0].binning.i_ty == pytest.approx(direct.i_ty)
    # Streaming (hashed) and exact binning agree on the same layer.
    streamed = measure_plane(
        model,
        Samples(torch.from_numpy(x), y),
        Samples(torch.from_numpy(x_test), y_test),
        max_binning_elements=100,
        jsd_steps=60,
    )
    assert not streamed.layers[0].binning.verified
    assert streamed.layers[0].binning.num_codes == direct.num_codes
    # A deterministic layer on top of another: its critic tells joint from shuffled pairs.
    assert streamed.layers[0].jsd_prev is None and streamed.layers[1].jsd_prev > 0.1
    assert streamed.layers[0].kernel is None
    assert plane.layers[1].jsd_prev is None  # off unless asked for


def test_recorder_end_to_end(digits, tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    x, y, x_test, y_test = digits
    model = create_model("cellvib_mlp", **MLP, beta="constant", beta_max=1e-3)
    recorder = InfoPlaneRecorder(
        model, Samples(torch.from_numpy(x[:400]), y[:400]), Samples(torch.from_numpy(x_test), y_test), every=10
    )
    recorder.record(0)
    _train(model, x, y, epochs=3, recorder=recorder)  # 10 steps per epoch -> records at 10, 20, 30
    assert [r["step"] for r in recorder.history] == [0, 10, 20, 30]
    writer = SummaryWriter(str(tmp_path / "tb"))
    path = recorder.write(tmp_path, writer)
    writer.close()
    saved = json.loads(path.read_text())
    assert [r["step"] for r in saved["records"]] == [0, 10, 20, 30]
    first, last = saved["records"][0]["layers"]["layers.1"], saved["records"][-1]["layers"]["layers.1"]
    assert last["label_mi_test"] > first["label_mi_test"] + 0.5  # training moves the path up in I(T;Y)
    assert (tmp_path / "infoplane_paths.png").stat().st_size > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("info/layers.1/izy_test_bits")
    assert [s.step for s in scalars] == [0, 10, 20, 30]
    assert scalars[-1].value == pytest.approx(last["label_mi_test"] / math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="every"):
        InfoPlaneRecorder(model, recorder.train, recorder.test, every=-1)


def _write_faces(directory: Path, num_classes: int, per_class: int) -> Path:
    from facevib.data.pack import write_ms1m, write_property

    images, _ = _face_images(num_classes, per_class)
    directory.mkdir()
    write_ms1m(directory / "train", [per_class] * num_classes, images)
    write_property(directory, num_classes)
    return directory


@pytest.mark.slow
def test_face_trainer_records_the_information_plane_at_evaluations(tmp_path) -> None:
    from facevib.data.bins import write_bin

    spec = importlib.util.spec_from_file_location("train_arcface", ROOT / "train" / "arcface.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = _write_faces(tmp_path / "faces", num_classes=4, per_class=8)
    images, labels = _face_images(4, 8)
    pairs = [(i, i + 1) if i % 4 == 0 else (i, (i + 8) % 32) for i in range(0, 32, 2)]
    write_bin(data / "lfw.bin", [images[k] for pair in pairs for k in pair], [labels[a] == labels[b] for a, b in pairs])
    out = tmp_path / "run"
    settings = [
        "model.kwargs.layers=(1, 1, 1, 1)",
        "model.kwargs.widths=(4, 4, 8, 8)",
        "model.kwargs.embedding_dim=16",
        f"data.rec={data}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.val_targets=['lfw']",
        f"data.val_dir={data}",
        f"run.output={out}",
        "run.epochs=0",
        "run.total_steps=4",
        "run.eval_every=2",
        "run.checkpoint_every=0",
        "info.record=True",
        "info.max_classes=4",
        "info.per_class=4",
    ]
    argv = [str(ROOT / "configs" / "synthetic_r18_cellvib.py"), *[a for s in settings for a in ("--set", s)]]
    assert module.main(argv) == 0
    saved = json.loads((out / "infoplane.json").read_text())
    assert [r["step"] for r in saved["records"]] == [2, 4]
    layers = saved["records"][-1]["layers"]
    assert list(layers)[-1] == EMBEDDING and len(layers) == 5  # 4 blocks + embedding
    assert all(layers[name]["kl_bound"] > 0 for name in list(layers)[:4])  # every block is a cell
    assert layers[EMBEDDING]["binning"]["num_samples"] == 8  # 4 identities x 2 held-out images
    info_logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    info_logs = [r for r in info_logs if r["kind"] == "info"]
    assert [r["step"] for r in info_logs] == [2, 4]
    assert info_logs[-1]["layer1.0/kl_bound_bits"] == pytest.approx(layers["layer1.0"]["kl_bound"] / math.log(2))
    assert (out / "infoplane_paths.png").is_file() and (out / "infoplane_depth.png").is_file()
    bad = [*argv, "--set", "run.eval_every=0", "--set", "data.val_targets=[]"]
    assert module.main(bad) == 2
