"""The MS1M RecordIO layout (facevib.data.ms1m_layout) against the set mxnet wrote, and its three users.

The reference is ``tests/fixtures/mxnet_rec``: 20 images of 4 identities written by mxnet 1.9.1
with the header record (flag 2, labels [21, 25]) and identity records (keys 21-24, labels
[first image key, end key)), plus the same images without header under ``no_header/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facevib.data.datasets import MXFaceDataset
from facevib.data.inspect import summarize_rec
from facevib.data.ms1m_layout import (
    MS1MHeader,
    MS1MLayoutError,
    check_identity_records,
    identity_ranges_for_counts,
    identity_record,
    labels_from_ranges,
    parse_header_record,
    read_header_record,
)
from facevib.data.pack import write_ms1m
from facevib.data.recordio import (
    IndexedRecordReader,
    IndexedRecordWriter,
    RecordHeader,
    RecordReader,
    pack,
    scan_headers,
    unpack,
)


def _entries(mxnet_manifest: dict, kind: str) -> list[dict]:
    return [entry for entry in mxnet_manifest["scalar_label"] if entry["kind"] == kind]


def _write_records(directory: Path, records: dict[int, bytes]) -> Path:
    """``{key: payload}`` written as ``directory/train.rec`` + ``.idx`` in key order."""
    directory.mkdir(parents=True, exist_ok=True)
    with IndexedRecordWriter(directory / "train.rec") as writer:
        for key in sorted(records):
            writer.write_key(key, records[key])
    return directory


def _ms1m_records(mxnet_jpegs: list[bytes], counts: list[int]) -> dict[int, bytes]:
    """The records of an MS1M set as a dict, to be edited into malformed variants by the tests."""
    header = MS1MHeader.for_counts(sum(counts), len(counts))
    ranges = identity_ranges_for_counts(counts)
    labels = labels_from_ranges(ranges)
    records = {0: pack(header.record())}
    for key, label in zip(header.image_keys.tolist(), labels.tolist(), strict=True):
        records[key] = pack(RecordHeader(0, float(label), key), mxnet_jpegs[key - 1])
    for key, (start, end) in zip(header.identity_keys.tolist(), ranges.tolist(), strict=True):
        records[key] = pack(identity_record(key, start, end))
    return records


# ----------------------------------------------------------------------------- against mxnet's bytes


def test_header_and_identity_records_read_as_mxnet_wrote_them(mxnet_fixture_dir: Path, mxnet_manifest: dict) -> None:
    reader = IndexedRecordReader(mxnet_fixture_dir / "train.rec")
    (header_entry,) = _entries(mxnet_manifest, "header")
    header = read_header_record(reader, reader.index[0])
    assert header == MS1MHeader(*header_entry["label"]) == MS1MHeader(21, 25)
    assert header.num_images == 20 and header.num_identities == 4
    np.testing.assert_array_equal(header.image_keys, [e["key"] for e in _entries(mxnet_manifest, "image")])
    identities = _entries(mxnet_manifest, "identity")
    np.testing.assert_array_equal(header.identity_keys, [e["key"] for e in identities])

    offsets = np.array([reader.index[key] for key in header.identity_keys.tolist()], np.int64)
    np.testing.assert_array_equal(offsets, [e["offset"] for e in identities])
    scan = scan_headers(reader, header.identity_keys, offsets, n_labels=2, collect_errors=False)
    ranges = check_identity_records(header, scan.flags, scan.labels, scan.body_bytes, offsets, reader.path)
    np.testing.assert_array_equal(ranges, [e["label"] for e in identities])
    np.testing.assert_array_equal(labels_from_ranges(ranges), [e["label"] for e in _entries(mxnet_manifest, "image")])


def test_records_we_build_equal_the_payloads_mxnet_wrote(mxnet_fixture_dir: Path, mxnet_manifest: dict) -> None:
    reader = IndexedRecordReader(mxnet_fixture_dir / "train.rec")
    assert pack(MS1MHeader(21, 25).record()) == reader.read(0)
    for entry in _entries(mxnet_manifest, "identity"):
        assert pack(identity_record(entry["key"], *entry["label"])) == reader.read(entry["key"])
    np.testing.assert_array_equal(
        identity_ranges_for_counts([5, 5, 5, 5]), [e["label"] for e in _entries(mxnet_manifest, "identity")]
    )


def test_pack_writer_reproduces_the_mxnet_file_byte_for_byte(
    tmp_path: Path, mxnet_fixture_dir: Path, mxnet_jpegs
) -> None:
    summary = write_ms1m(tmp_path / "train", [5, 5, 5, 5], mxnet_jpegs)
    assert summary["header"] == [21, 25]
    assert (tmp_path / "train.rec").read_bytes() == (mxnet_fixture_dir / "train.rec").read_bytes()
    assert (tmp_path / "train.idx").read_bytes() == (mxnet_fixture_dir / "train.idx").read_bytes()


def test_sets_without_header_record(mxnet_fixture_dir: Path, tmp_path: Path, mxnet_jpegs) -> None:
    reader = IndexedRecordReader(mxnet_fixture_dir / "no_header" / "train.rec")
    assert read_header_record(reader, reader.index[0]) is None  # record 0 is an image with a scalar label
    # An image with an array label has flag > 0 too: its image bytes keep it from being a header.
    image = RecordHeader(2, np.array([3.0, 7.0], np.float32), 0)
    assert parse_header_record(unpack(pack(image, mxnet_jpegs[0]))[0], len(mxnet_jpegs[0]), where="k0") is None
    directory = _write_records(
        tmp_path / "array",
        {key: pack(RecordHeader(2, np.array([key % 2, 9], np.float32), key), mxnet_jpegs[key]) for key in range(4)},
    )
    dataset = MXFaceDataset(directory, train=False)
    np.testing.assert_array_equal(dataset.keys, [0, 1, 2, 3])
    np.testing.assert_array_equal(dataset.labels, [0, 1, 0, 1])
    summary = summarize_rec(directory)
    assert summary.layout.startswith("plain records") and summary.problems == []
    np.testing.assert_array_equal(summary.labels, [0, 1, 0, 1])


def test_dataset_inspect_and_pack_agree_on_the_layout(tmp_path: Path, mxnet_jpegs) -> None:
    counts = [3, 1, 4, 2]
    write_ms1m(tmp_path / "train", counts, mxnet_jpegs[:10])
    expected = np.repeat(np.arange(4), counts)
    dataset = MXFaceDataset(tmp_path, train=False)
    summary = summarize_rec(tmp_path)
    np.testing.assert_array_equal(dataset.keys, np.arange(1, 11))
    np.testing.assert_array_equal(summary.image_keys, np.arange(1, 11))
    np.testing.assert_array_equal(dataset.labels, expected)
    np.testing.assert_array_equal(summary.labels, expected)
    assert summary.layout == "MS1M header: record 0 labels [11, 15], identity records 11..14"
    assert summary.problems == []
    # Labels read from every image's header equal those of the identity records.
    np.testing.assert_array_equal(MXFaceDataset(tmp_path, labels_from="headers").labels, expected)


# ----------------------------------------------------------------------------- malformed layouts


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (RecordHeader(1, np.array([5.0], np.float32), 0), r"header record \(flag 1, no image\) has 1 label\(s\)"),
        (RecordHeader(2, np.array([5.5, 9.0], np.float32), 0), r"header labels \[5.5, 9.0\] are not"),
        (RecordHeader(2, np.array([9.0, 5.0], np.float32), 0), r"header labels \[9.0, 5.0\] are not"),
        (RecordHeader(2, np.array([0.0, 5.0], np.float32), 0), r"header labels \[0.0, 5.0\] are not"),
        (RecordHeader(2, np.array([np.nan, 5.0], np.float32), 0), r"header labels \[nan, 5.0\] are not"),
    ],
)
def test_malformed_header_record_is_an_error_naming_file_and_key(tmp_path: Path, mxnet_jpegs, header, message) -> None:
    records = _ms1m_records(mxnet_jpegs, [2, 2])
    records[0] = pack(header)
    directory = _write_records(tmp_path / "bad", records)
    where = rf"{directory / 'train.rec'}: record key 0 at byte offset 0: "
    with pytest.raises(MS1MLayoutError, match=where + message):
        read_header_record(RecordReader(directory / "train.rec"), 0)
    with pytest.raises(MS1MLayoutError, match=where + message):
        MXFaceDataset(directory)
    with pytest.raises(MS1MLayoutError, match=where + message):
        summarize_rec(directory)


def test_header_record_that_does_not_unpack_names_file_and_key(tmp_path: Path, mxnet_jpegs) -> None:
    records = _ms1m_records(mxnet_jpegs, [2, 2])
    records[0] = pack(RecordHeader(0, 0.0, 0))[:20]  # shorter than the IfQQ header
    directory = _write_records(tmp_path / "short", records)
    with pytest.raises(MS1MLayoutError, match=r"train.rec: record key 0 at byte offset 0: record of 20 bytes"):
        MXFaceDataset(directory)


@pytest.mark.parametrize(
    ("key", "record", "message"),
    [
        (
            6,
            pack(identity_record(6, 3, 4)),
            r"identity record key 6 at byte offset \d+: image range \[3.0, 4.0\] is the last",
        ),
        (
            6,
            pack(identity_record(6, 2, 5)),
            r"identity record key 6 at byte offset \d+: image range \[2.0, 5.0\] does not continue",
        ),
        (
            6,
            pack(identity_record(6, 3, 2.5)),
            r"identity record key 6 at byte offset \d+: image range \[3.0, 2.5\] is not an ordered",
        ),
        (
            6,
            pack(RecordHeader(0, 1.0, 6), b"jpeg"),
            r"record key 6 at byte offset \d+: expected an identity record \(flag >= 2, no image\), got flag 0 with 4",
        ),
    ],
)
def test_malformed_identity_records_name_key_and_offset(tmp_path: Path, mxnet_jpegs, key, record, message) -> None:
    records = _ms1m_records(mxnet_jpegs, [2, 2])  # header [5, 7): images 1-4, identity records 5 and 6
    records[key] = record
    directory = _write_records(tmp_path / "bad", records)
    offset = IndexedRecordReader(directory / "train.rec").index[key]
    with pytest.raises(MS1MLayoutError, match=message):
        MXFaceDataset(directory)
    # inspect reports the broken identity records and falls back to each image's own label.
    summary = summarize_rec(directory)
    assert len(summary.problems) == 1 and f"record key {key} at byte offset {offset}" in summary.problems[0]
    assert summary.layout == "MS1M header: record 0 labels [5, 7]"
    np.testing.assert_array_equal(summary.labels, [0, 0, 1, 1])


def test_inspect_reports_missing_identity_and_image_records(tmp_path: Path, mxnet_jpegs) -> None:
    records = _ms1m_records(mxnet_jpegs, [2, 2])
    del records[6]
    summary = summarize_rec(_write_records(tmp_path / "no_identity", records))
    assert summary.problems == [
        "record 0 is a header with labels [5, 7] but 1 of its identity records are not in the index [6]; "
        "labels are read from the image records"
    ]
    np.testing.assert_array_equal(summary.labels, [0, 0, 1, 1])

    records = _ms1m_records(mxnet_jpegs, [2, 2])
    del records[3]
    records[9] = pack(RecordHeader(0, 1.0, 9), mxnet_jpegs[8])
    summary = summarize_rec(_write_records(tmp_path / "gaps", records))
    assert summary.problems == [
        "1 index keys lie outside the header's ranges [1, 7): [9]",
        "1 image keys of the header's range 1..4 are not in the index: [3]",
    ]
    np.testing.assert_array_equal(summary.image_keys, [1, 2, 4])
    np.testing.assert_array_equal(summary.labels, [0, 0, 1])


def test_inspect_spot_check_finds_identity_ranges_that_disagree_with_image_labels(tmp_path: Path, mxnet_jpegs) -> None:
    records = _ms1m_records(mxnet_jpegs, [2, 2])
    records[5], records[6] = pack(identity_record(5, 1, 2)), pack(identity_record(6, 2, 5))  # images 0, 0, 1, 1
    summary = summarize_rec(_write_records(tmp_path / "shifted", records))
    assert summary.problems == ["identity record 6 (label 1) starts at image key 2, whose own label is 0"]
    np.testing.assert_array_equal(summary.labels, [0, 1, 1, 1])  # what the identity records say
