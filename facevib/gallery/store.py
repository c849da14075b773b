"""The storage contract of galleries: what a store keeps, the change log replicas follow, its errors.

A store is the source of truth; the in-memory index of :mod:`facevib.gallery.galleries` is
rebuilt from it at start and then follows its **change log**: every write appends numbered
entries (``seq`` strictly increasing in commit order) in the same transaction as the rows it
describes, so a reader that applies the entries after the last ``seq`` it saw ends in the
state of the table. One process (SQLite) and several replicas sharing one database
(PostgreSQL) follow the same log the same way.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Change",
    "FaceRecord",
    "GalleryConflict",
    "GalleryError",
    "GalleryInfo",
    "GalleryNotFound",
    "GalleryStore",
    "NewFace",
    "SNAPSHOT_CHUNK",
    "Snapshot",
    "UnknownFace",
    "UnknownSubject",
    "check_gallery_name",
    "embedding_bytes",
    "embedding_from_bytes",
]

# Faces per snapshot chunk: about 20 MB of 512-d embeddings (and as much again as fetched bytes),
# small beside the index it fills, large enough that the per-chunk query costs little.
SNAPSHOT_CHUNK = 8192

# Path-safe, URL-safe and short: the name appears in URLs and log lines.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class GalleryError(Exception):
    """A request the stored galleries cannot satisfy; ``value`` is the name or id concerned."""

    def __init__(self, message: str, value: str) -> None:
        super().__init__(message)
        self.value = value


class GalleryNotFound(GalleryError):
    """No gallery of that name."""


class GalleryConflict(GalleryError):
    """The gallery exists with other settings (a PUT is idempotent only for the same body)."""


class UnknownFace(GalleryError):
    """No face of that id in the gallery."""


class UnknownSubject(GalleryError):
    """No face of that subject in the gallery."""


def check_gallery_name(name: str) -> str:
    """``name`` if it is a valid gallery name, else ``ValueError`` saying the rule."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"gallery name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-', starting with a "
            "letter or digit"
        )
    return name


def embedding_bytes(vector: np.ndarray) -> bytes:
    """The stored form of an embedding: little-endian float32."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def embedding_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class GalleryInfo:
    """A gallery's settings: the embedding size its faces have and the creator's metadata."""

    name: str
    embedding_dim: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewFace:
    """A face to enroll: ``embedding`` is unit-norm float32 of the gallery's size."""

    subject: str
    embedding: np.ndarray
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FaceRecord:
    """A stored face (what the index needs of it: no metadata)."""

    id: str
    gallery: str
    subject: str
    embedding: np.ndarray


@dataclass(frozen=True)
class Change:
    """One change-log entry. ``op``: ``create``/``drop`` (a gallery), ``add``/``remove`` (a face).

    For ``add`` the face is joined in, for ``create`` the gallery's settings; either is None
    when the row was deleted since (a later ``remove`` or ``drop`` entry then follows, so
    skipping it is right).
    """

    seq: int
    op: str
    gallery: str
    face_id: str | None = None
    face: FaceRecord | None = None
    info: GalleryInfo | None = None


@dataclass(frozen=True)
class Snapshot:
    """The stored state at change-log entry ``seq``, its faces read a chunk at a time.

    ``counts`` is each gallery's number of faces (so an index can size itself once);
    ``chunks`` yields lists of faces in the store's order, each face exactly once, and can be
    read only inside the ``with`` block of :meth:`GalleryStore.snapshot` (one read transaction).
    """

    seq: int
    galleries: list[GalleryInfo]
    counts: dict[str, int]
    chunks: Iterator[list[FaceRecord]]


class GalleryStore(abc.ABC):
    """Durable galleries of faces. Every write method returns only after its commit is durable,
    and appends its change-log entries in the same transaction. Thread-safe."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, for logs (no password)."""

    @abc.abstractmethod
    def create_gallery(self, info: GalleryInfo) -> bool:
        """Create ``info.name``; True if created, False if it existed with the same settings.

        Raises:
            GalleryConflict: it exists with another ``embedding_dim`` or ``metadata``.
        """

    @abc.abstractmethod
    def drop_gallery(self, name: str) -> int:
        """Delete the gallery and its faces; the number of faces deleted. Raises GalleryNotFound."""

    @abc.abstractmethod
    def galleries(self) -> list[GalleryInfo]:
        """Every gallery, by name."""

    @abc.abstractmethod
    def gallery(self, name: str) -> GalleryInfo:
        """One gallery's settings. Raises GalleryNotFound."""

    @abc.abstractmethod
    def add_faces(self, gallery: str, faces: Sequence[NewFace]) -> list[str]:
        """Enroll ``faces`` in one transaction; their new ids in order. Raises GalleryNotFound."""

    @abc.abstractmethod
    def remove_face(self, gallery: str, face_id: str) -> str:
        """Delete one face; its subject. Raises GalleryNotFound, UnknownFace."""

    @abc.abstractmethod
    def remove_subject(self, gallery: str, subject: str) -> list[str]:
        """Delete every face of ``subject``; their ids. Raises GalleryNotFound, UnknownSubject."""

    @abc.abstractmethod
    def face_metadata(self, gallery: str, face_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metadata of the given faces (absent ids are left out)."""

    @abc.abstractmethod
    def snapshot(self, chunk_faces: int = SNAPSHOT_CHUNK) -> AbstractContextManager[Snapshot]:
        """The state at the last seq, read in one transaction held open by the ``with`` block:
        galleries and counts at once, faces ``chunk_faces`` at a time (so a reader's peak memory
        is what it builds plus one chunk, not the whole store)."""

    def read_all(self) -> tuple[int, list[GalleryInfo], list[FaceRecord]]:
        """(last seq, galleries, every face) at once: for small stores and tests."""
        with self.snapshot() as snap:
            return snap.seq, snap.galleries, [face for chunk in snap.chunks for face in chunk]

    @abc.abstractmethod
    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Change-log entries after ``seq`` in order, at most ``limit``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
