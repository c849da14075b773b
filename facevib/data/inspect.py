"""Summarise a face set: a RecordIO training set or a verification ``.bin`` file.

``python -m facevib.data inspect PREFIX [--sheet out.png]`` prints the record count, which
header layout the set uses (the MS1M header + identity records, or plain records), the
number of identities, the label range, images per identity (min/median/max), whether
``property`` agrees, and optionally writes a contact sheet: one row per identity (spread
over the label range), a few images each. ``PREFIX`` is ``dir`` (holding ``train.rec``),
``dir/train`` or ``dir/train.rec``; a ``.bin`` path summarises a verification set instead.

Labels of a set with identity records come from those records (no scan of the images);
otherwise each record's 24-byte header is read, never its image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facevib.data.bins import read_bin
from facevib.data.imagecodec import decode_bgr
from facevib.data.ms1m_layout import (
    FIRST_IMAGE_KEY,
    HEADER_KEY,
    RANGE_LABELS,
    MS1MHeader,
    MS1MLayoutError,
    check_identity_records,
    labels_from_ranges,
    read_header_record,
)
from facevib.data.recordio import IndexedRecordReader, scan_headers, unpack

__all__ = ["RecSummary", "BinSummary", "resolve_prefix", "summarize_rec", "summarize_bin", "contact_sheet", "bin_sheet"]

_SPOT_CHECKS = 100  # identities whose first image's own label is compared with the identity record
_KEYS_SHOWN = 10


@dataclass
class RecSummary:
    """What :func:`summarize_rec` found (``labels``: one per image, in key order)."""

    rec: str
    records: int
    images: int
    layout: str
    identities: int
    label_min: int
    label_max: int
    per_identity: tuple[int, int, float]  # min, max, median
    property: str | None
    problems: list[str] = field(default_factory=list)
    image_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def lines(self) -> list[str]:
        """Human-readable report."""
        lo, hi, med = self.per_identity
        out = [
            f"file            {self.rec}",
            f"records         {self.records}",
            f"layout          {self.layout}",
            f"images          {self.images}",
            f"identities      {self.identities}",
            f"label range     {self.label_min}..{self.label_max}",
            f"per identity    min {lo}, median {med:g}, max {hi}",
            f"property        {self.property if self.property is not None else '(none)'}",
        ]
        out += [f"problem         {p}" for p in self.problems] or ["problems        none"]
        return out

    def as_dict(self) -> dict:
        """JSON-friendly summary (without the per-image arrays)."""
        lo, hi, med = self.per_identity
        return {
            "rec": self.rec,
            "records": self.records,
            "images": self.images,
            "layout": self.layout,
            "identities": self.identities,
            "label_min": self.label_min,
            "label_max": self.label_max,
            "per_identity": {"min": lo, "median": med, "max": hi},
            "property": self.property,
            "problems": self.problems,
        }


def resolve_prefix(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``(rec, idx)`` for a directory, a ``.../train`` prefix or a ``.rec`` path."""
    path = Path(prefix)
    if path.is_dir():
        path = path / "train"
    if path.suffix in (".rec", ".idx"):
        path = path.with_suffix("")
    rec, idx = path.parent / (path.name + ".rec"), path.parent / (path.name + ".idx")
    if not rec.is_file():
        raise FileNotFoundError(f"no RecordIO file at {rec} (from {prefix})")
    if not idx.is_file():
        raise FileNotFoundError(f"no index {idx} next to {rec}")
    return rec, idx


def _shorten(keys: np.ndarray) -> str:
    shown = ", ".join(str(key) for key in keys[:_KEYS_SHOWN].tolist())
    return f"[{shown}{', ...' if keys.size > _KEYS_SHOWN else ''}]"


