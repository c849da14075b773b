"""The MS1M RecordIO layout: header record, identity records and their label ranges.

insightface distributes MS1M, Glint and WebFace sets as indexed RecordIO (``train.rec`` +
``train.idx``) laid out as follows (``tests/fixtures/mxnet_rec`` holds a set written by
mxnet itself):

* key 0 is the **header record**: no image, ``flag > 0`` and ``label[0:2] =
  [first_identity_key, end_key)``;
* keys ``1 .. first_identity_key - 1`` are the **images**, each labelled with its class id;
* keys ``first_identity_key .. end_key - 1`` are the **identity records**, one per class in
  class order, no image, ``label[0:2] = [first_image_key, end_image_key)``: class ``c`` owns
  exactly the image keys of the ``c``-th range, and the ranges tile ``1 ..
  first_identity_key - 1`` in order.

Sets written by newer tools have no header record: every key is an image. This module is the
only place that knows the layout; the dataset, ``inspect`` and ``pack`` all go through it.

The header rule follows insightface's reader, which takes record 0 as the header when its
``flag > 0`` (it then has a label array). One refinement: an image stored with an array
label also has ``flag > 0``, so a record 0 that carries image bytes is an image of a set
without header, never a header. A record 0 with ``flag > 0``, no image and fewer than two
labels, or labels that are not ordered integer keys, is a malformed header: an error naming
the file, key and byte offset (insightface would fail later with an index error).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facevib.data.recordio import RecordHeader, RecordIOError, RecordReader, record_where

__all__ = [
    "FIRST_IMAGE_KEY",
    "HEADER_KEY",
    "MS1MHeader",
    "MS1MLayoutError",
    "RANGE_LABELS",
    "check_identity_records",
    "identity_ranges_for_counts",
    "identity_record",
    "integral_keys",
    "labels_from_ranges",
    "parse_header_record",
    "read_header_record",
]

HEADER_KEY = 0
FIRST_IMAGE_KEY = 1
RANGE_LABELS = 2  # a header or identity record's labels start with a [first, end) key range
_MAX_KEY = 2**31  # keys are stored as float32 labels; a value this large is garbage, not a key


class MS1MLayoutError(RecordIOError):
    """A header or identity record breaks the MS1M layout; the message names file, key and byte offset."""


@dataclass(frozen=True)
class MS1MHeader:
    """The ranges that record 0 of an MS1M set announces.

    ``first_identity_key`` is both the first identity record's key and one past the last
    image key; ``end_key`` is one past the last identity record's key.
    """

    first_identity_key: int
    end_key: int

    def __post_init__(self) -> None:
        if not FIRST_IMAGE_KEY <= self.first_identity_key <= self.end_key:
            raise ValueError(
                f"MS1M header needs {FIRST_IMAGE_KEY} <= first_identity_key <= end_key, "
                f"got [{self.first_identity_key}, {self.end_key})"
            )

    @classmethod
    def for_counts(cls, num_images: int, num_identities: int) -> MS1MHeader:
        """The header of a set with ``num_images`` images (keys 1..n) and ``num_identities`` classes."""
        first_identity = FIRST_IMAGE_KEY + num_images
        return cls(first_identity, first_identity + num_identities)

    @property
    def image_keys(self) -> np.ndarray:
        """Keys of the image records, int64."""
        return np.arange(FIRST_IMAGE_KEY, self.first_identity_key, dtype=np.int64)

    @property
    def identity_keys(self) -> np.ndarray:
        """Keys of the identity records (class ``c`` at position ``c``), int64."""
        return np.arange(self.first_identity_key, self.end_key, dtype=np.int64)

    @property
    def num_images(self) -> int:
        return self.first_identity_key - FIRST_IMAGE_KEY

    @property
    def num_identities(self) -> int:
        return self.end_key - self.first_identity_key

    def record(self) -> RecordHeader:
        """Record 0 as insightface's sets store it: ``flag = 2``, labels ``[first_identity_key, end_key]``."""
        return RecordHeader(RANGE_LABELS, np.array([self.first_identity_key, self.end_key], np.float32), 0, 0)


def identity_record(key: int, first_image_key: int, end_image_key: int) -> RecordHeader:
    """The identity record stored under ``key`` for the images ``[first_image_key, end_image_key)``."""
    return RecordHeader(RANGE_LABELS, np.array([first_image_key, end_image_key], np.float32), key, 0)


def identity_ranges_for_counts(counts: Sequence[int]) -> np.ndarray:
    """``(len(counts), 2)`` int64 image-key ranges of classes with ``counts[c]`` images each, in order."""
    ends = FIRST_IMAGE_KEY + np.cumsum(np.asarray(counts, dtype=np.int64))
    starts = np.concatenate([[FIRST_IMAGE_KEY], ends[:-1]]).astype(np.int64)
    return np.stack([starts, ends], axis=1) if len(counts) else np.zeros((0, 2), np.int64)


