"""The in-memory search index of one gallery: exact (numpy) while small, Hamming codes above a size.

Rows are unit-norm float32 embeddings, so cosine similarity is a dot product. Below
``exact_limit`` faces a query is one matrix-vector product over all rows. At or above it each
face also gets a **sign code**: the signs of its projections on ``bits`` random orthonormal
directions (SimHash; Charikar, "Similarity estimation techniques from rounding algorithms",
STOC 2002), so the fraction of differing bits of two codes estimates their angle over pi. A
query scans every code by Hamming distance (faiss's ``IndexBinaryFlat``: 32 bytes a face at
the default 256 bits, the optional ``gallery-ann`` extra), takes the ``shortlist`` nearest and rescores
them exactly from the stored rows, so a score never depends on the index kind.

Why this and not a graph or a clustering (``benchmarks/ann_choice.py``, docs/results.md): on
embeddings without cluster structure (the benchmark's random unit vectors) IVF lists and HNSW
graphs give a search no direction until it stumbles on the mate, and their recall of planted
mates collapses at 100k faces; a genuine mate at cosine 0.6 differs from the query in ~30%
of its bits against ~50% for every other face, so it is in a short Hamming shortlist. Codes
need no training: no retrain or rebalance as the gallery grows or changes. Adding a face
costs one projection; removing faces compacts the codes (one pass over all of them per batch of
removals: 65-85 ms at 1M faces on the loaded 2-core machine).

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
# enough on 2 cores, and exact is exact.
DEFAULT_EXACT_LIMIT = 50_000

# Rows projected at a time when encoding: bounds the temporary float32 block to 64 MiB at 512-d.
_ENCODE_CHUNK = 32_768


def ann_available() -> bool:
    """Whether faiss is installed (``pip install facevib[gallery-ann]``)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class SubjectMatch:
    """A subject's best face and its score (the subject's score)."""

    subject: str
    face_id: str
    score: float


