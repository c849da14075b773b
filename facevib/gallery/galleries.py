"""Galleries: a store (the source of truth) and the in-memory indexes that follow its change log.

Every write goes to the store first (it returns once durable), then the caller catches the
indexes up with the store's change log (:meth:`Galleries.sync`), so a client that was told
"enrolled" finds the face in its next search. A follower thread runs the same
:meth:`~Galleries.sync` every ``poll_s`` seconds, which is how a replica sees the writes of
other servers sharing the database: a face enrolled elsewhere is searchable here within
``poll_s`` plus the time to apply the change.

Thread-safe: one lock guards the indexes (searches hold it while they run); the store
serialises its own writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from facevib.gallery.index import DEFAULT_EXACT_LIMIT, FaceIndex, SubjectMatch
from facevib.gallery.store import (
    SNAPSHOT_CHUNK,
    Change,
    FaceRecord,
    GalleryInfo,
    GalleryNotFound,
    GalleryStore,
    NewFace,
)

__all__ = ["Galleries"]

logger = logging.getLogger("facevib.gallery")


class Galleries:
    """The galleries of one server.

    Args:
        store: where faces live (:class:`~facevib.gallery.sqlite_store.SQLiteStore` or
            :class:`~facevib.gallery.postgres_store.PostgresStore`); closed by :meth:`stop`.
        exact_limit: the size from which a gallery's index searches sign codes (:class:`FaceIndex`).
        poll_s: period of the follower thread; None: no thread (only this process writes).
        snapshot_chunk: faces read from the store at a time at start (bounds the start-up peak).
    """

    def __init__(
        self,
        store: GalleryStore,
        *,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
        poll_s: float | None = 0.25,
        snapshot_chunk: int = SNAPSHOT_CHUNK,
    ) -> None:
        self.store = store
        self.snapshot_chunk = snapshot_chunk
        self.exact_limit = exact_limit
        self.poll_s = poll_s
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()  # one catch-up at a time, entries applied in seq order
        self._indexes: dict[str, FaceIndex] = {}
        self._infos: dict[str, GalleryInfo] = {}
        self._seq = 0
        self._pending: tuple[str, list[str]] | None = None  # removals held back by sync (one gallery's)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load every face from the store into the indexes, then start following its log."""
        started = time.perf_counter()
        count = 0
        # The store's read transaction stays open while the indexes fill a chunk at a time:
        # the faces and the log position come from one state, and at most one chunk of records
        # exists beside the indexes (not the whole store: 1M faces are 2 GB as float32 alone).
        with self._sync_lock, self.store.snapshot(self.snapshot_chunk) as snap, self._lock:
            infos = snap.galleries
            self._infos = {info.name: info for info in infos}
            self._indexes = {info.name: self._new_index(info) for info in infos}
            for name, faces in snap.counts.items():
                self._indexes[name].reserve(faces)
            for chunk in snap.chunks:
                by_gallery: dict[str, list[FaceRecord]] = {}
                for face in chunk:
                    by_gallery.setdefault(face.gallery, []).append(face)
                for name, rows in by_gallery.items():
                    self._indexes[name].add(
                        [f.id for f in rows], [f.subject for f in rows], np.stack([f.embedding for f in rows])
                    )
                count += len(chunk)
            self._seq = snap.seq
        logger.info(
            "galleries: %d faces in %d galleries from %s, loaded and indexed in %.1f s",
            count,
            len(infos),
            self.store.describe(),
            time.perf_counter() - started,
        )
        if self.poll_s is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="facevib-gallery-follow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop following and close the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.store.close()

    def _follow(self) -> None:
        assert self.poll_s is not None
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except Exception as err:  # a lost connection: keep serving what we have, retry next period
                logger.warning("galleries: catching up with %s failed (%s); retrying", self.store.describe(), err)

    def _new_index(self, info: GalleryInfo) -> FaceIndex:
        return FaceIndex(info.embedding_dim, exact_limit=self.exact_limit)

    # ------------------------------------------------------------------ following the log

    @property
    def seq(self) -> int:
        """The last change-log entry applied."""
        return self._seq

    def sync(self) -> int:
        """Apply every change-log entry written since the last one applied; how many were applied."""
        applied = 0
        with self._sync_lock:
            while True:
                changes = self.store.changes_since(self._seq)
                if not changes:
                    return applied
                with self._lock:
                    for change in changes:
                        if not self._removal_batched(change):
                            self._apply(change)
                        self._seq = change.seq
                    self._flush_removals()
                applied += len(changes)

    def _removal_batched(self, change: Change) -> bool:
        """Hold back a run of removals from one gallery, so its index compacts once for all of them."""
        if change.op != "remove" or change.face_id is None:
            self._flush_removals()
            return False
        if self._pending and self._pending[0] != change.gallery:
            self._flush_removals()
        self._pending = (change.gallery, [*self._pending[1], change.face_id] if self._pending else [change.face_id])
        return True

    def _flush_removals(self) -> None:
        if self._pending:
            gallery, face_ids = self._pending
            index = self._indexes.get(gallery)
            if index is not None:
                index.remove_many(face_ids)
            self._pending = None

    def _apply(self, change: Change) -> None:
        if change.op == "create":
            if change.info is not None and change.gallery not in self._indexes:
                self._infos[change.gallery] = change.info
                self._indexes[change.gallery] = self._new_index(change.info)
        elif change.op == "drop":
            self._infos.pop(change.gallery, None)
            self._indexes.pop(change.gallery, None)
        elif change.op == "add":
            index = self._indexes.get(change.gallery)
            if change.face is not None and index is not None:
                index.add([change.face.id], [change.face.subject], change.face.embedding[None])
        elif change.op == "remove":
            index = self._indexes.get(change.gallery)
            if index is not None and change.face_id is not None:
                index.remove(change.face_id)
        else:
            raise ValueError(f"change {change.seq}: unknown operation {change.op!r}")

    # ------------------------------------------------------------------ operations

    def create(self, name: str, embedding_dim: int, metadata: dict[str, Any] | None = None) -> bool:
        """Create a gallery (True) or confirm it exists with these settings (False)."""
        created = self.store.create_gallery(GalleryInfo(name, embedding_dim, dict(metadata or {})))
        self.sync()
        return created

    def drop(self, name: str) -> int:
        """Delete a gallery; the number of faces it had."""
        count = self.store.drop_gallery(name)
        self.sync()
        return count

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._indexes)

    def describe(self, name: str) -> dict[str, Any]:
        """``faces``, ``subjects``, ``embedding_dim``, ``index`` kind, ``metadata``."""
        with self._lock:
            index = self._index(name)
            info = self._infos[name]
            return {
                "name": name,
                "faces": len(index),
                "subjects": index.subjects,
                "embedding_dim": info.embedding_dim,
                "index": index.kind,
                "metadata": info.metadata,
            }

    def embedding_dim(self, name: str) -> int:
        with self._lock:
            self._index(name)
            return self._infos[name].embedding_dim

    def enroll(self, name: str, faces: Sequence[NewFace]) -> list[str]:
        """Store ``faces`` durably, then index them; their ids."""
        ids = self.store.add_faces(name, faces)
        self.sync()
        return ids

    def remove_face(self, name: str, face_id: str) -> str:
        """Delete one face; its subject."""
        subject = self.store.remove_face(name, face_id)
        self.sync()
        return subject

    def remove_subject(self, name: str, subject: str) -> list[str]:
        """Delete every face of ``subject``; their ids."""
        ids = self.store.remove_subject(name, subject)
        self.sync()
        return ids

    def search(self, name: str, vector: np.ndarray, top_k: int) -> list[SubjectMatch]:
        """The ``top_k`` best subjects of gallery ``name`` for the unit vector ``vector``."""
        with self._lock:
            return self._index(name).search(vector, top_k)

    def _index(self, name: str) -> FaceIndex:
        index = self._indexes.get(name)
        if index is None:
            raise GalleryNotFound(f"no gallery named {name!r}", name)
        return index
