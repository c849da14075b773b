"""IJB-B / IJB-C directories in the layout insightface distributes (and its scripts read).

::

    <root>/                              (the IJBC or IJBB folder, or its parent)
      loose_crop/<image>.jpg             loosely cropped faces
      meta/ijbc_face_tid_mid.txt         "<image> <template id> <media id>" per image
      meta/ijbc_name_5pts_score.txt      "<image> x1 y1 ... x5 y5 <detector score>" per image
      meta/ijbc_template_pair_label.txt  "<template 1> <template 2> <1 genuine | 0 impostor>"
      meta/ijbc_1N_gallery_G1.csv        optional 1:N protocol (IJB-B: ijbb_1N_gallery_S1.csv,
      meta/ijbc_1N_gallery_G2.csv          ijbb_1N_gallery_S2.csv, ijbb_1N_probe_mixed.csv):
      meta/ijbc_1N_probe_mixed.csv         header line, then TEMPLATE_ID,SUBJECT_ID,... rows

Landmarks are in the loose crop's pixel coordinates: left eye, right eye, nose, left and right
mouth corner. insightface's scripts pair the two per-image files by line number; here they are
joined by image name, and any image listed in one file but not the other is an error. Pairs
naming a template that has no image are an error too (insightface maps them silently to the
first template).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["IJB_TARGETS", "IJBFormatError", "IJBLayout", "IJBSet", "IJBOneToN", "ijb_layout", "read_ijb"]

IJB_TARGETS = ("IJBB", "IJBC")
_GALLERY_NAMES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}
_SHOWN = 5  # how many offending names an error message lists


class IJBFormatError(ValueError):
    """An IJB directory is incomplete or inconsistent; the message names files, lines and images."""


@dataclass(frozen=True)
class IJBLayout:
    """Where a target's files are (whether or not they exist)."""

    target: str
    root: Path
    image_dir: Path
    tid_mid: Path
    five_points: Path
    pairs: Path
    galleries: dict[str, Path]
    probes: Path

    @property
    def required(self) -> dict[str, Path]:
        """The files and folder the 1:1 protocol needs."""
        return {"tid_mid": self.tid_mid, "five_points": self.five_points, "pairs": self.pairs, "images": self.image_dir}

    @property
    def one_to_n(self) -> list[Path]:
        """The 1:N protocol files."""
        return [*self.galleries.values(), self.probes]


@dataclass(frozen=True)
class IJBOneToN:
    """The 1:N (identification) protocol: galleries and mixed probes, as template/subject ids.

    Each array pair is ``(templates, subjects)``, one entry per distinct template.
    """

    galleries: dict[str, tuple[np.ndarray, np.ndarray]]
    probe_templates: np.ndarray
    probe_subjects: np.ndarray


@dataclass(frozen=True)
class IJBSet:
    """Everything the IJB protocols need, one row per image in ``tid_mid`` order."""

    layout: IJBLayout
    image_names: np.ndarray  # (N,) str
    templates: np.ndarray  # (N,) int64
    medias: np.ndarray  # (N,) int64
    landmarks: np.ndarray  # (N, 5, 2) float32, loose-crop pixels
    face_scores: np.ndarray  # (N,) float32 detector scores
    pair_templates: np.ndarray  # (P, 2) int64
    pair_labels: np.ndarray  # (P,) bool, True = genuine
    one_to_n: IJBOneToN | None

    @property
    def target(self) -> str:
        """``"IJBB"`` or ``"IJBC"``."""
        return self.layout.target

    @property
    def image_dir(self) -> Path:
        """The ``loose_crop`` folder."""
        return self.layout.image_dir

    def image_paths(self) -> list[Path]:
        """Full paths of the loose crops, in row order."""
        return [self.layout.image_dir / name for name in self.image_names]


def ijb_layout(root: str | os.PathLike, target: str) -> IJBLayout:
    """Paths of ``target``'s files under ``root`` (the target folder itself, or its parent).

    ``root/meta`` is used when it exists, else ``root/<target>/meta``.
    """
    target = target.upper()
    if target not in IJB_TARGETS:
        raise ValueError(f"target must be one of {', '.join(IJB_TARGETS)}, got {target!r}")
    root = Path(root)
    if not (root / "meta").is_dir() and (root / target / "meta").is_dir():
        root = root / target
    meta = root / "meta"
    prefix = target.lower()
    first, second = _GALLERY_NAMES[target]
    return IJBLayout(
        target=target,
        root=root,
        image_dir=root / "loose_crop",
        tid_mid=meta / f"{prefix}_face_tid_mid.txt",
        five_points=meta / f"{prefix}_name_5pts_score.txt",
        pairs=meta / f"{prefix}_template_pair_label.txt",
        galleries={
            first: meta / f"{prefix}_1N_gallery_{first}.csv",
            second: meta / f"{prefix}_1N_gallery_{second}.csv",
        },
        probes=meta / f"{prefix}_1N_probe_mixed.csv",
    )


