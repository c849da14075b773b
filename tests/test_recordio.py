"""facevib.data.recordio against files written by real mxnet 1.9.1 (tests/fixtures/mxnet_rec)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from facevib.data.datasets import MXFaceDataset
from facevib.data.recordio import (
    IndexedRecordReader,
    IndexedRecordWriter,
    RecordHeader,
    RecordIOError,
    RecordReader,
    RecordWriter,
    encode_record,
    pack,
    read_index,
    read_index_arrays,
    unpack,
)
from facevib.data.transforms import decode_rgb

# Layout of the sets in the fixture: manifest section -> directory below the fixture root.
SETS = {"scalar_label": ".", "no_header": "no_header"}


@pytest.fixture(scope="module")
def jpeg_by_md5(mxnet_fixture_dir: Path) -> dict[str, bytes]:
    """The JPEG bytes of every fixture image, by md5 (the array-label set reuses them)."""
    reader = IndexedRecordReader(mxnet_fixture_dir / "train.rec")
    images = {}
    for key in reader.keys:
        _, image = unpack(reader.read(key))
        images[hashlib.md5(image).hexdigest()] = bytes(image)
    return images


def _frame(cflag: int, length: int) -> bytes:
    """magic + length word, written from the format description (not from the module)."""
    return struct.pack("<II", 0xCED7230A, (cflag << 29) | length)


def _check_record(entry: dict, payload: bytes) -> None:
    """``payload`` carries exactly what the manifest says mxnet packed for ``entry``."""
    header, image = unpack(payload)
    where = f"key {entry['key']}"
    assert header.flag == entry["flag"], where
    assert header.id == entry["id"] and header.id2 == entry["id2"], where
    if entry["flag"] == 0:
        assert isinstance(header.label, float) and header.label == entry["label"], where
    else:
        np.testing.assert_array_equal(header.label, np.asarray(entry["label"], np.float32), err_msg=where)
    assert len(image) == entry["payload_len"], where
    if entry["kind"] == "image":
        assert len(payload) == entry["record_len"], where
        assert hashlib.md5(image).hexdigest() == entry["jpeg_md5"], where
    else:
        assert len(payload) == 24 + 4 * entry["flag"], where


@pytest.mark.parametrize("section", sorted(SETS))
def test_indexed_reader_returns_what_mxnet_wrote(mxnet_fixture_dir: Path, mxnet_manifest: dict, section: str) -> None:
    entries = mxnet_manifest[section]
    reader = IndexedRecordReader(mxnet_fixture_dir / SETS[section] / "train.rec")
    assert reader.keys == [entry["key"] for entry in entries]
    assert len(reader) == len(entries)
    for entry in reversed(entries):  # random order: nothing depends on a file position
        assert reader.index[entry["key"]] == entry["offset"]
        _check_record(entry, reader.read(entry["key"]))
    with pytest.raises(KeyError, match="no record with key 999"):
        reader.read(999)


@pytest.mark.parametrize("section", sorted(SETS))
def test_sequential_scan_without_index(
    mxnet_fixture_dir: Path, mxnet_manifest: dict, section: str, tmp_path: Path
) -> None:
    # Only the .rec, with no .idx beside it: records come back in file order.
    rec = tmp_path / "train.rec"
    shutil.copy(mxnet_fixture_dir / SETS[section] / "train.rec", rec)
    records = list(RecordReader(rec).scan())
    entries = mxnet_manifest[section]
    assert [offset for offset, _ in records] == [entry["offset"] for entry in entries]
    for entry, (_, payload) in zip(entries, records, strict=True):
        _check_record(entry, payload)
    with pytest.raises(FileNotFoundError, match="train.idx"):
        IndexedRecordReader(rec)


def test_images_decode_to_the_rgb_pixels_pil_sees(mxnet_fixture_dir: Path, mxnet_manifest: dict) -> None:
    reader = IndexedRecordReader(mxnet_fixture_dir / "train.rec")
    for entry in mxnet_manifest["scalar_label"]:
        if entry["kind"] != "image":
            continue
        _, jpeg = unpack(reader.read(entry["key"]))
        rgb = decode_rgb(jpeg, where=f"key {entry['key']}")
        assert rgb.shape == (112, 112, 3) and rgb.dtype == np.uint8
        # PIL is an independent decoder that returns RGB: same channel order, and pixels
        # within IDCT rounding of each other.
        reference = np.asarray(Image.open(io.BytesIO(bytes(jpeg))).convert("RGB"))
        diff = np.abs(rgb.astype(np.int16) - reference.astype(np.int16))
        assert diff.mean() < 1.0 and diff.max() <= 8, entry["key"]
        swapped = np.abs(rgb[:, :, ::-1].astype(np.int16) - reference.astype(np.int16)).mean()
        assert swapped > 5 * max(diff.mean(), 0.1), "channel order looks like BGR"


@pytest.mark.parametrize("section", sorted(SETS))
def test_writer_reproduces_mxnet_files_byte_for_byte(
    mxnet_fixture_dir: Path, mxnet_manifest: dict, jpeg_by_md5: dict[str, bytes], section: str, tmp_path: Path
) -> None:
    source = mxnet_fixture_dir / SETS[section]
    out = tmp_path / "train.rec"
    with IndexedRecordWriter(out) as writer:
        for entry in mxnet_manifest[section]:
            label = entry["label"] if entry["flag"] == 0 else np.asarray(entry["label"], np.float32)
            image = jpeg_by_md5[entry["jpeg_md5"]] if entry["kind"] == "image" else b""
            offset = writer.write_key(entry["key"], pack(RecordHeader(0, label, entry["id"], entry["id2"]), image))
            assert offset == entry["offset"]
    assert out.read_bytes() == (source / "train.rec").read_bytes()
    assert out.with_suffix(".idx").read_bytes() == (source / "train.idx").read_bytes()


def test_array_labels_round_trip_at_mxnets_offsets(
    mxnet_manifest: dict, jpeg_by_md5: dict[str, bytes], tmp_path: Path
) -> None:
    entries = mxnet_manifest["array_label"]
    scalar = {entry["key"]: entry for entry in mxnet_manifest["scalar_label"]}
    out = tmp_path / "array.rec"
    with IndexedRecordWriter(out) as writer:
        for entry in entries:
            image = jpeg_by_md5[scalar[entry["key"]]["jpeg_md5"]] if entry["kind"] == "image" else b""
            payload = pack(RecordHeader(0, np.asarray(entry["label"], np.float32), entry["id"], entry["id2"]), image)
            if entry["kind"] == "image":
                assert len(payload) == entry["record_len"]
            assert writer.write_key(entry["key"], payload) == entry["offset"]
    reader = IndexedRecordReader(out)
    assert read_index(out.with_suffix(".idx")) == {entry["key"]: entry["offset"] for entry in entries}
    for entry in entries:
        payload = reader.read(entry["key"])
        header, image = unpack(payload)
        assert header.flag == 2 == len(entry["label"])
        np.testing.assert_array_equal(header.label, np.asarray(entry["label"], np.float32))
        assert len(image) == entry["payload_len"]
        if entry["kind"] == "image":
            assert hashlib.md5(image).hexdigest() == scalar[entry["key"]]["jpeg_md5"]


def test_magic_in_payload_is_split_as_dmlc_core_does(mxnet_manifest: dict, tmp_path: Path) -> None:
    payload = bytes.fromhex(mxnet_manifest["magic_split_payload_hex"])
    magic = struct.pack("<I", 0xCED7230A)
    assert payload[4:8] == magic and payload[12:16] == magic  # the aligned escapes
    tail = payload[16:]
    # dmlc-core RecordIOWriter::WriteRecord: cflag 1 = first part, 2 = middle, 3 = last; the
    # magic words are dropped, zero padding to 4 bytes follows the last part only.
    expected = (
        _frame(1, 4)
        + payload[:4]
        + _frame(2, 4)
        + payload[8:12]
        + _frame(3, len(tail))
        + tail
        + b"\0" * (-len(tail) % 4)
    )
    assert encode_record(payload) == expected

    # Edge cases: a payload that is all magic words, one that starts and ends with one,
    # and a magic word at an unaligned position (not escaped).
    assert encode_record(magic) == _frame(1, 0) + _frame(3, 0)
    edge = magic + b"abcd" + magic
    assert encode_record(edge) == _frame(1, 0) + _frame(2, 4) + b"abcd" + _frame(3, 0)
    unaligned = b"x" + magic + b"yyy"
    assert encode_record(unaligned) == _frame(0, 8) + unaligned

    rec = tmp_path / "split.rec"
    with IndexedRecordWriter(rec) as writer:
        for key, data in enumerate([payload, b"after", magic, edge, unaligned]):
            writer.write_key(key, data)
    reader = IndexedRecordReader(rec)
    assert [reader.read(key) for key in range(5)] == [payload, b"after", magic, edge, unaligned]
    assert [data for _, data in RecordReader(rec).scan()] == [payload, b"after", magic, edge, unaligned]


# ----------------------------------------------------------------------------- corruption


def _copy_set(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("train.rec", "train.idx"):
        shutil.copy(source / name, target / name)
    return target / "train.rec"


def _names(message: str, path: Path, key: int, offset: int) -> bool:
    return str(path) in message and f"key {key}" in message and f"byte offset {offset}" in message


def test_bad_magic_names_file_key_and_offset(mxnet_fixture_dir: Path, mxnet_manifest: dict, tmp_path: Path) -> None:
    rec = _copy_set(mxnet_fixture_dir, tmp_path)
    offset = mxnet_manifest["scalar_label"][5]["offset"]
    with open(rec, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00\x11\x22\x33")
    with pytest.raises(RecordIOError, match="bad magic 0x33221100") as err:
        IndexedRecordReader(rec).read(5)
    assert _names(str(err.value), rec, 5, offset)
    with pytest.raises(RecordIOError, match=f"byte offset {offset}: bad magic"):
        list(RecordReader(rec).scan())


def test_truncated_record_names_file_key_and_offset(
    mxnet_fixture_dir: Path, mxnet_manifest: dict, tmp_path: Path
) -> None:
    rec = _copy_set(mxnet_fixture_dir / "no_header", tmp_path)
    last = mxnet_manifest["no_header"][-1]
    with open(rec, "r+b") as handle:
        handle.truncate(last["offset"] + 100)
    reader = IndexedRecordReader(rec)
    reader.read(last["key"] - 1)  # the records before it are intact
    with pytest.raises(RecordIOError, match="truncated") as err:
        reader.read(last["key"])
    assert _names(str(err.value), rec, last["key"], last["offset"])
    with open(rec, "r+b") as handle:  # now cut inside the 8-byte frame header
        handle.truncate(last["offset"] + 5)
    with pytest.raises(RecordIOError, match="truncated") as err:
        IndexedRecordReader(rec).read(last["key"])
    assert _names(str(err.value), rec, last["key"], last["offset"])


def test_index_offset_past_the_end(mxnet_fixture_dir: Path, tmp_path: Path) -> None:
    rec = _copy_set(mxnet_fixture_dir / "no_header", tmp_path)
    size = rec.stat().st_size
    rec.with_suffix(".idx").write_text(f"0\t0\n3\t{size + 1000}\n")
    with pytest.raises(RecordIOError, match="past the end") as err:
        IndexedRecordReader(rec)
    message = str(err.value)
    assert str(rec.with_suffix(".idx")) in message and str(rec) in message
    assert "key 3" in message and f"byte offset {size + 1000}" in message
    with pytest.raises(RecordIOError, match="past the end") as err:
        MXFaceDataset(rec)
    assert "key 3" in str(err.value) and f"byte offset {size + 1000}" in str(err.value)


def test_index_of_another_file(mxnet_fixture_dir: Path, mxnet_manifest: dict) -> None:
    # The no_header index has the same keys at other offsets: key 1 lands inside an image.
    rec = mxnet_fixture_dir / "train.rec"
    reader = IndexedRecordReader(rec, mxnet_fixture_dir / "no_header" / "train.idx")
    offset = mxnet_manifest["no_header"][1]["offset"]
    with pytest.raises(RecordIOError, match="bad magic") as err:
        reader.read(1)
    assert _names(str(err.value), rec, 1, offset)


@pytest.mark.parametrize(
    ("text", "line", "byte", "pattern"),
    [
        ("0\t0\n1\tabc\n", 2, 4, "expected 'key<TAB>offset', got '1\\\\tabc'"),
        ("0\t0\n1 40\n", 2, 4, "expected 'key<TAB>offset'"),
        ("0\t0\n1\t40\t7\n", 2, 4, "expected 'key<TAB>offset'"),
        ("0\t0\n1\t-40\n", 2, 4, "expected 'key<TAB>offset'"),
        ("0\t0\n1\t40\n0\t80\n", 3, 9, "key 0 appears twice"),
        ("0\t0\n1\t99999999999999999999\n", 2, 4, "overflows 64 bits"),
    ],
)
def test_malformed_index_line(tmp_path: Path, text: str, line: int, byte: int, pattern: str) -> None:
    idx = tmp_path / "bad.idx"
    idx.write_text(text)
    for parse in (read_index, read_index_arrays):
        with pytest.raises(RecordIOError, match=pattern) as err:
            parse(idx)
        assert f"{idx}:{line} (byte offset {byte})" in str(err.value)


def test_index_parsers_agree(tmp_path: Path, mxnet_fixture_dir: Path) -> None:
    # Both parse paths (numpy fast path, line-by-line fallback for CRLF files) give mxnet's index.
    keys, offsets = read_index_arrays(mxnet_fixture_dir / "train.idx")
    crlf = tmp_path / "crlf.idx"
    crlf.write_bytes((mxnet_fixture_dir / "train.idx").read_bytes().replace(b"\n", b"\r\n"))
    keys2, offsets2 = read_index_arrays(crlf)
    np.testing.assert_array_equal(keys, keys2)
    np.testing.assert_array_equal(offsets, offsets2)
    assert keys.dtype == offsets.dtype == np.int64
    assert read_index(mxnet_fixture_dir / "train.idx") == dict(zip(keys.tolist(), offsets.tolist(), strict=True))
    (tmp_path / "empty.idx").write_text("")
    assert read_index_arrays(tmp_path / "empty.idx")[0].size == 0


def test_continuation_flag_out_of_sequence(tmp_path: Path) -> None:
    rec = tmp_path / "seq.rec"
    rec.write_bytes(_frame(2, 4) + b"abcd")  # a middle part with no first part
    with pytest.raises(RecordIOError, match="continuation flag 2 at byte 0 is out of sequence"):
        RecordReader(rec).read_at(0, key=7)


def test_undecodable_image_names_file_key_and_offset(mxnet_fixture_dir: Path, tmp_path: Path) -> None:
    reader = IndexedRecordReader(mxnet_fixture_dir / "no_header" / "train.rec")
    _, jpeg = unpack(reader.read(0))
    rec = tmp_path / "train.rec"
    with IndexedRecordWriter(rec) as writer:
        good = writer.write_key(0, pack(RecordHeader(0, 0.0, 0), jpeg))
        garbage = writer.write_key(1, pack(RecordHeader(0, 0.0, 1), b"this is not an image" * 10))
        truncated = writer.write_key(2, pack(RecordHeader(0, 1.0, 2), bytes(jpeg)[:-300]))
        empty = writer.write_key(3, pack(RecordHeader(0, 1.0, 3), b""))
    dataset = MXFaceDataset(tmp_path, train=False)
    assert dataset[0][0].shape == (3, 112, 112) and good == 0
    for index, offset, what in ((1, garbage, "cannot decode"), (2, truncated, "truncated JPEG"), (3, empty, "empty")):
        with pytest.raises(ValueError, match=what) as err:
            dataset[index]
        assert _names(str(err.value), rec, index, offset)


# ----------------------------------------------------------------------------- per-process handles


class _DescriptorProbe(Dataset):
    """Reads one record per item and reports which process and descriptor did it."""

    def __init__(self, reader: IndexedRecordReader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        key = self.reader.keys[index]
        payload = self.reader.read(key)
        fd = self.reader._fd
        return {
            "key": key,
            "md5": hashlib.md5(payload).hexdigest(),
            "pid": os.getpid(),
            "reader_pid": self.reader._pid,
            "fd": fd,
            "fd_target": os.readlink(f"/proc/self/fd/{fd}"),
        }


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_forked_workers_open_their_own_descriptor(mxnet_fixture_dir: Path) -> None:
    rec = mxnet_fixture_dir / "train.rec"
    reader = IndexedRecordReader(rec)
    expected = {key: hashlib.md5(reader.read(key)).hexdigest() for key in reader.keys}  # opens in the parent
    parent_fd = reader._fd
    assert parent_fd is not None and reader._pid == os.getpid()

    loader = DataLoader(
        _DescriptorProbe(reader),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
        generator=torch.Generator().manual_seed(0),
    )
    items = list(loader)
    assert {item["key"]: item["md5"] for item in items} == expected
    worker_pids = {item["pid"] for item in items}
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    for item in items:
        assert item["reader_pid"] == item["pid"]  # the reader noticed the fork and reopened
        assert item["fd"] != parent_fd  # the inherited descriptor is still open, so a new number
        assert Path(item["fd_target"]) == rec.resolve()
    # The parent's descriptor is untouched and still reads.
    assert reader._fd == parent_fd
    assert hashlib.md5(reader.read(1)).hexdigest() == expected[1]


def test_reader_pickles_without_its_descriptor(mxnet_fixture_dir: Path) -> None:
    import pickle

    reader = IndexedRecordReader(mxnet_fixture_dir / "train.rec")
    payload = reader.read(3)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fd is None and clone.read(3) == payload
    assert clone._fd is not None and clone._fd != reader._fd
    clone.close()
    reader.close()
    assert reader._fd is None and reader.read(3) == payload


def test_writer_refuses_duplicate_keys(tmp_path: Path) -> None:
    with IndexedRecordWriter(tmp_path / "dup.rec") as writer:
        writer.write_key(0, b"abc")
        with pytest.raises(RecordIOError, match="key 0 written twice"):
            writer.write_key(0, b"def")
    with RecordWriter(tmp_path / "plain.rec") as writer:
        assert writer.write(b"abc") == 0 and writer.tell() == 12
    assert (tmp_path / "plain.rec").read_bytes() == _frame(0, 3) + b"abc\0"


def test_decoding_matches_cv2_bgr_reversed(mxnet_fixture_dir: Path) -> None:
    # decode_rgb is cv2's BGR decode with the channels reversed (mx.image.imdecode's RGB).
    _, jpeg = unpack(IndexedRecordReader(mxnet_fixture_dir / "train.rec").read(7))
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decode_rgb(jpeg), bgr[:, :, ::-1])