def labels_from_ranges(ranges: np.ndarray) -> np.ndarray:
    """Class id of every image key, in key order, from checked identity ranges (int64)."""
    ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    return np.repeat(np.arange(len(ranges), dtype=np.int64), ranges[:, 1] - ranges[:, 0])


def integral_keys(values: np.ndarray) -> np.ndarray:
    """Mask of finite, integral, non-negative values small enough to be record keys."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0) & (values < _MAX_KEY) & (np.floor(values) == values)


def parse_header_record(header: RecordHeader, image_bytes: int, where: str) -> MS1MHeader | None:
    """The :class:`MS1MHeader` that record 0 announces, or None when record 0 is an image.

    ``where`` names the record in errors (``"<rec>: record key 0 at byte offset N"``).
    Raises :class:`MS1MLayoutError` when record 0 is a header record whose labels are not
    ``[first_identity_key, end_key)`` with ``1 <= first_identity_key <= end_key``.
    """
    if header.flag == 0 or image_bytes > 0:  # a scalar label, or image bytes: record 0 is an image
        return None
    labels = np.atleast_1d(np.asarray(header.label, dtype=np.float64))
    if labels.size < RANGE_LABELS:
        raise MS1MLayoutError(
            f"{where}: header record (flag {header.flag}, no image) has {labels.size} label(s) "
            f"{labels.tolist()}; an MS1M header needs [first_identity_key, end_key)"
        )
    first, end = labels[:RANGE_LABELS]
    if not (integral_keys(labels[:RANGE_LABELS]).all() and FIRST_IMAGE_KEY <= first <= end):
        raise MS1MLayoutError(
            f"{where}: header labels {labels[:RANGE_LABELS].tolist()} are not [first_identity_key, end_key) "
            f"with {FIRST_IMAGE_KEY} <= first_identity_key <= end_key"
        )
    return MS1MHeader(int(first), int(end))


def read_header_record(reader: RecordReader, offset: int) -> MS1MHeader | None:
    """Read record 0 at ``offset`` and parse it with :func:`parse_header_record`."""
    header, body = reader.read_image_record(offset, HEADER_KEY, error=MS1MLayoutError)
    return parse_header_record(header, len(body), record_where(reader.path, HEADER_KEY, offset))


def check_identity_records(
    header: MS1MHeader,
    flags: np.ndarray,
    labels: np.ndarray,
    image_bytes: np.ndarray,
    offsets: np.ndarray,
    rec: str | os.PathLike[str],
) -> np.ndarray:
    """Check the identity records of ``header`` and return their ``(num_identities, 2)`` int64 ranges.

    ``flags``, ``labels`` (at least two columns, NaN where a record has fewer labels),
    ``image_bytes`` and ``offsets`` describe the records ``header.identity_keys`` in order;
    ``rec`` names the file in errors. Each must be an identity record (``flag >= 2``, no
    image) and the ranges must tile the image keys in order: the first starts at key 1, each
    starts where the previous ends, the last ends at ``first_identity_key``.
    """
    keys = header.identity_keys
    flags, image_bytes = np.asarray(flags), np.asarray(image_bytes)
    labels = np.asarray(labels, dtype=np.float64).reshape(keys.size, -1)
    if labels.shape[1] < RANGE_LABELS:
        raise ValueError(f"identity records need {RANGE_LABELS} label columns, got {labels.shape[1]}")
    not_identity = np.flatnonzero((flags < RANGE_LABELS) | (image_bytes != 0))
    if not_identity.size:
        position = int(not_identity[0])
        raise MS1MLayoutError(
            f"{record_where(rec, int(keys[position]), int(offsets[position]))}: expected an identity "
            f"record (flag >= {RANGE_LABELS}, no image), got flag {int(flags[position])} with "
            f"{int(image_bytes[position])} image bytes"
        )
    ranges = labels[:, :RANGE_LABELS]
    starts, ends = ranges[:, 0], ranges[:, 1]
    expected_starts = np.concatenate([[float(FIRST_IMAGE_KEY)], ends[:-1]])
    good = integral_keys(ranges).all(axis=1) & (starts == expected_starts) & (ends >= starts)
    if good.size:
        good[-1] &= ends[-1] == header.first_identity_key
    if not good.all():
        position = int(np.flatnonzero(~good)[0])
        start, end = ranges[position]
        if not integral_keys(ranges[position]).all() or end < start:
            reason = "is not an ordered pair of integer keys"
        elif start != expected_starts[position]:
            reason = f"does not continue the previous identity's range (expected start {expected_starts[position]:g})"
        else:
            reason = f"is the last identity's range but does not end at first_identity_key {header.first_identity_key}"
        raise MS1MLayoutError(
            f"{rec}: identity record key {int(keys[position])} at byte offset {int(offsets[position])}: image range "
            f"{ranges[position].tolist()} {reason}; images are keys {FIRST_IMAGE_KEY}..{header.first_identity_key - 1}"
        )
    return ranges.astype(np.int64)
