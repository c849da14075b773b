"""The in-memory search index of one gallery: exact (numpy) while small, HNSW above a size.

Rows are unit-norm float32 embeddings, so cosine similarity is a dot product. Below
``exact_limit`` faces a query is one matrix-vector product over all rows; at or above it an
HNSW graph (hnswlib, the optional ``gallery-ann`` extra; the choice and the limit come from
``benchmarks/ann_choice.py``, see ``docs/results.md``) proposes candidates and their scores are
recomputed exactly from the stored rows, so a score never depends on the index kind.

A subject's score is the **maximum** over its faces' cosines (not a template mean): a new
face never lowers a subject's best match, and a subject with one face (IJB's templates)
scores exactly as an offline template comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_EXACT_LIMIT", "FaceIndex", "SubjectMatch", "ann_available"]

logger = logging.getLogger("facevib.gallery")

# Measured (docs/results.md, "Gallery index"): below this many faces exact search is fast
# enough on 2 cores and an HNSW graph is not worth its build time and memory.
DEFAULT_EXACT_LIMIT = 50_000


def ann_available() -> bool:
    """Whether hnswlib is installed (``pip install facevib[gallery-ann]``)."""
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class SubjectMatch:
    """A subject's best face and its score (the subject's score)."""

    subject: str
    face_id: str
    score: float


class _Hnsw:
    """hnswlib's graph over integer labels; deleted slots are reused by later additions.

    Labels are never reused: hnswlib moves a label onto a deleted element's slot when it
    replaces it, and a label still held by another deleted slot would later be unmapped.
    """

    def __init__(self, dim: int, capacity: int, *, m: int, ef_construction: int, ef: int, threads: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(
            max_elements=max(capacity, 1024), ef_construction=ef_construction, M=m, allow_replace_deleted=True
        )
        self.ef = ef
        self.threads = threads
        self.live = 0

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        needed = self.index.get_current_count() + len(labels)  # deleted slots included: an upper bound
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, 2 * self.index.get_max_elements()))
        self.index.add_items(vectors, labels, num_threads=self.threads, replace_deleted=True)
        self.live += len(labels)

    def remove(self, label: int) -> None:
        self.index.mark_deleted(int(label))
        self.live -= 1

    def query(self, vector: np.ndarray, k: int) -> np.ndarray:
        k = min(k, self.live)
        self.index.set_ef(max(self.ef, k))
        labels, _ = self.index.knn_query(vector[None], k=k, num_threads=1)
        return labels[0].astype(np.int64)


class FaceIndex:
    """The faces of one gallery, searchable by cosine. Not thread-safe: its owner locks it.

    Args:
        dim: embedding size.
        exact_limit: from this many faces on, search runs on an HNSW graph (when hnswlib is
            installed; otherwise exact search continues, with one warning).
        m, ef_construction, ef: HNSW settings (graph degree, build and search beam widths).
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
        m: int = 32,
        ef_construction: int = 200,
        ef: int = 128,
        build_threads: int = 2,
    ) -> None:
        self.dim = dim
        self.exact_limit = exact_limit
        self._hnsw_settings = {"m": m, "ef_construction": ef_construction, "ef": ef, "threads": build_threads}
        self._rows = np.empty((16, dim), np.float32)
        self._labels = np.empty(16, np.int64)  # row -> label (stable per face, an HNSW key)
        self._ids: list[str] = []
        self._subjects: list[str] = []
        self._row_of: dict[str, int] = {}
        self._row_of_label: dict[int, int] = {}
        self._next_label = 0
        self._hnsw: _Hnsw | None = None
        self._hnsw_failures = 0  # queries the graph could not answer (then answered exactly)
        self._warned = False

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, face_id: object) -> bool:
        return face_id in self._row_of

    @property
    def kind(self) -> str:
        """``exact`` or ``hnsw``: how a query runs now."""
        return "hnsw" if self._hnsw is not None else "exact"

    @property
    def subjects(self) -> int:
        return len(set(self._subjects))

    def nbytes(self) -> int:
        """Bytes of the stored rows (the HNSW graph, when built, comes on top)."""
        return int(len(self) * self.dim * 4)

    def add(self, ids: list[str], subjects: list[str], vectors: np.ndarray) -> None:
        """Add faces; ids already present are skipped (so replaying a change is harmless)."""
        keep = [i for i, face_id in enumerate(ids) if face_id not in self._row_of]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate face ids in one addition")
        if not keep:
            return
        vectors = np.asarray(vectors, np.float32)[keep]
        if vectors.shape[1:] != (self.dim,):
            raise ValueError(f"embeddings are {vectors.shape[1:]}, the gallery's are ({self.dim},)")
        start, end = len(self), len(self) + len(keep)
        if end > len(self._rows):
            grown = max(end, 2 * len(self._rows))
            self._rows = np.resize(self._rows, (grown, self.dim))
            self._labels = np.resize(self._labels, grown)
        labels = np.arange(self._next_label, self._next_label + len(keep), dtype=np.int64)
        self._next_label += len(keep)
        self._rows[start:end] = vectors
        self._labels[start:end] = labels
        for offset, i in enumerate(keep):
            self._row_of[ids[i]] = start + offset
            self._row_of_label[int(labels[offset])] = start + offset
            self._ids.append(ids[i])
            self._subjects.append(subjects[i])
        if self._hnsw is not None:
            self._hnsw.add(labels, vectors)
        elif end >= self.exact_limit:
            self._build_hnsw()

    def remove(self, face_id: str) -> bool:
        """Remove one face (False when absent). The last row moves into its place."""
        row = self._row_of.pop(face_id, None)
        if row is None:
            return False
        label = int(self._labels[row])
        last = len(self) - 1
        if row != last:
            self._rows[row] = self._rows[last]
            self._labels[row] = self._labels[last]
            self._ids[row] = self._ids[last]
            self._subjects[row] = self._subjects[last]
            self._row_of[self._ids[row]] = row
            self._row_of_label[int(self._labels[row])] = row
        self._ids.pop()
        self._subjects.pop()
        del self._row_of_label[label]
        if self._hnsw is not None:
            self._hnsw.remove(label)
        return True

    def _build_hnsw(self) -> None:
        if not ann_available():
            if not self._warned:
                logger.warning(
                    "gallery of %d faces searched exactly: install facevib[gallery-ann] (hnswlib) for HNSW search",
                    len(self),
                )
                self._warned = True
            return
        graph = _Hnsw(self.dim, 2 * len(self), **self._hnsw_settings)
        graph.add(self._labels[: len(self)].copy(), self._rows[: len(self)])
        self._hnsw = graph

    def _exact_top(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        scores = self._rows[:n] @ vector
        rows = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        return rows, scores[rows]

    def _candidates(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of (about) the ``k`` best faces and their exact scores, best first."""
        k = min(k, len(self))
        if self._hnsw is None:
            rows, picked = self._exact_top(vector, k)
        else:
            try:
                labels = self._hnsw.query(vector, k)
            except RuntimeError:  # fewer than k live faces reachable in the graph: score them all
                self._hnsw_failures += 1
                rows, picked = self._exact_top(vector, k)
            else:
                rows = np.array([self._row_of_label[int(label)] for label in labels], np.int64)
                picked = self._rows[rows] @ vector
        order = np.lexsort((rows, -picked))  # best score first; ties by row, so results are stable
        return rows[order], picked[order]

    def search(self, vector: np.ndarray, top_k: int) -> list[SubjectMatch]:
        """The ``top_k`` best subjects (each scored by its best face), best first."""
        n = len(self)
        if n == 0:
            return []
        vector = np.asarray(vector, np.float32)
        k = min(n, 4 * top_k)
        while True:
            rows, scores = self._candidates(vector, k)
            best: dict[str, SubjectMatch] = {}
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
                subject = self._subjects[row]
                if subject not in best:
                    best[subject] = SubjectMatch(subject, self._ids[row], float(score))
            # Fewer distinct subjects than asked among the k best faces: look further.
            if len(best) >= top_k or k >= n:
                return list(best.values())[:top_k]
            k = min(n, 4 * k)
