"""The embedded store: one SQLite file (stdlib ``sqlite3``), the default source of truth.

WAL journal with ``synchronous=FULL``: a commit returns after its WAL frames are fsynced, so
an enrollment answered to a client survives ``kill -9`` and power loss (SQLite's own
guarantee; WAL with ``NORMAL`` would only survive a process crash). Writes take the write
lock up front (``BEGIN IMMEDIATE``), so change-log ``seq`` order is commit order. The
operations themselves are :class:`~facevib.gallery.sql_store.SQLStore`'s, shared with PostgreSQL.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from facevib.gallery.sql_store import SQLStore, schema

__all__ = ["SQLiteStore"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS facevib_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);" + schema(
    blob="BLOB", seq_key="INTEGER PRIMARY KEY AUTOINCREMENT"
)


class SQLiteStore(SQLStore):
    """Galleries in the SQLite file ``path`` (created with its tables when absent).

    Raises:
        ValueError: the file cannot be opened or written (the message names it).
    """

    marker = "?"
    snapshot_order = "rowid"  # enrollment order

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

    def close(self) -> None:
        with self._lock:
            self._db.close()