class _SignCodes:
    """Sign codes of the faces under integer labels, in faiss's exhaustive Hamming index.

    ``bits`` is a multiple of 8; the directions are orthonormal when ``bits <= dim`` (a random
    rotation, whose first ``bits`` coordinates are kept), else independent Gaussian.
    """

    def __init__(self, dim: int, bits: int, seed: int) -> None:
        import faiss

        self._faiss = faiss
        # One query at a time holds the gallery lock, and an OpenMP team on shared cores spins:
        # measured 9-18x slower per query with 2 threads than with 1 on the 2 loaded cores here.
        faiss.omp_set_num_threads(1)
        gaussian = np.random.default_rng(seed).standard_normal((dim, bits))
        directions = np.linalg.qr(gaussian)[0] if bits <= dim else gaussian
        self.directions = np.ascontiguousarray(directions, np.float32)
        self.index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        codes = [
            np.packbits(vectors[start : start + _ENCODE_CHUNK] @ self.directions > 0, axis=1)
            for start in range(0, len(vectors), _ENCODE_CHUNK)
        ]
        return np.concatenate(codes) if codes else np.empty((0, self.directions.shape[1] // 8), np.uint8)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(self.encode(vectors), np.ascontiguousarray(labels, np.int64))

    def remove(self, labels: np.ndarray) -> None:
        self.index.remove_ids(self._faiss.IDSelectorBatch(np.ascontiguousarray(labels, np.int64)))

    def query(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Labels of the ``k`` faces nearest in Hamming distance (fewer when fewer are stored)."""
        _, labels = self.index.search(self.encode(vector[None]), k)
        return labels[0][labels[0] >= 0]

    def nbytes(self) -> int:
        return int(self.index.ntotal) * (self.directions.shape[1] // 8 + 8)  # code + faiss's int64 label


class FaceIndex:
    """The faces of one gallery, searchable by cosine. Not thread-safe: its owner locks it.

    Args:
        dim: embedding size.
        exact_limit: from this many faces on, search runs on sign codes (when faiss is
            installed; otherwise exact search continues, with one warning).
        bits: code length (a multiple of 8): the bytes scanned per face are ``bits / 8``.
        shortlist: faces taken by Hamming distance before the exact rescoring (the defaults
            are measured in docs/results.md: recall of planted mates at 1M faces).
        seed: of the random directions (fixed, so a rebuilt index answers as before).
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
        bits: int = 256,
        shortlist: int = 256,
        seed: int = 0,
    ) -> None:
        if bits < 8 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        if shortlist < 1:
            raise ValueError(f"shortlist must be >= 1, got {shortlist}")
        self.dim = dim
        self.exact_limit = exact_limit
        self.bits, self.shortlist, self.seed = bits, shortlist, seed
        self._rows = np.empty((16, dim), np.float32)
        self._labels = np.empty(16, np.int64)  # row -> label (stable per face, the codes' key)
        self._ids: list[str] = []
        self._subjects: list[str] = []
        self._row_of: dict[str, int] = {}
        self._row_of_label: dict[int, int] = {}
        self._next_label = 0
        self._codes: _SignCodes | None = None
        self._warned = False

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, face_id: object) -> bool:
        return face_id in self._row_of

    @property
    def kind(self) -> str:
        """``exact`` or ``hamming``: how a query runs now."""
        return "hamming" if self._codes is not None else "exact"

    @property
    def subjects(self) -> int:
        return len(set(self._subjects))

    def nbytes(self) -> int:
        """Bytes of the stored rows and, when built, the codes."""
        return int(len(self) * self.dim * 4) + (self._codes.nbytes() if self._codes is not None else 0)

    def add(self, ids: list[str], subjects: list[str], vectors: np.ndarray) -> None:
        """Add faces; ids already present are skipped (so replaying a change is harmless)."""
        keep = [i for i, face_id in enumerate(ids) if face_id not in self._row_of]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate face ids in one addition")
        if not keep:
            return
        vectors = np.asarray(vectors, np.float32)
        if len(keep) < len(ids):  # (a copy: at start-up the whole gallery passes here at once)
            vectors = vectors[keep]
        if vectors.shape[1:] != (self.dim,):
            raise ValueError(f"embeddings are {vectors.shape[1:]}, the gallery's are ({self.dim},)")
        start, end = len(self), len(self) + len(keep)
        if end > len(self._rows):
            self._grow(max(end, 2 * len(self._rows)))
        labels = np.arange(self._next_label, self._next_label + len(keep), dtype=np.int64)
        self._next_label += len(keep)
        self._rows[start:end] = vectors
        self._labels[start:end] = labels
        for offset, i in enumerate(keep):
            self._row_of[ids[i]] = start + offset
            self._row_of_label[int(labels[offset])] = start + offset
            self._ids.append(ids[i])
            self._subjects.append(subjects[i])
        if self._codes is not None:
            self._codes.add(labels, vectors)
        elif end >= self.exact_limit:
            self._build_codes()

    def reserve(self, count: int) -> None:
        """Make room for ``count`` faces in all, so that adding a known number grows the rows once."""
        if count > len(self._rows):
            self._grow(count)

    def _grow(self, capacity: int) -> None:
        # Fresh arrays, not np.resize: that fills the new rows with copies of the old, making
        # resident memory the capacity at once; untouched rows of a large np.empty are not yet
        # backed by memory (the allocator maps them lazily).
        rows, labels = np.empty((capacity, self.dim), np.float32), np.empty(capacity, np.int64)
        rows[: len(self)], labels[: len(self)] = self._rows[: len(self)], self._labels[: len(self)]
        self._rows, self._labels = rows, labels

    def remove(self, face_id: str) -> bool:
        """Remove one face (False when absent). The last row moves into its place."""
        return self.remove_many([face_id]) == 1

    def remove_many(self, face_ids: list[str]) -> int:
        """Remove faces (absent ids are skipped); how many were removed. Codes compact once."""
        labels = []
        for face_id in face_ids:
            row = self._row_of.pop(face_id, None)
            if row is None:
                continue
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
            labels.append(label)
        if self._codes is not None and labels:
            self._codes.remove(np.array(labels))
        return len(labels)

    def _build_codes(self) -> None:
        if not ann_available():
            if not self._warned:
                logger.warning(
                    "gallery of %d faces searched exactly: install facevib[gallery-ann] (faiss) for Hamming search",
                    len(self),
                )
                self._warned = True
            return
        codes = _SignCodes(self.dim, self.bits, self.seed)
        codes.add(self._labels[: len(self)], self._rows[: len(self)])
        self._codes = codes

    def _candidates(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of (about) the ``k`` best faces and their exact scores, best first."""
        n = len(self)
        k = min(k, n)
        if self._codes is None:
            scores = self._rows[:n] @ vector
            rows = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
            picked = scores[rows]
        else:
            labels = self._codes.query(vector, min(n, max(self.shortlist, 2 * k)))
            rows = np.array([self._row_of_label[int(label)] for label in labels], np.int64)
            picked = self._rows[rows] @ vector
            keep = np.argpartition(-picked, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
            rows, picked = rows[keep], picked[keep]
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
