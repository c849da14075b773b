"""The embedded store: one SQLite file (stdlib ``sqlite3``), the default source of truth.

WAL journal with ``synchronous=FULL``: a commit returns after its WAL frames are fsynced, so
an enrollment answered to a client survives ``kill -9`` and power loss (SQLite's own
guarantee; WAL with ``NORMAL`` would only survive a process crash). Writes take the write
lock up front (``BEGIN IMMEDIATE``), so change-log ``seq`` order is commit order.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from facevib.gallery.store import (
    Change,
    FaceRecord,
    GalleryConflict,
    GalleryInfo,
    GalleryNotFound,
    GalleryStore,
    NewFace,
    UnknownFace,
    UnknownSubject,
    embedding_bytes,
    embedding_from_bytes,
)

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS facevib_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS galleries (
    name TEXT PRIMARY KEY, embedding_dim INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id TEXT PRIMARY KEY,
    gallery TEXT NOT NULL REFERENCES galleries(name) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    embedding BLOB NOT NULL,
    metadata TEXT);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces (gallery, subject);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, gallery TEXT NOT NULL, face_id TEXT);
"""


def dumps(value: Any) -> str:
    """Metadata as stored: compact JSON, keys sorted (so equal settings compare equal as text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


class SQLiteStore(GalleryStore):
    """Galleries in the SQLite file ``path`` (created with its tables when absent).

    Raises:
        ValueError: the file cannot be opened or written (the message names it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one connection, one statement at a time
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            # A write that must succeed now, not at the first enrollment: an existing file on a
            # read-only mount would open and read fine.
            self._db.execute("INSERT OR REPLACE INTO facevib_meta VALUES ('schema', '1')")
        except sqlite3.Error as err:
            raise ValueError(f"gallery database {self.path} cannot be opened for writing ({err})") from None

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    @staticmethod
    def _log(db: sqlite3.Connection, op: str, gallery: str, face_ids: Sequence[str | None]) -> None:
        db.executemany(
            "INSERT INTO changes (op, gallery, face_id) VALUES (?, ?, ?)", [(op, gallery, f) for f in face_ids]
        )

    @staticmethod
    def _gallery(db: sqlite3.Connection, name: str) -> GalleryInfo:
        row = db.execute("SELECT embedding_dim, metadata FROM galleries WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise GalleryNotFound(f"no gallery named {name!r}", name)
        return GalleryInfo(name, int(row[0]), json.loads(row[1]))

    def create_gallery(self, info: GalleryInfo) -> bool:
        with self._write() as db:
            try:
                existing = self._gallery(db, info.name)
            except GalleryNotFound:
                db.execute(
                    "INSERT INTO galleries VALUES (?, ?, ?)", (info.name, info.embedding_dim, dumps(info.metadata))
                )
                self._log(db, "create", info.name, [None])
                return True
        if existing != GalleryInfo(info.name, info.embedding_dim, json.loads(dumps(info.metadata))):
            raise GalleryConflict(
                f"gallery {info.name!r} already exists with other settings "
                f"(embedding_dim {existing.embedding_dim}, metadata {dumps(existing.metadata)}); delete it first",
                info.name,
            )
        return False

    def drop_gallery(self, name: str) -> int:
        with self._write() as db:
            self._gallery(db, name)
            count = db.execute("DELETE FROM faces WHERE gallery = ?", (name,)).rowcount
            db.execute("DELETE FROM galleries WHERE name = ?", (name,))
            self._log(db, "drop", name, [None])
        return int(count)

    def galleries(self) -> list[GalleryInfo]:
        with self._read() as db:
            rows = db.execute("SELECT name, embedding_dim, metadata FROM galleries ORDER BY name").fetchall()
        return [GalleryInfo(n, int(d), json.loads(m)) for n, d, m in rows]

    def gallery(self, name: str) -> GalleryInfo:
        with self._read() as db:
            return self._gallery(db, name)

    def add_faces(self, gallery: str, faces: Sequence[NewFace]) -> list[str]:
        ids = [uuid.uuid4().hex for _ in faces]
        rows = [
            (
                i,
                gallery,
                f.subject,
                embedding_bytes(f.embedding),
                None if f.metadata is None else dumps(dict(f.metadata)),
            )
            for i, f in zip(ids, faces, strict=True)
        ]
        with self._write() as db:
            self._gallery(db, gallery)
            db.executemany("INSERT INTO faces VALUES (?, ?, ?, ?, ?)", rows)
            self._log(db, "add", gallery, ids)
        return ids

    def remove_face(self, gallery: str, face_id: str) -> str:
        with self._write() as db:
            self._gallery(db, gallery)
            row = db.execute("SELECT subject FROM faces WHERE gallery = ? AND id = ?", (gallery, face_id)).fetchone()
            if row is None:
                raise UnknownFace(f"gallery {gallery!r} has no face {face_id!r}", face_id)
            db.execute("DELETE FROM faces WHERE id = ?", (face_id,))
            self._log(db, "remove", gallery, [face_id])
        return str(row[0])

    def remove_subject(self, gallery: str, subject: str) -> list[str]:
        with self._write() as db:
            self._gallery(db, gallery)
            ids = [
                r[0] for r in db.execute("SELECT id FROM faces WHERE gallery = ? AND subject = ?", (gallery, subject))
            ]
            if not ids:
                raise UnknownSubject(f"gallery {gallery!r} has no subject {subject!r}", subject)
            db.execute("DELETE FROM faces WHERE gallery = ? AND subject = ?", (gallery, subject))
            self._log(db, "remove", gallery, ids)
        return ids

    def face_metadata(self, gallery: str, face_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not face_ids:
            return {}
        marks = ",".join("?" * len(face_ids))
        with self._read() as db:
            rows = db.execute(
                f"SELECT id, metadata FROM faces WHERE gallery = ? AND id IN ({marks})", (gallery, *face_ids)
            ).fetchall()
        return {i: json.loads(m) for i, m in rows if m is not None}

    def snapshot(self) -> tuple[int, list[GalleryInfo], list[FaceRecord]]:
        with self._read() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
            infos = [
                GalleryInfo(n, int(d), json.loads(m))
                for n, d, m in db.execute("SELECT name, embedding_dim, metadata FROM galleries ORDER BY name")
            ]
            faces = [
                FaceRecord(i, g, s, embedding_from_bytes(e))
                for i, g, s, e in db.execute("SELECT id, gallery, subject, embedding FROM faces ORDER BY rowid")
            ]
        return int(seq), infos, faces

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        with self._read() as db:
            rows = db.execute(
                "SELECT c.seq, c.op, c.gallery, c.face_id, f.subject, f.embedding, g.embedding_dim, g.metadata "
                "FROM changes c LEFT JOIN faces f ON c.op = 'add' AND f.id = c.face_id "
                "LEFT JOIN galleries g ON c.op = 'create' AND g.name = c.gallery "
                "WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        out = []
        for s, op, gallery, face_id, subject, blob, dim, meta in rows:
            face = FaceRecord(face_id, gallery, subject, embedding_from_bytes(blob)) if blob is not None else None
            info = GalleryInfo(gallery, int(dim), json.loads(meta)) if dim is not None else None
            out.append(Change(int(s), op, gallery, face_id, face, info))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
