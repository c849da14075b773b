"""Galleries in PostgreSQL (psycopg 3, the optional ``gallery-postgres`` extra), shared by replicas.

The same tables and change log as the SQLite store. Similarity is not computed in SQL
(Debian's PostgreSQL here has no pgvector): every replica keeps its own index and follows the
``changes`` table. Writers take one transaction-scoped advisory lock before they draw
``seq`` numbers, so sequence order is commit order and a follower that has seen ``seq = s``
can never later see a smaller one commit (a plain ``BIGSERIAL`` is drawn at insert time and
commits can overtake each other, which would hide a change from a follower forever).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from facevib.gallery.sqlite_store import dumps
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

__all__ = ["PostgresStore", "redact_url"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS galleries (
    name TEXT PRIMARY KEY, embedding_dim INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id TEXT PRIMARY KEY,
    gallery TEXT NOT NULL REFERENCES galleries(name) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    embedding BYTEA NOT NULL,
    metadata TEXT);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces (gallery, subject);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY, op TEXT NOT NULL, gallery TEXT NOT NULL, face_id TEXT);
"""

# Any constant: the key of the advisory lock every writer holds until its commit.
_WRITE_LOCK = 0x66616365  # "face"


def redact_url(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(url)
    except Exception:  # not parseable: say nothing of it
        return "postgresql://(unparseable url)"
    parts.pop("password", None)
    return make_conninfo(**{k: str(v) for k, v in parts.items()})


class PostgresStore(GalleryStore):
    """Galleries in the database at ``url`` (tables created when absent).

    Raises:
        ValueError: psycopg is not installed, or the database cannot be reached or written.
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ValueError("--gallery-url needs psycopg: pip install 'facevib[gallery-postgres]'") from None
        self._psycopg = psycopg
        self._where = redact_url(url)
        try:
            # Text as str even from a SQL_ASCII database (psycopg would hand out bytes).
            self._writer = psycopg.connect(url, autocommit=True, client_encoding="utf8")
            self._reader = psycopg.connect(url, autocommit=True, client_encoding="utf8")
            self._reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._reader.read_only = True
            with self._writer.transaction():
                # Two servers starting together may both create the tables: one at a time.
                self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                self._writer.execute(_SCHEMA)
        except psycopg.Error as err:
            raise ValueError(f"gallery database {self._where} cannot be used ({str(err).strip()})") from None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    def describe(self) -> str:
        return self._where

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._write_lock, self._writer.transaction():
            self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            yield self._writer

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._read_lock, self._reader.transaction():
            yield self._reader

    @staticmethod
    def _log(db: Any, op: str, gallery: str, face_ids: Sequence[str | None]) -> None:
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO changes (op, gallery, face_id) VALUES (%s, %s, %s)", [(op, gallery, f) for f in face_ids]
            )

    @staticmethod
    def _gallery(db: Any, name: str) -> GalleryInfo:
        row = db.execute("SELECT embedding_dim, metadata FROM galleries WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise GalleryNotFound(f"no gallery named {name!r}", name)
        return GalleryInfo(name, int(row[0]), json.loads(row[1]))

    def create_gallery(self, info: GalleryInfo) -> bool:
        with self._write() as db:
            try:
                existing = self._gallery(db, info.name)
            except GalleryNotFound:
                db.execute(
                    "INSERT INTO galleries VALUES (%s, %s, %s)", (info.name, info.embedding_dim, dumps(info.metadata))
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
            count = db.execute("DELETE FROM faces WHERE gallery = %s", (name,)).rowcount
            db.execute("DELETE FROM galleries WHERE name = %s", (name,))
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
            with db.cursor() as cursor:
                cursor.executemany("INSERT INTO faces VALUES (%s, %s, %s, %s, %s)", rows)
            self._log(db, "add", gallery, ids)
        return ids

    def remove_face(self, gallery: str, face_id: str) -> str:
        with self._write() as db:
            self._gallery(db, gallery)
            row = db.execute(
                "DELETE FROM faces WHERE gallery = %s AND id = %s RETURNING subject", (gallery, face_id)
            ).fetchone()
            if row is None:
                raise UnknownFace(f"gallery {gallery!r} has no face {face_id!r}", face_id)
            self._log(db, "remove", gallery, [face_id])
        return str(row[0])

    def remove_subject(self, gallery: str, subject: str) -> list[str]:
        with self._write() as db:
            self._gallery(db, gallery)
            ids = [
                r[0]
                for r in db.execute(
                    "DELETE FROM faces WHERE gallery = %s AND subject = %s RETURNING id", (gallery, subject)
                ).fetchall()
            ]
            if not ids:
                raise UnknownSubject(f"gallery {gallery!r} has no subject {subject!r}", subject)
            self._log(db, "remove", gallery, ids)
        return ids

    def face_metadata(self, gallery: str, face_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not face_ids:
            return {}
        with self._read() as db:
            rows = db.execute(
                "SELECT id, metadata FROM faces WHERE gallery = %s AND id = ANY(%s)", (gallery, list(face_ids))
            ).fetchall()
        return {i: json.loads(m) for i, m in rows if m is not None}

    def snapshot(self) -> tuple[int, list[GalleryInfo], list[FaceRecord]]:
        with self._read() as db:  # REPEATABLE READ: the three reads see one state
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
            infos = [
                GalleryInfo(n, int(d), json.loads(m))
                for n, d, m in db.execute("SELECT name, embedding_dim, metadata FROM galleries ORDER BY name")
            ]
            faces = [
                FaceRecord(i, g, s, embedding_from_bytes(bytes(e)))
                for i, g, s, e in db.execute("SELECT id, gallery, subject, embedding FROM faces ORDER BY id")
            ]
        return int(seq), infos, faces

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        # The log first, then its faces and galleries by primary key: a join lets the planner
        # pick a hash join that scans every face (and its TOASTed embedding) on each call.
        with self._read() as db:
            rows = db.execute(
                "SELECT seq, op, gallery, face_id FROM changes WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit)
            ).fetchall()
            added = [face_id for _, op, _, face_id in rows if op == "add"]
            created = sorted({gallery for _, op, gallery, _ in rows if op == "create"})
            faces = (
                {
                    i: (subject, blob)
                    for i, subject, blob in db.execute(
                        "SELECT id, subject, embedding FROM faces WHERE id = ANY(%s)", (added,)
                    ).fetchall()
                }
                if added
                else {}
            )
            infos = (
                {
                    name: GalleryInfo(name, int(dim), json.loads(meta))
                    for name, dim, meta in db.execute(
                        "SELECT name, embedding_dim, metadata FROM galleries WHERE name = ANY(%s)", (created,)
                    ).fetchall()
                }
                if created
                else {}
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

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()
