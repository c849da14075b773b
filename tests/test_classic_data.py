"""Loaders of the paper's other data sets, on tiny stand-ins written in the published formats."""

from __future__ import annotations

import gzip
import pickle
import struct

import cv2
import numpy as np
import pytest
import torch

from facevib.data.classic import (
    CIFAR10C_CORRUPTIONS,
    PACS_CLASSES,
    PACSDataset,
    load_cifar10,
    load_cifar10c,
    load_digits_split,
    load_mnist,
    make_shifted_digits,
    make_textures,
    read_idx,
    symmetric_label_noise,
)


def _write_idx(path, array: np.ndarray, code: int, compress: bool) -> None:
    """IDX as LeCun documents it: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, 0x08, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
    got_images, got_labels = load_mnist(tmp_path, "test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels.astype(np.int64))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte, train-labels-idx1-ubyte"):
        load_mnist(tmp_path, "train")


def test_read_idx_multibyte_types_and_errors(tmp_path):
    values = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    _write_idx(tmp_path / "a.idx", values, 0x0B, False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), values)
    floats = np.linspace(-1, 1, 5, dtype=np.float32)
    _write_idx(tmp_path / "f.idx", floats, 0x0D, True)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="bad.idx: not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    raw = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match=r"short.idx: header shape \(3, 4\) needs 24 data bytes, file has 22"):
        read_idx(tmp_path / "short.idx")


def _write_cifar_batch(path, images_chw: np.ndarray, labels: list[int]) -> None:
    with path.open("wb") as handle:
        pickle.dump({b"data": images_chw.reshape(len(labels), -1), b"labels": labels, b"batch_label": b"x"}, handle)


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = []
    for i in range(1, 6):
        images = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
        labels = [i % 10, (i + 3) % 10]
        _write_cifar_batch(folder / f"data_batch_{i}", images, labels)
        batches.append((images, labels))
    images, labels = load_cifar10(tmp_path, "train")
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[2:4], batches[1][0])
    # Channel-planar rows: the first 1024 values of a row are the red plane.
    np.testing.assert_array_equal(images[0, 0].ravel(), batches[0][0].reshape(2, -1)[0, :1024])
    assert labels.tolist() == [1, 4, 2, 5, 3, 6, 4, 7, 5, 8]
    with pytest.raises(FileNotFoundError, match="lacks test_batch"):
        load_cifar10(tmp_path, "test")


def test_cifar10c_severity_blocks(tmp_path):
    per_level = 3
    images = np.zeros((5 * per_level, 32, 32, 3), dtype=np.uint8)
    for level in range(5):
        images[level * per_level : (level + 1) * per_level] = level * 10
    images[:, 0, 0, 2] = 255  # blue corner: checks the HWC -> CHW transpose
    labels = np.tile(np.arange(per_level), 5)
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    got, got_labels = load_cifar10c(tmp_path, "fog", 4)
    assert got.shape == (per_level, 3, 32, 32) and (got[:, 0] == 30).all() and (got[:, 2, 0, 0] == 255).all()
    assert got_labels.tolist() == [0, 1, 2]
    assert len(CIFAR10C_CORRUPTIONS) == 19
    with pytest.raises(FileNotFoundError, match="lacks snow.npy"):
        load_cifar10c(tmp_path, "snow", 1)
    with pytest.raises(ValueError, match="severity must be an int in 1..5"):
        load_cifar10c(tmp_path, "fog", 6)
    with pytest.raises(ValueError, match="unknown CIFAR-10-C corruption 'rain'"):
        load_cifar10c(tmp_path, "rain", 1)


def test_pacs_folders(tmp_path):
    for domain, classes in (("photo", ("dog", "house")), ("sketch", ("person",))):
        for name in classes:
            (tmp_path / domain / name).mkdir(parents=True)
            image = np.full((40, 30, 3), PACS_CLASSES.index(name) * 30, dtype=np.uint8)
            cv2.imwrite(str(tmp_path / domain / name / "a.png"), image)
    (tmp_path / "photo" / "dog" / "notes.txt").write_text("not an image")
    dataset = PACSDataset(tmp_path, ["photo", "sketch"], size=16)
    assert len(dataset) == 3
    labels = [dataset[i][1] for i in range(3)]
    assert labels == [PACS_CLASSES.index("dog"), PACS_CLASSES.index("house"), PACS_CLASSES.index("person")]
    image, label = dataset[1]
    assert image.shape == (3, 16, 16)
    np.testing.assert_allclose(image.numpy(), label * 30 / 127.5 - 1.0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="cartoon with one sub-folder per class"):
        PACSDataset(tmp_path, ["cartoon"])
    with pytest.raises(ValueError, match="unknown PACS domain 'photos'"):
        PACSDataset(tmp_path, ["photos"])
    (tmp_path / "sketch" / "cat").mkdir()
    with pytest.raises(ValueError, match="cat is not a PACS class folder"):
        PACSDataset(tmp_path, ["sketch"])


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 1.0])
def test_symmetric_label_noise_rate_is_exact(rate):
    labels = np.repeat(np.arange(10), 301)  # 3010 labels: 0.2 * 3010 = 602 flips exactly
    noisy, flipped = symmetric_label_noise(labels, rate, 10, seed=3)
    assert flipped.sum() == round(rate * len(labels))
    np.testing.assert_array_equal(noisy != labels, flipped)  # a flipped label never keeps its class
    again, _ = symmetric_label_noise(labels, rate, 10, seed=3)
    np.testing.assert_array_equal(noisy, again)


def test_symmetric_label_noise_is_uniform_over_other_classes():
    labels = np.zeros(90_000, dtype=np.int64)
    noisy, flipped = symmetric_label_noise(labels, 0.5, 10, seed=0)
    counts = np.bincount(noisy[flipped], minlength=10)
    assert counts[0] == 0
    # 45,000 flips over 9 classes: 5,000 each, binomial std ~67; 5 std is a loose bound.
    assert np.abs(counts[1:] - 5000).max() < 5 * 67
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        symmetric_label_noise(labels, 1.5, 10, seed=0)


def test_shifted_digits_tie_textures_to_labels_only_in_training():
    x_train, y_train, x_test, y_test = load_digits_split(0.25, seed=0)
    assert len(x_train) + len(x_test) == 1797 and x_train.min() == -1.0 and x_train.max() == 1.0
    textures = make_textures(10, seed=0)
    train, train_ids = make_shifted_digits(x_train[:200], y_train[:200], textures, tied=True, seed=0)
    test, test_ids = make_shifted_digits(x_test[:300], y_test[:300], textures, tied=False, seed=1)
    assert train.shape == (200, 1, 32, 32) and train.min() >= -1.0 and train.max() <= 1.0
    np.testing.assert_array_equal(train_ids, y_train[:200])
    assert 0.03 < np.mean(test_ids == y_test[:300]) < 0.2  # random textures agree ~10% of the time
    # Where the upsampled digit is blank, the pixel is the texture scaled by its contrast.
    blank = cv2.resize((x_train[0] + 1) / 2, (32, 32), interpolation=cv2.INTER_LINEAR) <= 0
    assert blank.any() and (train[0, 0][blank] <= 0.6 * 2 - 1 + 1e-6).all()


def _classic_main(argv: list[str]) -> int:
    """train/classic.py's main(), loaded from its file as a user runs it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_classic", Path(__file__).parents[1] / "train/classic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_mnist_config_trains_end_to_end_on_a_stand_in(tmp_path, capsys):
    """The paper's MNIST config on learnable IDX stand-ins: class k lights up row band k."""
    import json
    from pathlib import Path

    config = str(Path(__file__).parents[1] / "configs/classic/mnist_mlp_cellvib.py")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 400), ("t10k", 100)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label + 4 : 2 * label + 6, 4:24] = 255
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 0x08, True)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x08, True)
    out = tmp_path / "run"
    sets = [
        f"data.root={tmp_path}",
        "model.kwargs.hidden=(32,)",
        "model.kwargs.bottleneck=16",
        "optim.lr=0.003",
        "run.epochs=3",
        f"run.output={out}",
        "data.label_noise=0.2",
    ]
    assert _classic_main([config, *[a for s in sets for a in ("--set", s)]]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["history"]) == 3 and len(report["history"][-1]["kl"]) == 2  # two cells: hidden + K
    assert report["accuracy"]["test"] > 0.9  # 20% noisy training labels, clean test labels
    assert report["config"]["data"]["label_noise"] == 0.2
    checkpoint = torch.load(out / "backbone.pt", weights_only=True)
    assert checkpoint["arch"]["name"] == "cellvib_mlp"

    assert _classic_main([config, "--set", f"data.root={tmp_path / 'none'}"]) == 2
    assert "lacks train-images-idx3-ubyte" in capsys.readouterr().err
    assert _classic_main([config]) == 2
    assert "data.root is empty" in capsys.readouterr().err


def test_shifted_digits_ifm_config_runs_offline(tmp_path):
    import json
    from pathlib import Path

    config = str(Path(__file__).parents[1] / "configs/classic/shifted_digits_ifm.py")
    out = tmp_path / "run"
    sets = ["model.kwargs.widths=(4, 8, 8, 8)", "run.epochs=1", f"run.output={out}", "ifm.locations=2"]
    assert _classic_main([config, *[a for s in sets for a in ("--set", s)]]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["accuracy"]) == {"test", "test_texture"}
    assert len(report["history"][0]["flows"]) == 3
    ifm = torch.load(out / "ifm.pt", weights_only=True)
    assert ifm["pairs"] == [["conv1", "conv2"], ["conv2", "conv3"], ["conv3", "conv4"]]
    backbone = torch.load(out / "backbone.pt", weights_only=True)["backbone"]
    assert not any("critic" in key for key in backbone)
