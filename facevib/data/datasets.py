"""Training datasets: MS1M-style MXNet RecordIO and a folder-per-identity image tree.

Both return ``(image, label)`` with ``image`` a normalised ``(3, 112, 112)`` float32 RGB
tensor (``facevib.data.transforms``) and expose ``.labels`` (int64, one per sample) and
``.num_classes`` without decoding any image.

RecordIO layouts (``facevib.data.ms1m_layout`` parses and checks them):

* MS1M/insightface: record 0 is a header record naming the identity records, images are
  keys ``1 .. first_identity_key - 1``, and one identity record per class gives that
  class's image keys.
* Newer writers: every key is an image.

Labels are found without reading images: from the identity records when present (one
small record per class), otherwise from the 32-byte frame + header of every image record,
gathered through one read-only memory map, which is faster than a loop of ``os.pread`` (times
in ``docs/results.md``, "label scan"). When labels
come from identity records, each sample's own header label is still compared with them
when the sample is read.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facevib.data.ms1m_layout import (
    HEADER_KEY,
    MS1MHeader,
    check_identity_records,
    labels_from_ranges,
    read_header_record,
)
from facevib.data.recordio import RecordIOError, RecordReader, read_index_arrays, scan_headers, unpack
from facevib.data.transforms import IMAGE_SIZE, FaceTransform

__all__ = [
    "IMAGE_EXTENSIONS",
    "FaceSetProperty",
    "ImageFolderDataset",
    "MXFaceDataset",
    "read_property",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

_MAX_CONSECUTIVE_SKIPS = 64  # a longer run of bad records means the file is broken, not a few records
_KEYS_IN_MESSAGES = 10


# ----------------------------------------------------------------------------- property file


@dataclass(frozen=True)
class FaceSetProperty:
    """The ``property`` file next to ``train.rec``: ``num_classes,height,width`` [+ image count line]."""

    path: Path
    num_classes: int
    height: int
    width: int
    num_images: int | None = None


def read_property(path: str | os.PathLike) -> FaceSetProperty:
    """Parse a ``property`` file; ``ValueError`` naming the file and line when it is malformed."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text(encoding="ascii", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines or len(lines) > 2:
        raise ValueError(
            f"{path}: expected 'num_classes,height,width' and optionally an image count line, got {lines!r}"
        )
    fields = lines[0].split(",")
    if len(fields) != 3 or not all(field.strip().isdigit() for field in fields):
        raise ValueError(f"{path}: line 1 {lines[0]!r}: expected 'num_classes,height,width' (three integers)")
    num_classes, height, width = (int(field) for field in fields)
    if num_classes <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"{path}: line 1 {lines[0]!r}: num_classes, height and width must be positive")
    num_images = None
    if len(lines) == 2:
        if not lines[1].isdigit():
            raise ValueError(f"{path}: line 2 {lines[1]!r}: expected the image count (an integer)")
        num_images = int(lines[1])
    return FaceSetProperty(path, num_classes, height, width, num_images)


# ----------------------------------------------------------------------------- RecordIO helpers