def _identity_labels(
    reader: IndexedRecordReader, header: MS1MHeader, offsets: dict[int, int], problems: list[str]
) -> np.ndarray | None:
    """Class of every image key of ``header`` from its identity records, or None (with a problem) when unusable.

    Reads only the identity records and, as a spot check, the first image of up to
    ``_SPOT_CHECKS`` identities spread over the labels.
    """
    identity_keys = header.identity_keys
    missing = np.array([key for key in identity_keys.tolist() if key not in offsets], np.int64)
    if missing.size or not identity_keys.size:
        problems.append(
            f"record 0 is a header with labels [{header.first_identity_key}, {header.end_key}] but "
            f"{missing.size if identity_keys.size else 'all'} of its identity records are not in the index "
            f"{_shorten(missing)}; labels are read from the image records"
        )
        return None
    identity_offsets = np.array([offsets[key] for key in identity_keys.tolist()], np.int64)
    scan = scan_headers(reader, identity_keys, identity_offsets, n_labels=RANGE_LABELS, collect_errors=False)
    try:
        ranges = check_identity_records(header, scan.flags, scan.labels, scan.body_bytes, identity_offsets, reader.path)
    except MS1MLayoutError as err:
        problems.append(f"{err}; labels are read from the image records")
        return None
    spots = np.unique(np.linspace(0, len(ranges) - 1, min(_SPOT_CHECKS, len(ranges))).round().astype(np.int64))
    firsts = ranges[spots, 0]
    present = np.array([key in offsets for key in firsts.tolist()], bool) & (ranges[spots, 1] > firsts)
    spots, firsts = spots[present], firsts[present]
    first_offsets = np.array([offsets[key] for key in firsts.tolist()], np.int64)
    stored = scan_headers(reader, firsts, first_offsets, n_labels=1, collect_errors=True).labels[:, 0]
    wrong = np.flatnonzero(stored != spots)
    if wrong.size:
        c = int(spots[wrong[0]])
        problems.append(
            f"identity record {int(identity_keys[c])} (label {c}) starts at image key {int(firsts[wrong[0]])}, "
            f"whose own label is {float(stored[wrong[0]]):g}"
        )
    return labels_from_ranges(ranges)


def summarize_rec(prefix: str | os.PathLike) -> RecSummary:
    """Read the layout and labels of a RecordIO set (see the module docstring)."""
    rec, idx = resolve_prefix(prefix)
    reader = IndexedRecordReader(rec, idx)
    offsets = reader.index
    keys = np.array(reader.keys, np.int64)
    problems: list[str] = []
    header = read_header_record(reader, offsets[HEADER_KEY]) if HEADER_KEY in offsets else None
    labels = None
    if header is None:
        layout = "plain records (no header record)"
        image_keys = keys
    else:
        layout = f"MS1M header: record 0 labels [{header.first_identity_key}, {header.end_key}]"
        image_keys = header.image_keys
        outside = keys[(keys != HEADER_KEY) & ((keys < FIRST_IMAGE_KEY) | (keys >= header.end_key))]
        if outside.size:
            problems.append(
                f"{outside.size} index keys lie outside the header's ranges "
                f"[{FIRST_IMAGE_KEY}, {header.end_key}): {_shorten(outside)}"
            )
        labels = _identity_labels(reader, header, offsets, problems)
        if labels is not None:
            layout += f", identity records {header.first_identity_key}..{header.end_key - 1}"
        present = np.array([key in offsets for key in image_keys.tolist()], bool)
        if not present.all():
            problems.append(
                f"{int((~present).sum())} image keys of the header's range 1..{header.first_identity_key - 1} are "
                f"not in the index: {_shorten(image_keys[~present])}"
            )
            image_keys = image_keys[present]
            labels = labels[present] if labels is not None else None
    if labels is None:
        image_offsets = np.array([offsets[key] for key in image_keys.tolist()], np.int64)
        scan = scan_headers(reader, image_keys, image_offsets, n_labels=1, collect_errors=True)
        if scan.bad:
            first = scan.bad[min(scan.bad)]
            problems.append(f"{len(scan.bad)} records cannot be read (left out); first: {first}")
        readable = np.ones(image_keys.size, bool)
        readable[list(scan.bad)] = False
        image_keys, raw = image_keys[readable], scan.labels[readable, 0].astype(np.float64)
        arrays = int((scan.flags[readable] > 0).sum())
        if arrays:
            layout += f"; {arrays} records carry array labels (first element used as the identity)"
        if not np.all(np.isfinite(raw) & (raw == np.round(raw))):
            problems.append("some labels are not integers")
        labels = np.nan_to_num(raw).astype(np.int64)
    counts = np.bincount(labels - labels.min()) if len(labels) else np.zeros(0, np.int64)
    present = counts[counts > 0]
    if len(present) != len(counts):
        problems.append(f"labels are not contiguous: {len(counts) - len(present)} labels in the range have no image")
    prop_path = rec.parent / "property"
    prop = prop_path.read_text(encoding="ascii", errors="replace").strip() if prop_path.is_file() else None
    if prop is not None:
        first = prop.splitlines()[0].split(",")[0].strip() if prop else ""
        if not first.isdigit() or int(first) != len(present):
            problems.append(f"property says {first!r} classes, the records have {len(present)} identities")
    return RecSummary(
        rec=str(rec),
        records=len(keys),
        images=len(labels),
        layout=layout,
        identities=len(present),
        label_min=int(labels.min()) if len(labels) else 0,
        label_max=int(labels.max()) if len(labels) else -1,
        per_identity=(int(present.min()), int(present.max()), float(np.median(present)))
        if len(present)
        else (0, 0, 0.0),
        property=prop,
        problems=problems,
        image_keys=np.asarray(image_keys, np.int64),
        labels=labels,
    )


