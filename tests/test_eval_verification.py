"""The verification protocol: folds, known answers, insightface's loop, .bin sets, the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold
from torch import nn

from facevib.data.bins import VerificationBin, read_bin, write_bin
from facevib.data.transforms import images_to_tensor
from facevib.eval.embed import Embedder
from facevib.eval.verification import (
    INSIGHTFACE_THRESHOLDS,
    evaluate_bins,
    evaluate_verification,
    kfold_splits,
    load_bins,
    unique_images,
)

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    """Import eval/<name>.py by path (eval/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"eval_script_{name}", ROOT / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs_at_distances(distances: np.ndarray, dim: int = 8, seed: int = 0) -> np.ndarray:
    """(2N, dim) embeddings whose normalised pairs are exactly at the given squared distances."""
    rng = np.random.default_rng(seed)
    out = np.zeros((2 * distances.size, dim))
    for i, d in enumerate(distances):
        a, b = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T  # two orthonormal directions
        cos = 1.0 - d / 2.0
        out[2 * i] = a * rng.uniform(0.5, 3.0)  # norms differ: evaluation must normalise
        out[2 * i + 1] = (cos * a + np.sqrt(max(0.0, 1 - cos * cos)) * b) * rng.uniform(0.5, 3.0)
    return out


def _insightface_accuracy(embeddings: np.ndarray, issame: np.ndarray, n_folds: int = 10) -> np.ndarray:
    """insightface's calculate_roc accuracy loop, re-written: per fold, per threshold, np.less."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    dist = np.sum(np.square(unit[0::2] - unit[1::2]), 1)
    thresholds = np.arange(0, 4, 0.01)
    accuracy = np.zeros(n_folds)
    for fold, (train, test) in enumerate(KFold(n_splits=n_folds, shuffle=False).split(np.arange(issame.size))):
        train_acc = np.zeros(thresholds.size)
        for i, t in enumerate(thresholds):
            predicted = np.less(dist[train], t)
            train_acc[i] = np.mean(predicted == issame[train])
        best = thresholds[np.argmax(train_acc)]
        accuracy[fold] = np.mean(np.less(dist[test], best) == issame[test])
    return accuracy


@pytest.mark.parametrize(("n", "folds"), [(10, 10), (37, 10), (6000, 10), (11, 3), (5, 1)])
def test_kfold_splits_equal_sklearn(n: int, folds: int) -> None:
    ours = kfold_splits(n, folds)
    if folds == 1:
        np.testing.assert_array_equal(ours[0][0], np.arange(n))
        np.testing.assert_array_equal(ours[0][1], np.arange(n))
        return
    for (train, test), (ref_train, ref_test) in zip(ours, KFold(folds).split(np.arange(n)), strict=True):
        np.testing.assert_array_equal(train, ref_train)
        np.testing.assert_array_equal(test, ref_test)


def test_separable_pairs_give_full_accuracy_and_the_first_separating_threshold() -> None:
    issame = np.tile([True, False], 50)
    embeddings = _pairs_at_distances(np.where(issame, 0.5, 1.5))
    result = evaluate_verification(embeddings, issame)
    assert result["accuracy"] == 1.0 and result["accuracy_std"] == 0.0
    # The first grid value above 0.5 (argmax takes the first best): arange's 0.51.
    assert result["best_thresholds"] == [INSIGHTFACE_THRESHOLDS[51]] * 10
    assert result["best_cosine_thresholds"][0] == pytest.approx(1 - 0.51 / 2)
    assert result["tar_at_far"] == 1.0 and result["far_resolved"] is False  # 50 impostors < 1000
    assert (result["pairs"], result["genuine"], result["impostor"]) == (100, 50, 50)


def test_one_hopeless_pair_per_fold_gives_ninety_percent() -> None:
    issame = np.tile([True, False], 50)
    distances = np.where(issame, 0.5, 1.5)
    distances[0::10] = 3.5  # the first pair of each 10-pair fold: genuine, yet far apart
    result = evaluate_verification(_pairs_at_distances(distances), issame)
    assert result["fold_accuracies"] == pytest.approx([0.9] * 10)
    assert result["accuracy"] == pytest.approx(0.9) and result["accuracy_std"] == pytest.approx(0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_equals_insightface_loop_on_random_embeddings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 600
    identities = rng.normal(size=(n, 16))
    issame = rng.random(n) < 0.5
    first = identities + rng.normal(scale=0.9, size=(n, 16))
    second = np.where(issame[:, None], identities, rng.normal(size=(n, 16))) + rng.normal(scale=0.9, size=(n, 16))
    embeddings = np.empty((2 * n, 16))
    embeddings[0::2], embeddings[1::2] = first, second
    result = evaluate_verification(embeddings.astype(np.float32), issame)
    reference = _insightface_accuracy(embeddings.astype(np.float32).astype(np.float64), issame)
    np.testing.assert_allclose(result["fold_accuracies"], reference, atol=1e-12)
    assert result["accuracy"] == pytest.approx(reference.mean()) and result["accuracy_std"] == pytest.approx(
        reference.std()
    )
    assert 0.5 < result["accuracy"] < 1.0


def test_norm_is_measured_before_normalisation_and_tar_is_exact() -> None:
    rng = np.random.default_rng(3)
    issame = np.r_[np.ones(100, bool), np.zeros(2000, bool)]
    distances = np.r_[rng.uniform(0.0, 1.0, 100), rng.uniform(0.9, 4.0, 2000)]
    embeddings = _pairs_at_distances(distances, seed=4)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scaled = unit * 3.0
    result = evaluate_verification(scaled, issame)
    assert result["embedding_norm"] == pytest.approx(3.0)
    cosine = np.sum(unit[0::2] * unit[1::2], axis=1)
    second_largest = np.sort(cosine[~issame])[-3]  # FAR 1e-3 of 2000 allows 2 false accepts
    assert result["tar_threshold"] == pytest.approx(second_largest)
    assert result["tar_at_far"] == pytest.approx(np.mean(cosine[issame] > second_largest))
    assert result["far_resolved"] is True


@pytest.mark.parametrize(
    ("embeddings", "issame", "message"),
    [
        (np.ones((5, 4)), [True, False], r"\(2N, D\)"),
        (np.full((4, 4), np.nan), [True, False], "NaN"),
        (np.ones((4, 4)), [True, True], "impostor"),
        (np.ones((4, 4)), [2, 0], "booleans"),
    ],
)
def test_bad_inputs_raise(embeddings: np.ndarray, issame: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_verification(embeddings, issame, n_folds=2)


class ColourNet(nn.Module):
    """Known answers: per-channel mean of the normalised image -> fixed linear map.

    Flip-invariant, so an image + flip embedding is twice the single-image one.
    """

    def __init__(self, embedding_dim: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(3, embedding_dim)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            self.proj.weight.copy_(torch.randn(embedding_dim, 3, generator=generator))
            self.proj.bias.copy_(torch.randn(embedding_dim, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))

    def expected(self, colours: np.ndarray) -> np.ndarray:
        """Single-image embeddings of uniform RGB images, computed without the network."""
        normalised = (colours.astype(np.float64) / 255.0 - 0.5) / 0.5
        weight = self.proj.weight.detach().double().numpy()
        bias = self.proj.bias.detach().double().numpy()
        return normalised @ weight.T + bias


def _uniform_pairs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=(count, 3))
    issame = rng.random(count) < 0.5
    other = np.where(issame[:, None], base + rng.integers(-6, 7, size=(count, 3)), rng.integers(30, 220, (count, 3)))
    colours = np.empty((2 * count, 3), np.int64)
    colours[0::2], colours[1::2] = base, other
    images = np.broadcast_to(colours[:, None, None, :].astype(np.uint8), (2 * count, 112, 112, 3)).copy()
    return images, colours, issame


def test_evaluate_bins_on_a_training_module_gives_the_known_answer_and_restores_its_mode() -> None:
    net = ColourNet().train()
    images, colours, issame = _uniform_pairs(40, seed=0)
    results = evaluate_bins(net, [VerificationBin("toy", images, issame)], batch_size=7, n_folds=4)
    assert net.training
    expected = evaluate_verification(2.0 * net.expected(colours), issame, n_folds=4)
    got = results["toy"]
    assert got["fold_accuracies"] == pytest.approx(expected["fold_accuracies"])
    assert got["embedding_norm"] == pytest.approx(expected["embedding_norm"], rel=1e-5)
    assert got["xnorm"] == pytest.approx(np.linalg.norm(net.expected(colours), axis=1).mean(), rel=1e-5)
    assert got["tar_at_far"] == pytest.approx(expected["tar_at_far"])


def test_evaluate_bins_embeds_each_distinct_image_once_with_the_same_result() -> None:
    # Pairs reusing a pool of photos, as LFW does: 30 pairs over 12 distinct images.
    net = ColourNet().eval()
    pool, _, _ = _uniform_pairs(6, seed=3)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(pool), size=60)
    images, issame = pool[picks], rng.random(30) < 0.5
    seen: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        with torch.no_grad():
            return net(images_to_tensor(batch)).numpy()

    got = evaluate_bins(Embedder(forward, batch_size=8), [VerificationBin("pool", images, issame)], n_folds=3)["pool"]
    distinct = len(np.unique(picks))
    assert got["unique_images"] == distinct and sum(seen) == 2 * distinct  # each image and its flip, once
    plain = Embedder(forward, batch_size=8)
    reference = evaluate_verification(plain(images), issame, n_folds=3)  # every row embedded
    assert got["fold_accuracies"] == pytest.approx(reference["fold_accuracies"])
    assert got["embedding_norm"] == pytest.approx(reference["embedding_norm"], rel=1e-6)
    first, inverse = unique_images(images)
    assert np.array_equal(images[first][inverse], images) and np.array_equal(np.sort(first), first)


def _write_bins(folder: Path, names: list[str]) -> None:
    for seed, name in enumerate(names):
        images, _, issame = _uniform_pairs(20, seed=seed)
        encoded = [cv2.imencode(".png", img[:, :, ::-1])[1].tobytes() for img in images]
        write_bin(folder / f"{name}.bin", encoded, issame.tolist())


def test_load_bins_lists_what_is_present(tmp_path: Path) -> None:
    _write_bins(tmp_path, ["lfw", "cfp_fp"])
    assert [b.name for b in load_bins(tmp_path)] == ["cfp_fp", "lfw"]
    assert [b.name for b in load_bins(tmp_path, ["lfw"])] == ["lfw"]
    with pytest.raises(FileNotFoundError, match=r"agedb_30\.bin.*present in .*: \['cfp_fp', 'lfw'\]"):
        load_bins(tmp_path, ["lfw", "agedb_30"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bins(tmp_path / "nowhere")


_TINY_R18 = {"layers": (1, 1, 1, 1), "widths": (4, 4, 8, 8), "embedding_dim": 16}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny r18 as a facevib checkpoint and as ONNX."""
    from facevib.export import export_onnx
    from facevib.models import create_model

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = create_model("r18", **_TINY_R18).eval()
    checkpoint = folder / "backbone.pt"
    torch.save({"format": "facevib", "arch": model.arch, "backbone": model.state_dict(), "config": {}}, checkpoint)
    onnx_path = export_onnx(model, folder / "backbone.onnx", dynamo=False, opset=17)
    return {"checkpoint": checkpoint, "onnx": onnx_path}


def _reference_result(checkpoint: Path, images: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, float]:
    """Fold accuracies and mean image + flip embedding norm, computed without facevib.eval.

    The checkpoint's backbone runs in torch on ``x / 127.5 - 1`` (NCHW) for each distinct
    image and its mirror; the sums go through insightface's accuracy loop above.
    """
    from facevib.models import create_model

    model = create_model("r18", **_TINY_R18).eval()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["backbone"])
    slot_of: dict[bytes, int] = {}  # image bytes -> row in ``distinct``
    inverse = np.array([slot_of.setdefault(image.tobytes(), len(slot_of)) for image in images])
    distinct = images[np.unique(inverse, return_index=True)[1]]
    summed = []
    with torch.no_grad():
        for start in range(0, len(distinct), 256):
            x = torch.from_numpy(distinct[start : start + 256]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            summed.append((model(x) + model(torch.flip(x, dims=[3]))).double().numpy())
    embeddings = np.concatenate(summed)[inverse]
    return _insightface_accuracy(embeddings, issame), float(np.linalg.norm(embeddings, axis=1).mean())


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_cli_writes_table_and_json(
    kind: str, tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "data").mkdir()
    _write_bins(tmp_path / "data", ["lfw", "agedb_30"])
    script = _load_script("verification")
    out = tmp_path / "out"
    code = script.main(
        ["--model", str(tiny_models[kind]), "--data-dir", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "lfw" in printed and "agedb_30" in printed and "accuracy" in printed
    payload = json.loads((out / "verification.json").read_text())
    assert set(payload["results"]) == {"lfw", "agedb_30"}
    assert payload["backend"].startswith("torch:cpu" if kind == "checkpoint" else "onnxruntime:CPUExecutionProvider")
    for seed, name in enumerate(["lfw", "agedb_30"]):  # the sets _write_bins wrote
        images, _, issame = _uniform_pairs(20, seed=seed)
        folds, norm = _reference_result(tiny_models["checkpoint"], images, issame)
        result = payload["results"][name]
        assert result["pairs"] == 20 and result["fold_accuracies"] == pytest.approx(folds.tolist(), abs=1e-12)
        assert result["accuracy"] == pytest.approx(folds.mean()) and result["embedding_norm"] == pytest.approx(
            norm, rel=1e-4
        )


def test_cli_checkpoint_and_onnx_agree(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    images, _, issame = _uniform_pairs(8, seed=5)
    rng = np.random.default_rng(0)
    images = (images.astype(np.int16) + rng.integers(-20, 21, images.shape)).clip(0, 255).astype(np.uint8)
    from facevib.eval.embed import load_embedder

    a = load_embedder(tiny_models["checkpoint"], batch_size=16)(images)
    b = load_embedder(tiny_models["onnx"], batch_size=16)(images)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert isinstance(load_embedder(tiny_models["onnx"]), Embedder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "{tmp}/none"], "does not exist"),
        (["--data-dir", "{tmp}", "--targets", "cplfw"], "missing verification sets"),
        (["--data-dir", "{tmp}", "--n-folds", "0"], "n_folds"),
    ],
)
def test_cli_user_mistakes_exit_2_with_one_line(
    args: list[str], message: str, tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _write_bins(tmp_path, ["lfw"])
    script = _load_script("verification")
    argv = ["--model", str(tiny_models["onnx"]), "--out", str(tmp_path / "o")] + [a.format(tmp=tmp_path) for a in args]
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_model_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_bins(tmp_path, ["lfw"])
    script = _load_script("verification")
    assert script.main(["--model", str(tmp_path / "x.pt"), "--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_on_the_synthetic_set(request: pytest.FixtureRequest, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    synthetic = request.getfixturevalue("synthetic_dir")
    script = _load_script("verification")
    out = tmp_path / "out"
    # lfw only: the tiny CPU model takes ~10 ms an image on 2 cores.
    argv = ["--model", str(tiny_models["checkpoint"]), "--data-dir", str(synthetic), "--targets", "lfw"]
    assert script.main(argv + ["--out", str(out)]) == 0
    payload = json.loads((out / "verification.json").read_text())
    assert list(payload["results"]) == ["lfw"]
    result = payload["results"]["lfw"]
    lfw = read_bin(synthetic / "lfw.bin")
    folds, norm = _reference_result(tiny_models["checkpoint"], lfw.images, lfw.issame)
    assert result["pairs"] == len(lfw.issame)
    np.testing.assert_allclose(result["fold_accuracies"], folds, atol=1e-12)
    assert result["embedding_norm"] == pytest.approx(norm, rel=1e-4)
