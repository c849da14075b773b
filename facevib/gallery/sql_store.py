"""The SQL both stores run, written once: tables ``galleries``, ``faces`` and the ``changes`` log.

:class:`SQLStore` implements every :class:`~facevib.gallery.store.GalleryStore` operation on
a DB-API connection that its subclass hands out through ``_write()`` (one transaction that
holds the store's write lock and commits durably on exit) and ``_read()`` (one consistent
read). The dialects differ only in the parameter marker (``?`` for sqlite3, ``%s`` for
psycopg), the schema, and how those transactions are opened; the statements here use ``?``
and are rewritten once per class.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from typing import Any

from facevib.gallery.store import (
    SNAPSHOT_CHUNK,
    Change,
    FaceRecord,
    GalleryConflict,
    GalleryInfo,
    GalleryNotFound,
    GalleryStore,
    NewFace,
    Snapshot,
    UnknownFace,
    UnknownSubject,
    embedding_bytes,
    embedding_from_bytes,
)

__all__ = ["SQLStore", "dumps", "schema"]

# Ids per ``IN (...)`` list: below SQLite's default limit of 32,766 variables and PostgreSQL's 65,535.
_IN_CHUNK = 10_000


def dumps(value: Any) -> str:
    """Metadata as stored: compact JSON, keys sorted (so equal settings compare equal as text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def schema(*, blob: str, seq_key: str) -> str:
    """The tables, in a dialect's column types: ``blob`` for bytes, ``seq_key`` for the log's increasing key."""
    return f"""
CREATE TABLE IF NOT EXISTS galleries (
    name TEXT PRIMARY KEY, embedding_dim INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id TEXT PRIMARY KEY,
    gallery TEXT NOT NULL REFERENCES galleries(name) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    embedding {blob} NOT NULL,
    metadata TEXT);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces (gallery, subject);
CREATE TABLE IF NOT EXISTS changes (
    seq {seq_key}, op TEXT NOT NULL, gallery TEXT NOT NULL, face_id TEXT);
"""


def _marks(count: int) -> str:
    return ",".join("?" * count)


class SQLStore(GalleryStore):
    """Gallery operations in SQL; a subclass sets ``marker`` and ``snapshot_order`` and opens transactions."""

    marker = "?"  # the driver's parameter marker
    snapshot_order = "id"  # the order of faces in a snapshot (the index's row order at start)

    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction under the write lock, committed durably on exit."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        """A read transaction that sees one state."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement if self.marker == "?" else statement.replace("?", self.marker)

    def _run(self, db: Any, statement: str, params: Sequence[Any] = ()) -> Any:
        return db.execute(self._sql(statement), tuple(params))

    def _run_many(self, db: Any, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        with closing(db.cursor()) as cursor:
            cursor.executemany(self._sql(statement), rows)

    def _log(self, db: Any, op: str, gallery: str, face_ids: Sequence[str | None]) -> None:
        self._run_many(
            db, "INSERT INTO changes (op, gallery, face_id) VALUES (?, ?, ?)", [(op, gallery, f) for f in face_ids]
        )

    def _gallery(self, db: Any, name: str) -> GalleryInfo:
        row = self._run(db, "SELECT embedding_dim, metadata FROM galleries WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise GalleryNotFound(f"no gallery named {name!r}", name)
        return GalleryInfo(name, int(row[0]), json.loads(row[1]))

    def _chunks(self, values: Sequence[str]) -> Iterator[Sequence[str]]:
        for start in range(0, len(values), _IN_CHUNK):
            yield values[start : start + _IN_CHUNK]

    def create_gallery(self, info: GalleryInfo) -> bool:
        with self._write() as db:
            try:
                existing = self._gallery(db, info.name)
            except GalleryNotFound:
                self._run(
                    db, "INSERT INTO galleries VALUES (?, ?, ?)", (info.name, info.embedding_dim, dumps(info.metadata))
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
            count = self._run(db, "DELETE FROM faces WHERE gallery = ?", (name,)).rowcount
            self._run(db, "DELETE FROM galleries WHERE name = ?", (name,))
            self._log(db, "drop", name, [None])
        return int(count)

    def galleries(self) -> list[GalleryInfo]:
        with self._read() as db:
            rows = self._run(db, "SELECT name, embedding_dim, metadata FROM galleries ORDER BY name").fetchall()
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
            self._run_many(db, "INSERT INTO faces VALUES (?, ?, ?, ?, ?)", rows)
            self._log(db, "add", gallery, ids)
        return ids

    def remove_face(self, gallery: str, face_id: str) -> str:
        with self._write() as db:
            self._gallery(db, gallery)
            rows = self._run(
                db, "DELETE FROM faces WHERE gallery = ? AND id = ? RETURNING subject", (gallery, face_id)
            ).fetchall()
            if not rows:
                raise UnknownFace(f"gallery {gallery!r} has no face {face_id!r}", face_id)
            self._log(db, "remove", gallery, [face_id])
        return str(rows[0][0])

    def remove_subject(self, gallery: str, subject: str) -> list[str]:
        with self._write() as db:
            self._gallery(db, gallery)
            statement = "DELETE FROM faces WHERE gallery = ? AND subject = ? RETURNING id"
            ids = [r[0] for r in self._run(db, statement, (gallery, subject)).fetchall()]
            if not ids:
                raise UnknownSubject(f"gallery {gallery!r} has no subject {subject!r}", subject)
            self._log(db, "remove", gallery, ids)
        return ids

    def face_metadata(self, gallery: str, face_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self._read() as db:
            for chunk in self._chunks(list(face_ids)):
                statement = f"SELECT id, metadata FROM faces WHERE gallery = ? AND id IN ({_marks(len(chunk))})"
                out.update(
                    (i, json.loads(m))
                    for i, m in self._run(db, statement, (gallery, *chunk)).fetchall()
                    if m is not None
                )
        return out

    @contextmanager
    def snapshot(self, chunk_faces: int = SNAPSHOT_CHUNK) -> Iterator[Snapshot]:
        if chunk_faces < 1:
            raise ValueError(f"chunk_faces must be >= 1, got {chunk_faces}")
        with self._read() as db:  # one transaction: every read below sees one state
            seq = self._run(db, "SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
            infos = [
                GalleryInfo(n, int(d), json.loads(m))
                for n, d, m in self._run(db, "SELECT name, embedding_dim, metadata FROM galleries ORDER BY name")
            ]
            counts = {g: int(c) for g, c in self._run(db, "SELECT gallery, COUNT(*) FROM faces GROUP BY gallery")}
            open_ = [True]
            try:
                yield Snapshot(int(seq), infos, counts, self._face_pages(db, chunk_faces, open_))
            finally:
                open_[0] = False  # a page read after the transaction would see another state

    def _face_pages(self, db: Any, size: int, open_: list[bool]) -> Iterator[list[FaceRecord]]:
        """Every face in ``snapshot_order``, ``size`` at a time, by keyset pagination on that key.

        Not one cursor read lazily: psycopg's client-side cursor receives the whole result at
        ``execute`` (1M faces: 2 GB of embeddings, then as much again as Python objects). Each
        page is a range scan of the key's index, so the pages together read each row once.
        """
        key = self.snapshot_order
        last: Any = None
        while True:
            if not open_[0]:
                raise RuntimeError("snapshot chunks read after the snapshot's with block closed")
            after, params = ("", ()) if last is None else (f"WHERE {key} > ?", (last,))
            statement = f"SELECT {key}, id, gallery, subject, embedding FROM faces {after} ORDER BY {key} LIMIT ?"
            rows = self._run(db, statement, (*params, size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [FaceRecord(i, g, s, embedding_from_bytes(bytes(e))) for _, i, g, s, e in rows]
            if len(rows) < size:
                return

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        # The log first, then its faces and galleries by primary key: a join lets PostgreSQL's
        # planner pick a hash join that scans every face (and its TOASTed embedding) on each call.
        with self._read() as db:
            rows = self._run(
                db, "SELECT seq, op, gallery, face_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            added = [face_id for _, op, _, face_id in rows if op == "add"]
            created = sorted({gallery for _, op, gallery, _ in rows if op == "create"})
            faces: dict[str, tuple[str, Any]] = {}
            for chunk in self._chunks(added):
                statement = f"SELECT id, subject, embedding FROM faces WHERE id IN ({_marks(len(chunk))})"
                faces.update((i, (subject, blob)) for i, subject, blob in self._run(db, statement, chunk).fetchall())
            infos: dict[str, GalleryInfo] = {}
            for chunk in self._chunks(created):
                statement = f"SELECT name, embedding_dim, metadata FROM galleries WHERE name IN ({_marks(len(chunk))})"
                infos.update(
                    (name, GalleryInfo(name, int(dim), json.loads(meta)))
                    for name, dim, meta in self._run(db, statement, chunk).fetchall()
                )
        out = []
        for s, op, gallery, face_id in rows:
            face = None
            if op == "add" and face_id in faces:
                subject, blob = faces[face_id]
                face = FaceRecord(face_id, gallery, subject, embedding_from_bytes(bytes(blob)))
            info = infos.get(gallery) if op == "create" else None
            out.append(Change(int(s), op, gallery, face_id, face, info))
        return out