@dataclass
class BinSummary:
    """What :func:`summarize_bin` found."""

    path: str
    pairs: int
    same: int
    image_shape: tuple[int, ...]

    def lines(self) -> list[str]:
        return [
            f"file            {self.path}",
            f"pairs           {self.pairs} ({self.same} same, {self.pairs - self.same} different)",
            f"images          {2 * self.pairs} of {self.image_shape[1]}x{self.image_shape[0]}",
        ]

    def as_dict(self) -> dict:
        return {"path": self.path, "pairs": self.pairs, "same": self.same, "image_shape": list(self.image_shape)}


def summarize_bin(path: str | os.PathLike) -> tuple[BinSummary, np.ndarray]:
    """Summary and decoded images of a verification ``.bin``."""
    data = read_bin(path)
    return BinSummary(str(path), len(data), int(data.issame.sum()), data.images.shape[1:]), data.images


def _tile(rows: list[list[np.ndarray]], captions: list[str], cell: int = 112) -> np.ndarray:
    width = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (cell + 4) + 4, width * (cell + 4) + 4, 3), 255, np.uint8)
    for r, (images, caption) in enumerate(zip(rows, captions, strict=True)):
        y = 4 + r * (cell + 4)
        for c, image in enumerate(images):
            x = 4 + c * (cell + 4)
            sheet[y : y + cell, x : x + cell] = cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA)
        cv2.putText(sheet, caption, (6, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    return sheet


def contact_sheet(summary: RecSummary, out: str | os.PathLike, identities: int = 8, per_identity: int = 8) -> Path:
    """Write a PNG with one row per identity (spread evenly over the labels), ``per_identity`` images each."""
    if identities < 1 or per_identity < 1:
        raise ValueError(f"a contact sheet needs >= 1 identity and image, got {identities} x {per_identity}")
    reader = IndexedRecordReader(summary.rec)
    distinct = np.unique(summary.labels)
    if not len(distinct):
        raise ValueError(f"{summary.rec}: no images to show")
    chosen = distinct[np.linspace(0, len(distinct) - 1, min(identities, len(distinct))).round().astype(int)]
    rows, captions = [], []
    for label in chosen:
        keys = summary.image_keys[summary.labels == label][:per_identity]
        images = []
        for key in keys:
            body = unpack(reader.read(int(key)))[1]
            images.append(decode_bgr(body, where=f"{summary.rec}: record key {int(key)}"))
        rows.append(images)
        captions.append(f"id {int(label)}")
    return _write_png(out, _tile(rows, captions))


def bin_sheet(images: np.ndarray, issame: np.ndarray, out: str | os.PathLike, pairs: int = 8) -> Path:
    """Contact sheet of the first ``pairs`` same and different pairs of a ``.bin`` (RGB images)."""
    same, diff = np.flatnonzero(issame)[: pairs // 2], np.flatnonzero(~issame)[: pairs - pairs // 2]
    rows, captions = [], []
    for kind, chosen in (("same", same), ("diff", diff)):
        for p in chosen:
            rows.append([cv2.cvtColor(images[2 * p + k], cv2.COLOR_RGB2BGR) for k in (0, 1)])
            captions.append(f"{kind} {int(p)}")
    return _write_png(out, _tile(rows, captions))


def _write_png(out: str | os.PathLike, sheet: np.ndarray) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet):
        raise ValueError(f"cannot write the contact sheet to {out} (is the extension .png?)")
    return out