def _describe_missing(layout: IJBLayout, missing: list[Path], what: str) -> str:
    meta = layout.tid_mid.parent
    found = sorted(p.name for p in meta.iterdir()) if meta.is_dir() else []
    images = layout.image_dir
    image_note = "present" if images.is_dir() else "missing"
    return (
        f"{layout.target} {what} incomplete under {layout.root}: missing {', '.join(str(p) for p in missing)}; "
        f"expected {', '.join(str(p) for p in layout.required.values())}; "
        f"found in {meta}: {', '.join(found) if found else 'nothing' if meta.is_dir() else 'no such folder'}"
        f"{'' if meta.is_dir() else f' (nor {layout.root / layout.target / meta.name})'}; "
        f"{images.name}/ {image_note}"
    )


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty lines of a text file as ``(line number, fields)``."""
    with open(path, encoding="utf-8") as handle:
        return [(number, line.split()) for number, line in enumerate(handle, 1) if line.strip()]


def _read_tid_mid(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    names: list[str] = []
    templates, medias = [], []
    for number, fields in _read_lines(path):
        if len(fields) != 3:
            raise IJBFormatError(
                f"{path}:{number}: expected '<image> <template id> <media id>', got {' '.join(fields)!r}"
            )
        try:
            templates.append(int(fields[1]))
            medias.append(int(fields[2]))
        except ValueError as err:
            raise IJBFormatError(
                f"{path}:{number}: template and media ids must be integers, got {fields[1:]!r}"
            ) from err
        names.append(fields[0])
    if not names:
        raise IJBFormatError(f"{path}: no images listed")
    return names, np.asarray(templates, np.int64), np.asarray(medias, np.int64)


def _read_five_points(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    names: list[str] = []
    values = []
    for number, fields in _read_lines(path):
        if len(fields) != 12:
            raise IJBFormatError(
                f"{path}:{number}: expected '<image> x1 y1 ... x5 y5 <score>' (12 fields), got {len(fields)} fields"
            )
        try:
            values.append([float(v) for v in fields[1:]])
        except ValueError as err:
            raise IJBFormatError(f"{path}:{number}: landmarks and score must be numbers ({err})") from err
        names.append(fields[0])
    table = np.asarray(values, np.float32).reshape(-1, 11)
    if not np.isfinite(table).all():
        row = int(np.flatnonzero(~np.isfinite(table).all(axis=1))[0])
        raise IJBFormatError(f"{path}: image {names[row]!r} has a non-finite landmark or score")
    return names, table[:, :10].reshape(-1, 5, 2), table[:, 10].copy()


def _read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``t1 t2 label`` lines; numpy's C parser reads IJB-C's 15.7M lines in ~2 s."""
    data = path.read_bytes()
    if not data.strip():
        raise IJBFormatError(f"{path}: no template pairs listed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (instead of failing) on some bad rows
            table = np.loadtxt(io.BytesIO(data), dtype=np.int64, ndmin=2)
    except (ValueError, UserWarning) as err:
        raise IJBFormatError(f"{path}: expected '<template 1> <template 2> <label>' integer lines ({err})") from err
    if table.shape[1] != 3:
        raise IJBFormatError(f"{path}: expected 3 columns '<template 1> <template 2> <label>', got {table.shape[1]}")
    labels = table[:, 2]
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise IJBFormatError(f"{path}: pair {row + 1} has label {labels[row]}, expected 0 or 1")
    return np.ascontiguousarray(table[:, :2]), labels.astype(bool)


def _read_template_subjects(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``TEMPLATE_ID,SUBJECT_ID,...`` CSV (one row per image) -> distinct (templates, subjects)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [(number, line.split(",")) for number, line in enumerate(lines, 1) if line.strip()]
    if rows and not rows[0][1][0].strip().lstrip("-").isdigit():
        header = [field.strip().upper() for field in rows[0][1][:2]]
        if header != ["TEMPLATE_ID", "SUBJECT_ID"]:
            raise IJBFormatError(f"{path}:1: header must start with TEMPLATE_ID,SUBJECT_ID, got {rows[0][1][:2]!r}")
        rows = rows[1:]
    if not rows:
        raise IJBFormatError(f"{path}: no templates listed")
    subject_of: dict[int, int] = {}
    for number, fields in rows:
        try:
            template, subject = int(fields[0]), int(fields[1])
        except (ValueError, IndexError) as err:
            raise IJBFormatError(
                f"{path}:{number}: expected integer TEMPLATE_ID,SUBJECT_ID, got {fields[:2]!r}"
            ) from err
        if subject_of.setdefault(template, subject) != subject:
            raise IJBFormatError(
                f"{path}:{number}: template {template} has subject {subject} here and {subject_of[template]} earlier"
            )
    templates = np.fromiter(subject_of.keys(), np.int64, len(subject_of))
    subjects = np.fromiter(subject_of.values(), np.int64, len(subject_of))
    order = np.argsort(templates)
    return templates[order], subjects[order]


def _first_duplicate(names: list[str]) -> str:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    raise AssertionError("called without a duplicate")


def _align_five_points(
    layout: IJBLayout, names: list[str], point_names: list[str], landmarks: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder the 5-point rows into ``tid_mid`` order, checking both list the same images."""
    if point_names == names:
        return landmarks, scores
    position = {name: row for row, name in enumerate(point_names)}
    if len(position) != len(point_names):
        raise IJBFormatError(f"{layout.five_points}: image {_first_duplicate(point_names)!r} is listed more than once")
    lacking = [name for name in names if name not in position]
    extra = sorted(set(point_names) - set(names))
    if lacking or extra:
        parts = []
        if lacking:
            parts.append(
                f"{len(lacking)} images in {layout.tid_mid.name} have no line in {layout.five_points.name} "
                f"(e.g. {', '.join(lacking[:_SHOWN])})"
            )
        if extra:
            parts.append(
                f"{len(extra)} images in {layout.five_points.name} are not in {layout.tid_mid.name} "
                f"(e.g. {', '.join(extra[:_SHOWN])})"
            )
        raise IJBFormatError(f"{layout.target} meta files disagree under {layout.root}: " + "; ".join(parts))
    order = np.fromiter((position[name] for name in names), np.int64, len(names))
    return landmarks[order], scores[order]


def _check_pairs(layout: IJBLayout, pairs: np.ndarray, known: np.ndarray) -> None:
    unknown = np.setdiff1d(pairs.ravel(), known)
    if unknown.size:
        raise IJBFormatError(
            f"{layout.pairs}: {unknown.size} template ids have no image in {layout.tid_mid.name} "
            f"(e.g. {', '.join(map(str, unknown[:_SHOWN]))})"
        )


def _read_one_to_n(layout: IJBLayout, known: np.ndarray) -> IJBOneToN | None:
    files = layout.one_to_n
    present = [p for p in files if p.is_file()]
    if not present:
        return None
    if len(present) != len(files):
        missing = [p for p in files if not p.is_file()]
        raise IJBFormatError(
            f"{layout.target} 1:N protocol incomplete: found {', '.join(p.name for p in present)} but missing "
            f"{', '.join(str(p) for p in missing)} (all of {', '.join(p.name for p in files)} are needed, or none)"
        )
    galleries = {name: _read_template_subjects(path) for name, path in layout.galleries.items()}
    probes = _read_template_subjects(layout.probes)
    for path, (templates, _) in [
        *zip(layout.galleries.values(), galleries.values(), strict=True),
        (layout.probes, probes),
    ]:
        unknown = np.setdiff1d(templates, known)
        if unknown.size:
            raise IJBFormatError(
                f"{path}: {unknown.size} templates have no image in {layout.tid_mid.name} "
                f"(e.g. {', '.join(map(str, unknown[:_SHOWN]))})"
            )
    return IJBOneToN(galleries=galleries, probe_templates=probes[0], probe_subjects=probes[1])


def read_ijb(root: str | os.PathLike, target: str = "IJBC", *, require_images: bool = True) -> IJBSet:
    """Read and cross-check an IJB-B/C directory.

    Args:
        root: the target's folder (holding ``meta/`` and ``loose_crop/``) or its parent.
        target: ``"IJBC"`` or ``"IJBB"``.
        require_images: check that ``loose_crop/`` holds every listed image (not needed when
            re-scoring cached features).

    Raises:
        FileNotFoundError: a required file is missing; the message lists the expected paths
            and what the ``meta`` folder holds.
        IJBFormatError: malformed lines (file and line number), images in one per-image file
            but not the other, duplicate images, pairs or 1:N templates without images,
            missing crops, or an incomplete set of 1:N files.
    """
    layout = ijb_layout(root, target)
    needed = layout.required if require_images else {k: v for k, v in layout.required.items() if k != "images"}
    missing = [path for path in needed.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(_describe_missing(layout, missing, "directory"))

    names, templates, medias = _read_tid_mid(layout.tid_mid)
    if len(set(names)) != len(names):
        raise IJBFormatError(f"{layout.tid_mid}: image {_first_duplicate(names)!r} is listed more than once")
    point_names, landmarks, scores = _read_five_points(layout.five_points)
    landmarks, scores = _align_five_points(layout, names, point_names, landmarks, scores)
    pairs, labels = _read_pairs(layout.pairs)
    known = np.unique(templates)
    _check_pairs(layout, pairs, known)
    one_to_n = _read_one_to_n(layout, known)
    if require_images:
        absent = [name for name in names if not (layout.image_dir / name).is_file()]
        if absent:
            raise IJBFormatError(
                f"{layout.image_dir}: {len(absent)} of {len(names)} listed images are missing "
                f"(e.g. {', '.join(absent[:_SHOWN])})"
            )
    return IJBSet(
        layout=layout,
        image_names=np.asarray(names),
        templates=templates,
        medias=medias,
        landmarks=landmarks,
        face_scores=scores,
        pair_templates=pairs,
        pair_labels=labels,
        one_to_n=one_to_n,
    )