def _resolve_prefix(prefix_or_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``dir`` -> dir/train.{rec,idx}; ``.../name`` or ``.../name.rec`` -> name.{rec,idx}; + property path."""
    given = Path(prefix_or_dir)
    if given.is_dir():
        rec = given / "train.rec"
    elif given.suffix == ".rec":
        rec = given
    else:
        rec = given.with_name(given.name + ".rec")
    idx = rec.with_suffix(".idx")
    if not rec.is_file():
        raise FileNotFoundError(f"RecordIO file not found: {rec} (from {str(prefix_or_dir)!r})")
    if not idx.is_file():
        raise FileNotFoundError(f"RecordIO index not found: {idx} (next to {rec})")
    return rec, idx, rec.parent / "property"


class _KeyTable:
    """``key -> position`` lookups on the index arrays without a dict of millions of Python ints."""

    def __init__(self, keys: np.ndarray):
        self.size = int(keys.size)
        # mxnet's writers number records 0..n-1 in order: then the position is the key.
        self._identity = bool(self.size == 0 or (keys[0] == 0 and (np.diff(keys) == 1).all()))
        if not self._identity:
            self._order = np.argsort(keys, kind="stable")
            self._sorted = keys[self._order]

    def positions(self, query: np.ndarray) -> np.ndarray:
        """Positions of ``query`` keys in the index, -1 where a key is absent."""
        query = np.asarray(query, dtype=np.int64)
        if self._identity:
            return np.where((query >= 0) & (query < self.size), query, -1)
        pos = np.searchsorted(self._sorted, query)
        pos_clipped = np.minimum(pos, self.size - 1)
        found = (pos < self.size) & (self._sorted[pos_clipped] == query)
        return np.where(found, self._order[pos_clipped], -1)


def _integral(values: np.ndarray) -> np.ndarray:
    """Mask of finite, integral, non-negative values that fit an int32 class id or key."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0) & (values < 2**31) & (np.floor(values) == values)


def _shorten(keys: list[int]) -> str:
    shown = ", ".join(str(key) for key in keys[:_KEYS_IN_MESSAGES])
    more = len(keys) - _KEYS_IN_MESSAGES
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"


# ----------------------------------------------------------------------------- MXFaceDataset


class MXFaceDataset(Dataset):
    """An MS1M/Glint-style RecordIO training set: ``train.rec`` + ``train.idx`` (+ ``property``).

    ``prefix_or_dir`` is a directory holding ``train.rec``/``train.idx``, a prefix such as
    ``.../train``, or the ``.rec`` path. ``dataset[i]`` is ``(image, label)``: a normalised
    ``(3, H, W)`` float32 tensor (randomly mirrored when ``train``) and an int.

    ``labels_from`` picks where ``.labels`` come from: ``"identities"`` (the identity
    records of the MS1M layout), ``"headers"`` (every image record's header) or ``"auto"``
    (identities when the file has them). ``normalize=False`` returns ``(3, H, W)`` uint8
    RGB images, to be normalised per batch with ``transforms.normalize_images``.

    With ``skip_corrupt=True`` a record that cannot be read or decoded is skipped: records
    found bad while reading labels are left out of the dataset; one found bad in
    ``__getitem__`` is replaced by the next good sample. Every skip warns with the key,
    byte offset and reason, and ``.skipped`` / ``.skipped_keys`` count them across all
    DataLoader workers (a shared-memory flag per sample).

    The ``.rec`` file is opened lazily, once per process, so the dataset can be handed to
    DataLoader workers (fork or spawn) without sharing a descriptor.
    """

    def __init__(
        self,
        prefix_or_dir: str | os.PathLike,
        train: bool = True,
        skip_corrupt: bool = False,
        *,
        labels_from: str = "auto",
        normalize: bool = True,
    ):
        if labels_from not in ("auto", "identities", "headers"):
            raise ValueError(f"labels_from must be 'auto', 'identities' or 'headers', got {labels_from!r}")
        self.rec_path, self.idx_path, property_path = _resolve_prefix(prefix_or_dir)
        self.train = train
        self.skip_corrupt = skip_corrupt
        self._reader = RecordReader(self.rec_path)
        index_keys, index_offsets = read_index_arrays(self.idx_path)
        past_end = np.flatnonzero(index_offsets >= self._reader.size)
        if past_end.size:
            first = int(past_end[0])
            raise RecordIOError(
                f"{self.idx_path}: key {int(index_keys[first])} points at byte offset {int(index_offsets[first])}, "
                f"past the end of {self.rec_path} ({self._reader.size} bytes); {past_end.size} such keys: "
                "the index does not belong to this file"
            )
        self._init_skips: list[tuple[int, int, str]] = []
        positions, labels, identity_count = self._locate_images(index_keys, index_offsets, labels_from)
        self._label_source = "identity records" if labels is not None else "record headers"

        keys, offsets = index_keys[positions], index_offsets[positions]
        if labels is None:
            keys, offsets, labels = self._labels_from_headers(keys, offsets)
        if keys.size == 0:
            raise ValueError(f"{self.rec_path}: no image records (index {self.idx_path} has {index_keys.size} keys)")
        self._keys = np.ascontiguousarray(keys, dtype=np.int64)
        self._offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.labels: np.ndarray = np.ascontiguousarray(labels, dtype=np.int64)

        self.property_file = read_property(property_path) if property_path.is_file() else None
        self.num_classes: int = self._check_property(identity_count)
        prop = self.property_file
        size = (prop.height, prop.width) if prop is not None else IMAGE_SIZE
        self.transform = FaceTransform(train=train, size=size, normalize=normalize)
        # One byte per sample in shared memory, inherited by forked workers and passed to
        # spawned ones, so that skips counted in workers are visible to the parent.
        self._skip_flags = multiprocessing.RawArray("B", len(self)) if skip_corrupt else None
        if self._init_skips:
            self._warn_init_skips()

    # ------------------------------------------------------------------ construction helpers

    def _locate_images(
        self, index_keys: np.ndarray, index_offsets: np.ndarray, labels_from: str
    ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """Index positions of the image records, their labels when identity records give them, and the class count."""
        table = _KeyTable(index_keys)
        header = self._read_header_record(index_offsets, table)
        if header is None:
            if labels_from == "identities":
                raise RecordIOError(
                    f"{self.rec_path}: labels_from='identities' but record 0 is not an MS1M header record"
                )
            return np.arange(index_keys.size), None, None
        positions = self._require_keys(table, header.image_keys, "image")
        identity_keys = header.identity_keys
        identity_positions = table.positions(identity_keys)
        have_identities = identity_keys.size > 0 and bool((identity_positions >= 0).all())
        if labels_from == "identities" and not have_identities:
            missing = identity_keys[identity_positions < 0]
            raise RecordIOError(
                f"{self.idx_path}: labels_from='identities' but identity records "
                f"{_shorten(missing.tolist()) if missing.size else '(none)'} of the header's range "
                f"[{header.first_identity_key}, {header.end_key}) are not in the index"
            )
        found = positions >= 0
        if not have_identities or labels_from == "headers":
            return positions[found], None, None
        labels = self._labels_from_identities(header, index_offsets[identity_positions])
        return positions[found], labels[found], header.num_identities

    def _read_header_record(self, offsets: np.ndarray, table: _KeyTable) -> MS1MHeader | None:
        """Record 0 parsed by ``ms1m_layout``: its header, or None when the set has no header record."""
        position = int(table.positions(np.array([HEADER_KEY]))[0])
        if position < 0:
            return None
        return read_header_record(self._reader, int(offsets[position]))

    def _require_keys(self, table: _KeyTable, wanted: np.ndarray, what: str) -> np.ndarray:
        positions = table.positions(wanted)
        missing = wanted[positions < 0]
        if missing.size:
            message = (
                f"{self.idx_path}: {missing.size} {what} keys named by the header record of {self.rec_path} "
                f"are not in the index: {_shorten(missing.tolist())}"
            )
            if not self.skip_corrupt:
                raise RecordIOError(message)
            self._init_skips.extend((int(key), -1, "not in the index") for key in missing.tolist())
        return positions

    def _labels_from_identities(self, header: MS1MHeader, offsets: np.ndarray) -> np.ndarray:
        """Class id of every image key of ``header`` from its identity records' ranges."""
        heads = scan_headers(self._reader, header.identity_keys, offsets, n_labels=2, collect_errors=False)
        ranges = check_identity_records(header, heads.flags, heads.labels, heads.body_bytes, offsets, self.rec_path)
        return labels_from_ranges(ranges)

    def _labels_from_headers(self, keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        heads = scan_headers(self._reader, keys, offsets, n_labels=1, collect_errors=self.skip_corrupt)
        raw = heads.labels[:, 0]
        good = _integral(raw)
        for position in heads.bad:
            good[position] = False
        if not good.all():
            for position in np.flatnonzero(~good).tolist():
                key, offset = int(keys[position]), int(offsets[position])
                reason = heads.bad.get(position) or (
                    f"{self.rec_path}: record key {key} at byte offset {offset}: label {float(raw[position])!r} "
                    "is not a non-negative integer class id"
                )
                if not self.skip_corrupt:
                    raise RecordIOError(reason)
                self._init_skips.append((key, offset, reason))
        return keys[good], offsets[good], raw[good].astype(np.int64)

    def _check_property(self, identity_count: int | None) -> int:
        """``num_classes`` from the property file, checked against the labels, or from the labels."""
        max_label = int(self.labels.max())
        observed = identity_count if identity_count is not None else max_label + 1
        prop = self.property_file
        if prop is None:
            return observed
        if max_label >= prop.num_classes:
            position = int(np.argmax(self.labels))
            raise ValueError(
                f"{prop.path}: num_classes {prop.num_classes} but record key {int(self._keys[position])} of "
                f"{self.rec_path} has label {max_label}"
            )
        if identity_count is not None and identity_count != prop.num_classes:
            raise ValueError(
                f"{prop.path}: num_classes {prop.num_classes} but {self.rec_path} has {identity_count} identity records"
            )
        if prop.num_images is not None and prop.num_images != len(self) + len(self._init_skips):
            raise ValueError(f"{prop.path}: says {prop.num_images} images but {self.rec_path} has {len(self)}")
        if prop.num_classes > observed:
            warnings.warn(
                f"{prop.path}: num_classes {prop.num_classes} but the labels of {self.rec_path} only reach "
                f"{max_label}: {prop.num_classes - observed} classes have no images",
                stacklevel=3,
            )
        return prop.num_classes

    def _warn_init_skips(self) -> None:
        keys = [key for key, _, _ in self._init_skips]
        warnings.warn(
            f"{self.rec_path}: skipped {len(keys)} corrupt records while reading labels (skip_corrupt=True): "
            f"keys {_shorten(keys)}; first: {self._init_skips[0][2]}",
            stacklevel=3,
        )

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return int(self._keys.size)

    @property
    def keys(self) -> np.ndarray:
        """RecordIO key of every sample (int64)."""
        return self._keys

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) every image must have."""
        return self.transform.size

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        key, offset = int(self._keys[index]), int(self._offsets[index])
        payload, _ = self._reader.read_at(offset, key)
        where = f"{self.rec_path}: record key {key} at byte offset {offset}"
        try:
            header, image = unpack(payload)
        except RecordIOError as err:
            raise RecordIOError(f"{where}: {err}") from None
        stored = header.label if header.flag == 0 else float(header.label[0])
        label = int(self.labels[index])
        if stored != label:
            raise RecordIOError(f"{where}: header label {stored:g} but the {self._label_source} give {label}")
        return self.transform(image, where=where), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._skip_flags is None:
            return self._load(index)
        n = len(self)
        for step in range(min(n, _MAX_CONSECUTIVE_SKIPS)):
            position = (index + step) % n
            try:
                return self._load(position)
            except ValueError as err:  # RecordIOError and undecodable/mis-sized images
                self._note_skip(position, err)
        raise RecordIOError(
            f"{self.rec_path}: {min(n, _MAX_CONSECUTIVE_SKIPS)} consecutive corrupt records from sample {index} "
            f"(key {int(self._keys[index % n])}); the file is damaged beyond skipping"
        )

    def _note_skip(self, position: int, err: Exception) -> None:
        assert self._skip_flags is not None
        self._skip_flags[position] = 1
        warnings.warn(
            f"skipped corrupt record (skip_corrupt=True): {err}; {self.skipped} skipped so far, "
            f"keys {_shorten(self.skipped_keys)}",
            stacklevel=3,
        )

    @property
    def skipped_keys(self) -> list[int]:
        """Keys of the records skipped so far, in any process (init-time skips first)."""
        keys = [key for key, _, _ in self._init_skips]
        if self._skip_flags is not None:
            flags = np.frombuffer(self._skip_flags, dtype=np.uint8)
            keys += self._keys[flags.astype(bool)].tolist()
        return keys

    @property
    def skipped(self) -> int:
        """How many records have been skipped so far, in this process and its DataLoader workers."""
        flags = 0
        if self._skip_flags is not None:
            flags = int(np.frombuffer(self._skip_flags, dtype=np.uint8).sum())
        return len(self._init_skips) + flags

    def close(self) -> None:
        """Close this process's file descriptor (reopened on the next read)."""
        self._reader.close()

    def __repr__(self) -> str:
        return (
            f"MXFaceDataset({str(self.rec_path)!r}, samples={len(self)}, num_classes={self.num_classes}, "
            f"train={self.train}, labels from {self._label_source})"
        )


# ----------------------------------------------------------------------------- ImageFolderDataset


class ImageFolderDataset(Dataset):
    """``root/<identity>/<image>``: one folder per identity, class ids in sorted folder-name order.

    Files whose extension is not in ``IMAGE_EXTENSIONS`` are left out with a warning that
    counts and names them. An identity folder without images, or a root without identity
    folders, is a ``ValueError``; an image that does not decode, or is not ``size``, raises
    ``ValueError`` naming its path when it is read. ``train`` and ``normalize`` are as for
    ``MXFaceDataset``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        *,
        size: tuple[int, int] = IMAGE_SIZE,
        normalize: bool = True,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.classes: list[str] = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root}: no identity folders (expected root/<identity>/<image>)")
        loose = sorted(entry.name for entry in self.root.iterdir() if not entry.is_dir())
        samples: list[Path] = []
        labels: list[int] = []
        ignored: list[Path] = []
        for label, name in enumerate(self.classes):
            files = sorted(path for path in (self.root / name).iterdir() if path.is_file())
            images = [path for path in files if path.suffix.lower() in IMAGE_EXTENSIONS]
            ignored += [path for path in files if path.suffix.lower() not in IMAGE_EXTENSIONS]
            if not images:
                raise ValueError(
                    f"{self.root / name}: identity folder has no images (extensions {sorted(IMAGE_EXTENSIONS)})"
                )
            samples += images
            labels += [label] * len(images)
        if ignored or loose:
            names = [str(path.relative_to(self.root)) for path in ignored] + loose
            warnings.warn(
                f"{self.root}: ignored {len(names)} files that are not images in identity folders "
                f"(or not in any identity folder): "
                f"{_shorten(names)}",
                stacklevel=2,
            )
        self.samples: list[Path] = samples
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64)
        self.num_classes: int = len(self.classes)
        self.train = train
        self.transform = FaceTransform(train=train, size=size, normalize=normalize)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.samples[index]
        return self.transform(path.read_bytes(), where=str(path)), int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, samples={len(self)}, num_classes={self.num_classes})"
