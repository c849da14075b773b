"""Detect the largest face in many photo files at once: what ``pack --detect`` runs before packing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facevib.detect.base import Detector

__all__ = ["FolderDetections", "detect_files"]


@dataclass
class FolderDetections:
    """Per-file results of :func:`detect_files`.

    Attributes:
        landmarks: ``{relative path: (5, 2)}`` of the largest face in each photo that has one.
        scores: ``{relative path: detector score}`` of those faces.
        faces: ``{relative path: number of faces found}`` for every readable photo.
        no_face: relative paths of the readable photos with no face, in input order.
        errors: ``"path: reason"`` for files that could not be read or decoded.
    """

    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    faces: dict[str, int] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def detect_files(
    root: str | os.PathLike,
    relative_paths: Sequence[str],
    detector: Detector,
    *,
    min_face_size: float | None = None,
    threshold: float | None = None,
    threads: int | None = None,
    progress: bool | None = None,
) -> FolderDetections:
    """Run ``detector`` on ``root / path`` for every path (in threads) and keep each photo's largest face.

    Unreadable files are collected in ``errors`` rather than raised, so a caller can report all
    of them at once; ``progress`` is tqdm's ``disable`` inverted (None: a bar only on a terminal).
    """
    from tqdm import tqdm

    from facevib.data.imagecodec import decode_rgb

    base = Path(root)

    def one(rel: str) -> tuple[str, list, str | None]:
        try:
            data = np.fromfile(base / rel, dtype=np.uint8)
        except OSError as err:
            return rel, [], f"{rel}: cannot read ({err.strerror})"
        try:
            image = decode_rgb(data)
        except ValueError as err:
            return rel, [], f"{rel}: not a decodable image ({err})"
        return rel, detector.detect(image, min_face_size=min_face_size, threshold=threshold), None

    out = FolderDetections()
    workers = threads or min(8, os.cpu_count() or 1)
    disable = None if progress is None else not progress
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(relative_paths), unit="img", desc="detect faces", disable=disable) as bar,
    ):
        for rel, faces, error in pool.map(one, relative_paths):
            bar.update(1)
            if error is not None:
                out.errors.append(error)
                continue
            out.faces[rel] = len(faces)
            if not faces:
                out.no_face.append(rel)
                continue
            out.landmarks[rel] = np.asarray(faces[0].landmarks, dtype=np.float64)  # largest first
            out.scores[rel] = faces[0].score
    return out
