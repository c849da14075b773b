"""Galleries in PostgreSQL (psycopg 3, the optional ``gallery-postgres`` extra), shared by replicas.

The same tables and change log as the SQLite store. Similarity is not computed in SQL
(Debian's PostgreSQL here has no pgvector): every replica keeps its own index and follows the
``changes`` table. Writers take one transaction-scoped advisory lock before they draw
``seq`` numbers, so sequence order is commit order and a follower that has seen ``seq = s``
can never later see a smaller one commit (a plain ``BIGSERIAL`` is drawn at insert time and
commits can overtake each other, which would hide a change from a follower forever). The
operations themselves are :class:`~facevib.gallery.sql_store.SQLStore`'s, shared with SQLite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from facevib.gallery.sql_store import SQLStore, schema

__all__ = ["PostgresStore", "redact_url"]

_SCHEMA = schema(blob="BYTEA", seq_key="BIGSERIAL PRIMARY KEY")

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


class PostgresStore(SQLStore):
    """Galleries in the database at ``url`` (tables created when absent).

    Raises:
        ValueError: psycopg is not installed, or the database cannot be reached or written.
    """

    marker = "%s"
    snapshot_order = "id"

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

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()
