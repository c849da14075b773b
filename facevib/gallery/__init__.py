"""Galleries of enrolled faces for 1:N identification: durable stores and in-memory indexes.

* :mod:`facevib.gallery.store`: the store contract, its change log and errors;
* :mod:`facevib.gallery.sql_store`: the SQL of both stores, written once;
* :mod:`facevib.gallery.sqlite_store`: the embedded default (one SQLite file);
* :mod:`facevib.gallery.postgres_store`: PostgreSQL, shared by several server replicas;
* :mod:`facevib.gallery.index`: one gallery's search index (exact numpy; Hamming sign codes when large);
* :mod:`facevib.gallery.galleries`: the component a server holds (store + indexes + follower).

Numpy and the standard library only; faiss and psycopg are optional extras, imported
when used. The HTTP routes live in :mod:`facevib.serve.gallery_routes`.
"""

from __future__ import annotations

from facevib.gallery.galleries import Galleries
from facevib.gallery.index import FaceIndex, SubjectMatch
from facevib.gallery.store import (
    GalleryConflict,
    GalleryError,
    GalleryInfo,
    GalleryNotFound,
    GalleryStore,
    NewFace,
    UnknownFace,
    UnknownSubject,
)

__all__ = [
    "FaceIndex",
    "Galleries",
    "GalleryConflict",
    "GalleryError",
    "GalleryInfo",
    "GalleryNotFound",
    "GalleryStore",
    "NewFace",
    "SubjectMatch",
    "UnknownFace",
    "UnknownSubject",
    "open_store",
]


def open_store(*, db: str | None = None, url: str | None = None) -> GalleryStore:
    """The store a server was configured with: ``url`` (PostgreSQL) or ``db`` (a SQLite file).

    Raises:
        ValueError: both or neither given, or the store cannot be opened (named).
    """
    if bool(db) == bool(url):
        raise ValueError("give exactly one of a gallery database file (--gallery-db) and URL (--gallery-url)")
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"--gallery-url must be a postgresql:// URL, got {url.split('://', 1)[0]}://...")
        from facevib.gallery.postgres_store import PostgresStore

        return PostgresStore(url)
    from facevib.gallery.sqlite_store import SQLiteStore

    assert db is not None
    return SQLiteStore(db)
