"""MXFaceDataset, ImageFolderDataset and the transforms, on the mxnet fixture and small sets."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facevib.data.datasets import ImageFolderDataset, MXFaceDataset, read_property
from facevib.data.recordio import (
    MAGIC,
    IndexedRecordReader,
    IndexedRecordWriter,
    RecordHeader,
    RecordIOError,
    pack,
)
from facevib.data.transforms import (
    FaceTransform,
    bgr_to_tensor,
    bgr_to_uint8_tensor,
    check_image_size,
    decode_bgr,
    decode_rgb,
    draw_flip,
    images_to_tensor,
    normalize_images,
)


def _reference_tensor(jpeg: bytes, flip: bool = False) -> torch.Tensor:
    """The network input computed the slow, obvious way: RGB, (x/255 - 0.5)/0.5, CHW, in float64."""
    rgb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64)
    if flip:
        rgb = rgb[:, ::-1]
    return torch.from_numpy(((rgb / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).copy()).float()


def _encode(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def _write_set(directory: Path, records: list[tuple[object, bytes]], first_key: int = 0) -> Path:
    """A no-header set: records are (label, image bytes) at keys first_key, first_key + 1, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    with IndexedRecordWriter(directory / "train.rec") as writer:
        for key, (label, image) in enumerate(records, first_key):
            writer.write_key(key, pack(RecordHeader(0, label, key), image))
    return directory


