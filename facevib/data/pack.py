"""Pack a folder of face images (one sub-folder per identity) into MS1M-style RecordIO.

``python -m facevib.data pack IMAGE_DIR OUT_PREFIX [--landmarks FILE] [--quality 95]``
writes ``OUT_PREFIX.rec``, ``OUT_PREFIX.idx``, ``property`` (``num_classes,112,112``) next
to them and ``OUT_PREFIX.identities.tsv`` (``label<TAB>folder``), in the layout of the
insightface MS1M/Glint sets (:func:`write_ms1m`). Identities are the sub-folders in sorted
order (labels 0..N-1); images are the files with an image extension in each, sorted.

Without ``--landmarks`` the images must already be aligned 112x112 crops. With it, each
image is aligned with :func:`facevib.align.norm_crop` on its landmarks. The landmarks file
has one line per image, whitespace-separated, ``#`` starting a comment::

    relative/path.jpg x1 y1 x2 y2 x3 y3 x4 y4 x5 y5          (5 points, ArcFace order)
    relative/path.jpg x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score    (IJB's *_name_5pts_score.txt)
    relative/path.jpg x1 y1 x2 y2 x3 y3                      (3 points: eyes, mouth centre)

with paths relative to ``IMAGE_DIR`` (``/``-separated, no whitespace). Every image needs a
line and every line an image.

With ``--detect`` (a detector from :func:`facevib.detect.load_detector`) the images are raw
photos: each is aligned on the landmarks of its largest detected face. Photos where no face
is found are left out, counted in the summary and listed in ``OUT_PREFIX.no_face.txt``; an
identity left with no photo is left out too (listed in the summary). Unreadable images, missing landmarks or wrong sizes are
collected over the whole run and reported together with counts (the partial output is
removed): an image is never skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facevib.align import norm_crop
from facevib.data.bins import encode_jpeg
from facevib.data.imagecodec import decode_rgb
from facevib.data.ms1m_layout import (
    FIRST_IMAGE_KEY,
    HEADER_KEY,
    MS1MHeader,
    identity_ranges_for_counts,
    identity_record,
    labels_from_ranges,
)
from facevib.data.recordio import IndexedRecordWriter, RecordHeader, pack

if TYPE_CHECKING:
    from facevib.detect import Detector

__all__ = [
    "IMAGE_EXTENSIONS",
    "PackError",
    "list_identities",
    "read_landmarks",
    "write_ms1m",
    "write_property",
    "pack_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_SHOWN = 5  # offending items an error message lists


class PackError(ValueError):
    """The input folder or landmarks file cannot be packed; the message has counts and examples."""


def write_ms1m(prefix: str | os.PathLike, counts: Sequence[int], payloads: Iterable[bytes]) -> dict:
    """Write ``prefix.rec``/``.idx`` in the MS1M layout (see :func:`write_property` for ``property``).

    ``counts[c]`` is the number of images of label ``c``; ``payloads`` yields the encoded
    images grouped by label in order. The layout is :mod:`facevib.data.ms1m_layout`'s: key 0
    the header record, keys ``1..n`` the images with scalar labels, then one identity
    record per label with its image-key range.
    """
    prefix = Path(prefix)
    if any(c < 1 for c in counts):
        raise ValueError(f"{prefix}: every identity needs at least one image, counts {list(counts)[:10]}")
    ranges = identity_ranges_for_counts(counts)
    header = MS1MHeader.for_counts(int(sum(counts)), len(counts))
    total = header.num_images
    rec, idx = prefix.parent / (prefix.name + ".rec"), prefix.parent / (prefix.name + ".idx")
    with IndexedRecordWriter(rec, idx) as writer:
        writer.write_key(HEADER_KEY, pack(header.record()))
        images = iter(payloads)
        for key, label in zip(header.image_keys.tolist(), labels_from_ranges(ranges).tolist(), strict=True):
            payload = next(images, None)
            if payload is None:
                raise ValueError(f"{rec}: only {key - FIRST_IMAGE_KEY} images given for {total} announced")
            writer.write_key(key, pack(RecordHeader(0, float(label), key, 0), payload))
        if next(images, None) is not None:
            raise ValueError(f"{rec}: more images given than the {total} announced")
        for key, (start, end) in zip(header.identity_keys.tolist(), ranges.tolist(), strict=True):
            writer.write_key(key, pack(identity_record(key, start, end)))
    return {
        "rec": str(rec),
        "idx": str(idx),
        "images": total,
        "identities": len(counts),
        "header": [header.first_identity_key, header.end_key],
    }


def write_property(directory: str | os.PathLike, num_classes: int, image_size: tuple[int, int] = (112, 112)) -> Path:
    """Write ``directory/property`` = ``num_classes,height,width`` (no trailing newline, as
    the mxnet-era files have it)."""
    path = Path(directory) / "property"
    path.write_text(f"{num_classes},{image_size[0]},{image_size[1]}", encoding="ascii")
    return path


def list_identities(image_dir: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """``[(folder name, [relative image paths])]`` for every identity folder, sorted."""
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(
            f"{folder.name}/{f.name}" for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if images:
            out.append((folder.name, images))
    if not out:
        loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = (
            f" ({len(loose)} images lie directly in it; put each identity's images in its own folder)" if loose else ""
        )
        raise PackError(f"{root}: no identity sub-folders with images{hint}")
    return out


def read_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a landmarks file (format in the module docstring) into ``{relative path: (K, 2)}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmarks file not found: {path}")
    out: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) not in (7, 11, 12):
                raise PackError(
                    f"{path}:{number}: expected '<path> x1 y1 ... x5 y5 [score]' or '<path> x1 y1 x2 y2 x3 y3', "
                    f"got {len(fields)} fields: {line[:80]!r}"
                )
            try:
                values = np.array([float(v) for v in fields[1:]], np.float64)
            except ValueError as err:
                raise PackError(f"{path}:{number}: landmark coordinates must be numbers ({err})") from err
            if not np.isfinite(values).all():
                raise PackError(f"{path}:{number}: non-finite landmark coordinate in {line[:80]!r}")
            points = values[:10] if len(fields) >= 11 else values
            name = fields[0].replace("\\", "/").removeprefix("./")
            if name in out:
                raise PackError(f"{path}:{number}: image {name!r} has a second landmarks line")
            out[name] = points.reshape(-1, 2)
    if not out:
        raise PackError(f"{path}: no landmark lines")
    return out


@dataclass
class _Item:
    rel: str
    landmarks: np.ndarray | None


def _prepare(root: Path, item: _Item, quality: int) -> tuple[bytes | None, str | None]:
    """Aligned, encoded image of one item, or an error string (collected, never raised here)."""
    path = root / item.rel
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return None, f"{item.rel}: cannot read ({err.strerror})"
    try:
        rgb = decode_rgb(data)
    except ValueError as err:
        return None, f"{item.rel}: not a decodable image ({err})"
    if item.landmarks is None:
        if rgb.shape[:2] != (112, 112):
            return (
                None,
                f"{item.rel}: is {rgb.shape[1]}x{rgb.shape[0]}, expected an aligned 112x112 crop (or pass --landmarks)",
            )
        return encode_jpeg(rgb, quality), None
    try:
        return encode_jpeg(norm_crop(rgb, item.landmarks), quality), None
    except ValueError as err:
        return None, f"{item.rel}: cannot align ({err})"


def pack_folder(
    image_dir: str | os.PathLike,
    out_prefix: str | os.PathLike,
    *,
    landmarks: str | os.PathLike | None = None,
    quality: int = 95,
    threads: int | None = None,
    progress: bool | None = None,
    detector: Detector | None = None,
    min_face_size: float | None = None,
) -> dict:
    """Pack ``image_dir`` into ``out_prefix.rec/.idx`` + ``property`` (see the module docstring).

    ``detector`` (instead of ``landmarks``) aligns raw photos on their largest detected face,
    looking for faces of at least ``min_face_size`` pixels (None: the detector's default).

    Returns a summary (counts, paths). Raises ``PackError`` with counts and examples when
    any image cannot be packed, after reading all of them; nothing is left behind then.
    """
    from tqdm import tqdm

    root, prefix = Path(image_dir), Path(out_prefix)
    if not 1 <= quality <= 100:
        raise PackError(f"JPEG quality must be in [1, 100], got {quality}")
    identities = list_identities(root)
    if detector is not None and landmarks is not None:
        raise PackError("give a landmarks file or a face detector (--detect), not both")
    table = read_landmarks(landmarks) if landmarks is not None else None
    detected = None
    if detector is not None:
        identities, table, detected = _detect_landmarks(root, identities, detector, min_face_size, threads, progress)
    items: list[_Item] = []
    for _, images in identities:
        items.extend(_Item(rel, table.get(rel) if table is not None else None) for rel in images)
    if table is not None:
        lacking = [item.rel for item in items if item.landmarks is None]
        listed = {item.rel for item in items}
        extra = sorted(name for name in table if name not in listed)
        problems = []
        if lacking:
            problems.append(
                f"{len(lacking)} of {len(items)} images have no landmarks line (e.g. {', '.join(lacking[:_SHOWN])})"
            )
        if extra:
            problems.append(
                f"{len(extra)} landmark lines name no image under {root} (e.g. {', '.join(extra[:_SHOWN])})"
            )
        if problems:
            raise PackError(f"{landmarks}: " + "; ".join(problems))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.parent / (prefix.name + ".partial")
    errors: list[str] = []

    def payloads() -> Iterable[bytes]:
        workers = threads or min(8, os.cpu_count() or 1)
        # disable=None lets tqdm show the bar only on a terminal.
        disable = None if progress is None else not progress
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(total=len(items), unit="img", desc=f"pack {prefix.name}", disable=disable) as bar,
        ):
            for start in range(0, len(items), 512):  # bounded look-ahead keeps memory flat
                chunk = items[start : start + 512]
                for payload, error in pool.map(lambda it: _prepare(root, it, quality), chunk):
                    bar.update(1)
                    if error is not None:
                        errors.append(error)
                        payload = b""  # keeps keys aligned; the output is discarded below
                    yield payload

    try:
        summary = write_ms1m(tmp, [len(images) for _, images in identities], payloads())
    finally:
        if errors:
            for suffix in (".rec", ".idx"):
                (tmp.parent / (tmp.name + suffix)).unlink(missing_ok=True)
    if errors:
        more = f"; ... and {len(errors) - _SHOWN} more" if len(errors) > _SHOWN else ""
        raise PackError(
            f"{len(errors)} of {len(items)} images under {root} could not be packed, nothing was written: "
            + "; ".join(errors[:_SHOWN])
            + more
        )
    for suffix in (".rec", ".idx"):
        os.replace(tmp.parent / (tmp.name + suffix), prefix.parent / (prefix.name + suffix))
    write_property(prefix.parent, len(identities))
    mapping = "".join(f"{label}\t{name}\n" for label, (name, _) in enumerate(identities))
    (prefix.parent / (prefix.name + ".identities.tsv")).write_text(mapping, encoding="utf-8")
    summary.update(rec=str(prefix.parent / (prefix.name + ".rec")), idx=str(prefix.parent / (prefix.name + ".idx")))
    summary["aligned"] = table is not None
    if detected is not None:
        listing = prefix.parent / (prefix.name + ".no_face.txt")
        listing.write_text("".join(f"{rel}\n" for rel in detected["no_face"]), encoding="utf-8")
        summary["detection"] = {**{k: v for k, v in detected.items() if k != "no_face"}, "no_face_list": str(listing)}
    return summary


def _detect_landmarks(
    root: Path,
    identities: list[tuple[str, list[str]]],
    detector: Detector,
    min_face_size: float | None,
    threads: int | None,
    progress: bool | None,
) -> tuple[list[tuple[str, list[str]]], dict[str, np.ndarray], dict]:
    """Landmarks of each photo's largest face; identities without photos with a face are dropped.

    Returns the identities that keep at least one photo (with only those photos), the landmarks
    table, and the detection summary (counts, the photos without a face, dropped identities).
    """
    from facevib.detect.folder import detect_files

    photos = [rel for _, images in identities for rel in images]
    found = detect_files(root, photos, detector, min_face_size=min_face_size, threads=threads, progress=progress)
    if found.errors:
        more = f"; ... and {len(found.errors) - _SHOWN} more" if len(found.errors) > _SHOWN else ""
        raise PackError(
            f"{len(found.errors)} of {len(photos)} images under {root} could not be read, nothing was written: "
            + "; ".join(found.errors[:_SHOWN])
            + more
        )
    kept = [(name, [rel for rel in images if rel in found.landmarks]) for name, images in identities]
    dropped = [name for name, images in kept if not images]
    kept = [(name, images) for name, images in kept if images]
    if not kept:
        raise PackError(f"no face found in any of the {len(photos)} photos under {root}")
    summary = {
        "detector": detector.name,
        "photos": len(photos),
        "with_face": len(found.landmarks),
        "without_face": len(found.no_face),
        "several_faces": sum(1 for count in found.faces.values() if count > 1),
        "no_face": list(found.no_face),
        "dropped_identities": dropped,
    }
    return kept, found.landmarks, summary