def _write_ms1m(directory: Path, mxnet_jpegs: list[bytes], labels: list[int], ranges: list[tuple[int, int]]) -> Path:
    """An MS1M-layout set: header record 0, images 1..n, then one identity record per range."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(mxnet_jpegs)
    with IndexedRecordWriter(directory / "train.rec") as writer:
        header = np.array([n + 1, n + 1 + len(ranges)], np.float32)
        writer.write_key(0, pack(RecordHeader(0, header, 0)))
        for key, (label, jpeg) in enumerate(zip(labels, mxnet_jpegs, strict=True), 1):
            writer.write_key(key, pack(RecordHeader(0, float(label), key), jpeg))
        for key, span in enumerate(ranges, n + 1):
            writer.write_key(key, pack(RecordHeader(0, np.array(span, np.float32), key)))
    return directory


# ----------------------------------------------------------------------------- MXFaceDataset


def test_ms1m_fixture_uses_header_and_identity_records(
    mxnet_fixture_dir: Path, mxnet_manifest: dict, mxnet_jpegs
) -> None:
    images = [entry for entry in mxnet_manifest["scalar_label"] if entry["kind"] == "image"]
    for source in (mxnet_fixture_dir, mxnet_fixture_dir / "train", mxnet_fixture_dir / "train.rec"):
        dataset = MXFaceDataset(source, train=False)
        assert len(dataset) == 20 and dataset.num_classes == 4
        np.testing.assert_array_equal(dataset.keys, [entry["key"] for entry in images])
        np.testing.assert_array_equal(dataset.labels, [int(entry["label"]) for entry in images])
        assert dataset.labels.dtype == np.int64
        assert "identity records" in repr(dataset)
    for index in (0, 7, 19):
        image, label = dataset[index]
        assert image.shape == (3, 112, 112) and image.dtype == torch.float32 and isinstance(label, int)
        torch.testing.assert_close(image, _reference_tensor(mxnet_jpegs[index]), atol=1e-6, rtol=0)
        assert label == images[index]["label"]
    # The per-record header scan finds the same labels as the identity records.
    by_headers = MXFaceDataset(mxnet_fixture_dir, labels_from="headers")
    np.testing.assert_array_equal(by_headers.labels, dataset.labels)
    assert "record headers" in repr(by_headers)


def test_no_header_set_uses_all_keys_and_checks_property_count(mxnet_fixture_dir: Path, mxnet_manifest: dict) -> None:
    dataset = MXFaceDataset(mxnet_fixture_dir / "no_header", train=False)
    np.testing.assert_array_equal(dataset.keys, np.arange(20))
    np.testing.assert_array_equal(dataset.labels, [int(entry["label"]) for entry in mxnet_manifest["no_header"]])
    assert dataset.num_classes == 4 and dataset.property_file.num_images == 20
    with pytest.raises(RecordIOError, match="not an MS1M header record"):
        MXFaceDataset(mxnet_fixture_dir / "no_header", labels_from="identities")


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.rec"):
        MXFaceDataset(tmp_path / "missing")
    (tmp_path / "only.rec").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"only\.idx"):
        MXFaceDataset(tmp_path / "only.rec")


def test_array_labels_and_split_headers(tmp_path: Path, mxnet_jpegs) -> None:
    # label[0] of an array label is the class; a header whose id2 holds the magic word is
    # split by the writer inside the header, which the vectorised scan must not misread.
    records = [(np.array([key % 3, 7.0], np.float32), mxnet_jpegs[key]) for key in range(6)]
    directory = _write_set(tmp_path / "array", records)
    with IndexedRecordWriter(directory / "train.rec") as writer:
        for key, (label, jpeg) in enumerate(records):
            writer.write_key(key, pack(RecordHeader(0, label, key, MAGIC if key == 4 else 0), jpeg))
    dataset = MXFaceDataset(directory, train=False)
    np.testing.assert_array_equal(dataset.labels, [0, 1, 2, 0, 1, 2])
    assert dataset.num_classes == 3
    image, label = dataset[4]
    assert label == 1
    torch.testing.assert_close(image, _reference_tensor(mxnet_jpegs[4]), atol=1e-6, rtol=0)


def test_dataloader_with_two_workers_matches_single_process(mxnet_fixture_dir: Path) -> None:
    dataset = MXFaceDataset(mxnet_fixture_dir, train=False)
    expected = torch.stack([dataset[i][0] for i in range(len(dataset))])  # the parent opened the file
    loader = DataLoader(dataset, batch_size=6, num_workers=2, multiprocessing_context="fork")
    images, labels = zip(*loader, strict=True)
    torch.testing.assert_close(torch.cat(images), expected, atol=0, rtol=0)
    np.testing.assert_array_equal(torch.cat(labels).numpy(), dataset.labels)


def test_training_flip_is_random_and_reproducible(mxnet_fixture_dir: Path, mxnet_jpegs) -> None:
    dataset = MXFaceDataset(mxnet_fixture_dir / "no_header", train=True)
    plain, mirrored = _reference_tensor(mxnet_jpegs[3]), _reference_tensor(mxnet_jpegs[3], flip=True)

    def draws(seed: int) -> list[bool]:
        torch.manual_seed(seed)
        flips = []
        for _ in range(24):
            image, _ = dataset[3]
            is_flipped = torch.allclose(image, mirrored, atol=1e-6)
            assert is_flipped or torch.allclose(image, plain, atol=1e-6)
            flips.append(is_flipped)
        return flips

    first = draws(0)
    assert 0 < sum(first) < len(first)
    assert draws(0) == first and draws(1) != first
    assert not MXFaceDataset(mxnet_fixture_dir / "no_header", train=False).transform.train


def test_property_file_is_validated(tmp_path: Path, mxnet_fixture_dir: Path) -> None:
    directory = tmp_path / "set"
    directory.mkdir()
    for name in ("train.rec", "train.idx"):
        (directory / name).write_bytes((mxnet_fixture_dir / "no_header" / name).read_bytes())
    prop = directory / "property"
    for text, pattern in (
        ("4,112\n", "expected 'num_classes,height,width'"),
        ("four,112,112\n", "three integers"),
        ("0,112,112\n", "must be positive"),
        ("4,112,112\nmany\n", "image count"),
        ("3,112,112\n", "num_classes 3 but record key 15 .* has label 3"),
        ("4,112,112\n21\n", "says 21 images"),
        ("4,96,96\n", r"image of shape \(112, 112, 3\).*expected 96x96x3"),
    ):
        prop.write_text(text)
        with pytest.raises(ValueError, match=pattern) as err:
            MXFaceDataset(directory, train=False)[0]
        assert str(prop) in str(err.value) or "record key 0" in str(err.value)
    prop.write_text("6,112,112\n")
    with pytest.warns(UserWarning, match="2 classes have no images"):
        assert MXFaceDataset(directory).num_classes == 6
    assert read_property(mxnet_fixture_dir / "property").num_classes == 4


def test_wrong_size_image_names_key_and_shape(tmp_path: Path, mxnet_jpegs) -> None:
    small = _encode(np.full((100, 90, 3), 128, np.uint8))
    directory = _write_set(tmp_path / "sizes", [(0.0, mxnet_jpegs[0]), (1.0, small)])
    dataset = MXFaceDataset(directory, train=True)
    with pytest.raises(ValueError, match=r"record key 1 at byte offset \d+: image of shape \(100, 90, 3\)"):
        dataset[1]


def test_identity_records_are_checked(tmp_path: Path, mxnet_jpegs) -> None:
    labels = [0, 0, 1, 1, 1]
    good = _write_ms1m(tmp_path / "good", mxnet_jpegs[:5], labels, [(1, 3), (3, 6)])
    np.testing.assert_array_equal(MXFaceDataset(good).labels, labels)
    gap = _write_ms1m(tmp_path / "gap", mxnet_jpegs[:5], labels, [(1, 3), (4, 6)])
    with pytest.raises(RecordIOError, match=r"identity record key 7 at byte offset \d+: image range \[4.0, 6.0\]"):
        MXFaceDataset(gap)
    # Identity ranges that disagree with the images' own labels are caught on read.
    swapped = _write_ms1m(tmp_path / "swapped", mxnet_jpegs[:5], labels, [(1, 4), (4, 6)])
    dataset = MXFaceDataset(swapped, train=False)
    dataset[1]
    with pytest.raises(
        RecordIOError, match="record key 3 at byte offset .*header label 1 but the identity records give 0"
    ):
        dataset[2]


def test_skip_corrupt_counts_and_names_skipped_records(tmp_path: Path, mxnet_jpegs) -> None:
    records = [(float(key % 2), mxnet_jpegs[key]) for key in range(8)]
    records[2] = (0.0, b"not a jpeg at all" * 8)
    directory = _write_set(tmp_path / "corrupt", records)
    offsets = IndexedRecordReader(directory / "train.rec").index
    # Break the frame of key 5 so that even its header cannot be read.
    with open(directory / "train.rec", "r+b") as handle:
        handle.seek(offsets[5])
        handle.write(b"XXXX")

    with pytest.raises(RecordIOError, match=f"key 5 at byte offset {offsets[5]}: bad magic"):
        MXFaceDataset(directory)
    with pytest.warns(UserWarning, match=r"skipped 1 corrupt records while reading labels .*keys \[5\]"):
        dataset = MXFaceDataset(directory, train=False, skip_corrupt=True)
    assert len(dataset) == 7 and 5 not in dataset.keys.tolist()
    assert dataset.skipped == 1 and dataset.skipped_keys == [5]

    with pytest.warns(
        UserWarning, match=r"record key 2 at byte offset \d+: cannot decode.*2 skipped so far, keys \[5, 2\]"
    ):
        image, label = dataset[2]  # replaced by the next sample, key 3
    torch.testing.assert_close(image, _reference_tensor(mxnet_jpegs[3]), atol=1e-6, rtol=0)
    assert label == 1 and dataset.skipped == 2

    # Skips in DataLoader workers are counted where the parent can see them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = MXFaceDataset(directory, train=False, skip_corrupt=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = DataLoader(fresh, batch_size=4, num_workers=2, multiprocessing_context="fork")
        labels = torch.cat([batch[1] for batch in loader])
    assert labels.numel() == 7
    assert fresh.skipped == 2 and sorted(fresh.skipped_keys) == [2, 5]


def test_header_scan_rejects_non_integer_labels(tmp_path: Path, mxnet_jpegs) -> None:
    directory = _write_set(tmp_path / "labels", [(0.0, mxnet_jpegs[0]), (1.5, mxnet_jpegs[1])])
    with pytest.raises(
        RecordIOError, match=r"record key 1 at byte offset \d+: label 1.5 is not a non-negative integer"
    ):
        MXFaceDataset(directory)


# ----------------------------------------------------------------------------- ImageFolderDataset


def test_image_folder_dataset(tmp_path: Path, mxnet_jpegs) -> None:
    root = tmp_path / "faces"
    for name, picks in (("carol", [5, 6]), ("alice", [0, 1, 2]), ("bob", [3])):  # created out of order
        (root / name).mkdir(parents=True)
        for pick in picks:
            (root / name / f"{pick:03d}.jpg").write_bytes(mxnet_jpegs[pick])
    (root / "alice" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"ignored 1 files .*alice/notes.txt"):
        dataset = ImageFolderDataset(root, train=False)
    assert dataset.classes == ["alice", "bob", "carol"] and dataset.num_classes == 3
    np.testing.assert_array_equal(dataset.labels, [0, 0, 0, 1, 2, 2])
    image, label = dataset[3]
    assert label == 1
    torch.testing.assert_close(image, _reference_tensor(mxnet_jpegs[3]), atol=1e-6, rtol=0)

    (root / "bob" / "004.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.warns(UserWarning):
        broken = ImageFolderDataset(root)
    with pytest.raises(ValueError, match=r"bob/004\.jpg: truncated JPEG"):
        broken[4]
    (root / "dave").mkdir()
    with pytest.raises(ValueError, match=r"dave: identity folder has no images"):
        ImageFolderDataset(root)
    with pytest.raises(ValueError, match="no identity folders"):
        ImageFolderDataset(root / "alice")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- transforms


def test_decode_errors_name_where(mxnet_jpegs) -> None:
    for data, pattern in (
        (b"", "empty"),
        (b"GIF89a garbage" * 4, "cannot decode 56 bytes"),
        (mxnet_jpegs[0][:-200], "truncated JPEG"),
    ):
        with pytest.raises(ValueError, match=f"^rec.rec: record key 9 at byte offset 40: {pattern}"):
            decode_rgb(data, where="rec.rec: record key 9 at byte offset 40")
    png = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    assert decode_bgr(png).shape == (112, 112, 3)
    with pytest.raises(ValueError, match=r"k: image of shape \(112, 112, 4\)"):
        check_image_size(np.zeros((112, 112, 4), np.uint8), where="k")


def test_tensor_conversions_match_the_formula(mxnet_jpegs) -> None:
    bgr = decode_bgr(mxnet_jpegs[2])
    torch.testing.assert_close(bgr_to_tensor(bgr), _reference_tensor(mxnet_jpegs[2]), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        bgr_to_tensor(bgr, flip=True), _reference_tensor(mxnet_jpegs[2], flip=True), atol=1e-6, rtol=0
    )
    batch = np.stack([decode_rgb(jpeg) for jpeg in mxnet_jpegs[:4]])
    expected = torch.stack([_reference_tensor(jpeg) for jpeg in mxnet_jpegs[:4]])
    torch.testing.assert_close(images_to_tensor(batch), expected, atol=1e-6, rtol=0)
    out = torch.empty(4, 3, 112, 112)
    assert images_to_tensor(batch, out=out) is out
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert images_to_tensor(np.zeros((2, 112, 112, 3), np.uint8)).min() == -1.0
    assert images_to_tensor(np.full((1, 4, 4, 3), 255, np.uint8)).max() == 1.0
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(batch.astype(np.float32))
    with pytest.raises(ValueError, match="out must be float32"):
        images_to_tensor(batch, out=torch.empty(4, 3, 112, 111))


def test_face_transform_and_flip_draws() -> None:
    with pytest.raises(ValueError, match="flip_p"):
        FaceTransform(flip_p=1.5)
    generator = torch.Generator().manual_seed(3)
    draws = [draw_flip(0.5, generator) for _ in range(200)]
    assert 60 < sum(draws) < 140
    again = torch.Generator().manual_seed(3)
    assert draws == [draw_flip(0.5, again) for _ in range(200)]
    assert not any(draw_flip(0.0) for _ in range(50)) and all(draw_flip(1.0) for _ in range(50))


def test_uint8_output_normalised_per_batch(mxnet_fixture_dir: Path, mxnet_jpegs) -> None:
    raw = MXFaceDataset(mxnet_fixture_dir / "no_header", train=False, normalize=False)
    image, label = raw[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112) and label == 1
    expected_rgb = cv2.imdecode(np.frombuffer(mxnet_jpegs[5], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected_rgb)
    batch = torch.stack([raw[i][0] for i in range(4)])
    expected = torch.stack([_reference_tensor(mxnet_jpegs[i]) for i in range(4)])
    torch.testing.assert_close(normalize_images(batch), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(batch.float())
    # The uint8 flip is the same mirror as the float one.
    bgr = decode_bgr(mxnet_jpegs[5])
    flipped = bgr_to_uint8_tensor(bgr, flip=True)
    torch.testing.assert_close(normalize_images(flipped), bgr_to_tensor(bgr, flip=True), atol=1e-6, rtol=0)
