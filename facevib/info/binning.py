"""Binning MI estimator for whole layers (Li and Liu, "Information Bottleneck Methods on
Convolutional Neural Networks", §2; bin size 0.67 as there).

A layer's output for one input is flattened into one vector h (all channels of a
feature map spliced together), discretised as T = floor(h / bin_size), and each distinct
code vector is one value of T. With distinct inputs X and a deterministic network,
I(X; T) = H(T); I(T; Y) = H(T) - sum_y p(y) H(T | Y=y).

Counting distinct code rows must not loop over rows in Python and must not hold a wide
layer's codes twice: rows are hashed column-chunk by column-chunk into two independent
64-bit keys, grouped by the 128-bit key, and a second pass checks every row against its
group's first row, so a hash collision is detected (and resolved exactly) rather than
silently merging two codes.

With N samples H(T) <= log N; a wide layer maps every input to its own code and the
estimate sits at log N whatever the network does. That is flagged as ``saturated``
rather than plotted as signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from facevib.info.entropy import check_labels, entropy_from_counts

__all__ = ["DEFAULT_BIN_SIZE", "BinningAccumulator", "BinningResult", "binning_mi", "row_keys", "unique_rows"]

DEFAULT_BIN_SIZE = 0.67
_CHUNK_ELEMENTS = 1 << 24  # codes materialised at once (~128 MB of int64)
_HASH_SEED = 0x5EED  # fixed, so keys of batches hashed separately are comparable


@dataclass(frozen=True)
class BinningResult:
    """Binning estimates for one layer, in nats.

    Attributes:
        i_xt: I(X; T) = H(T) (inputs assumed distinct).
        i_ty: I(T; Y), or None without labels.
        h_t: H(T).
        h_y: H(Y), or None without labels.
        num_codes: distinct code vectors among the N samples.
        num_samples: N.
        log_n: log N, the ceiling of H(T).
        saturated: H(T) within ``saturation_margin`` (relative) of log N: the layer is too
            wide for N samples at this bin size, and I(X;T), I(T;Y) carry no signal.
        bin_size: the bin width used.
        verified: every row was checked against its group's codes (exact count); False for
            the streaming accumulator, which groups by 128-bit hash only.
    """

    i_xt: float
    i_ty: float | None
    h_t: float
    h_y: float | None
    num_codes: int
    num_samples: int
    log_n: float
    saturated: bool
    bin_size: float
    verified: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def row_keys(
    codes_of: Callable[[int, int], np.ndarray], num_rows: int, num_cols: int, chunk_cols: int | None = None
) -> np.ndarray:
    """Two independent 64-bit linear hashes per row of an (N, D) integer matrix, (N, 2) uint64.

    key_k(row) = sum_j codes[j] * w_kj mod 2^64 with odd random weights fixed by the column
    index (seeded), so keys of rows seen in different batches are comparable. Two distinct
    rows collide with probability about 2^-128.

    Args:
        codes_of: ``codes_of(start, stop)`` returns the (N, stop - start) int64 codes of
            those columns.
        chunk_cols: columns materialised at once (default: about 16M elements per chunk).
    """
    if chunk_cols is None:
        chunk_cols = max(1, _CHUNK_ELEMENTS // max(1, num_rows))
    weights = np.random.default_rng(_HASH_SEED).integers(1, 2**63, size=(2, num_cols), dtype=np.uint64)
    weights |= np.uint64(1)
    keys = np.zeros((num_rows, 2), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, num_cols, chunk_cols):
            stop = min(num_cols, start + chunk_cols)
            block = codes_of(start, stop).astype(np.uint64)  # two's complement: exact mod 2^64
            keys += block @ weights[:, start:stop].T
    return keys


def unique_rows(
    codes_of: Callable[[int, int], np.ndarray], num_rows: int, num_cols: int, chunk_cols: int | None = None
) -> np.ndarray:
    """Exact group ids (0..K-1) of identical rows of an (N, D) integer matrix given by columns.

    Rows are grouped by :func:`row_keys`, then every row is compared with its group's first
    row; rows of a group where the hashes collided are settled by sorting their full codes.

    Args:
        codes_of: ``codes_of(start, stop)`` returns the (N, stop - start) int64 codes of
            those columns; called twice per chunk (hash pass, check pass).
        num_rows: N.
        num_cols: D.
        chunk_cols: columns per call (default: about 16M elements per chunk).

    Returns:
        int64 (N,) ids; rows i, j share an id iff their codes are equal.
    """
    if chunk_cols is None:
        chunk_cols = max(1, _CHUNK_ELEMENTS // max(1, num_rows))
    keys = row_keys(codes_of, num_rows, num_cols, chunk_cols)
    _, first, ids = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    ids = ids.reshape(-1).astype(np.int64)
    representative = first[ids]
    collided = np.zeros(num_rows, dtype=bool)
    for start in range(0, num_cols, chunk_cols):
        block = codes_of(start, min(num_cols, start + chunk_cols))
        collided |= (block != block[representative]).any(axis=1)
    if not collided.any():
        return ids
    # A hash collision: settle the affected groups exactly by sorting their full codes.
    rows = np.flatnonzero(np.isin(ids, ids[collided]))
    full = np.concatenate([codes_of(s, min(num_cols, s + chunk_cols))[rows] for s in range(0, num_cols, chunk_cols)], 1)
    _, sub = np.unique(full, axis=0, return_inverse=True)
    ids = ids.copy()
    ids[rows] = ids.max() + 1 + sub.reshape(-1)
    return np.unique(ids, return_inverse=True)[1].reshape(-1).astype(np.int64)


class BinningAccumulator:
    """Streaming binning of one layer: keys of each batch's rows, kept instead of the rows.

    For layers too wide to hold N rows at once (a face model's early feature maps): only
    128-bit row keys are stored, so codes are grouped by hash without the exact check of
    :func:`binning_mi` (``verified=False`` in the result; collision probability ~N^2 2^-129).
    """

    def __init__(self, bin_size: float = DEFAULT_BIN_SIZE) -> None:
        if not bin_size > 0:
            raise ValueError(f"binning: bin_size must be > 0, got {bin_size!r}")
        self.bin_size = float(bin_size)
        self._keys: list[np.ndarray] = []
        self._width: int | None = None

    def add(self, activations: ArrayLike) -> None:
        """Hash one batch (B, ...) of the layer's outputs."""
        t = _as_matrix(activations)
        if self._width is not None and t.shape[1] != self._width:
            raise ValueError(f"binning: batch of width {t.shape[1]} after batches of width {self._width}")
        self._width = t.shape[1]
        self._keys.append(row_keys(_codes_reader(t, self.bin_size), t.shape[0], t.shape[1]))

    def result(self, labels: ArrayLike | None = None, saturation_margin: float = 0.01) -> BinningResult:
        """Estimates over every row added so far."""
        if not self._keys:
            raise ValueError("binning: no activations were added")
        keys = np.concatenate(self._keys)
        ids = np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
        return _from_ids(ids, labels, self.bin_size, saturation_margin, verified=False)


def binning_mi(
    activations: ArrayLike,
    labels: ArrayLike | None = None,
    bin_size: float = DEFAULT_BIN_SIZE,
    saturation_margin: float = 0.01,
) -> BinningResult:
    """Binning estimates of I(X; T) and I(T; Y) for a layer's activations (nats).

    Args:
        activations: (N, ...) outputs of one layer for N distinct inputs (numpy or torch).
        labels: (N,) integer labels, or None for I(X; T) only.
        bin_size: bin width (0.67 in the binning paper).
        saturation_margin: flag ``saturated`` when H(T) >= (1 - margin) * log N.

    Raises:
        ValueError: fewer than 2 samples, a non-positive bin size, non-finite activations,
            or labels that do not match.
    """
    t = _as_matrix(activations)
    if not bin_size > 0:
        raise ValueError(f"binning_mi: bin_size must be > 0, got {bin_size!r}")
    ids = unique_rows(_codes_reader(t, bin_size), t.shape[0], t.shape[1])
    return _from_ids(ids, labels, float(bin_size), saturation_margin, verified=True)


def _codes_reader(t: np.ndarray, bin_size: float) -> Callable[[int, int], np.ndarray]:
    def codes_of(start: int, stop: int) -> np.ndarray:
        block = t[:, start:stop]
        if not np.isfinite(block).all():
            raise ValueError("binning: activations hold NaN or inf")
        return np.floor(block / bin_size).astype(np.int64)

    return codes_of


def _from_ids(
    ids: np.ndarray, labels: ArrayLike | None, bin_size: float, saturation_margin: float, verified: bool
) -> BinningResult:
    n = ids.shape[0]
    if n < 2:
        raise ValueError(f"binning: need at least 2 samples, got {n}")
    h_t = entropy_from_counts(np.bincount(ids))
    i_ty = h_y = None
    if labels is not None:
        y = check_labels(labels, n=n)
        h_y = entropy_from_counts(np.bincount(y))
        joint = np.unique(ids * (int(y.max()) + 1) + y, return_counts=True)[1]
        i_ty = h_t + h_y - entropy_from_counts(joint)  # = H(T) - sum_y p(y) H(T|y)
    log_n = math.log(n)
    return BinningResult(
        i_xt=h_t,
        i_ty=i_ty,
        h_t=h_t,
        h_y=h_y,
        num_codes=int(ids.max()) + 1,
        num_samples=n,
        log_n=log_n,
        saturated=h_t >= (1.0 - saturation_margin) * log_n,
        bin_size=bin_size,
        verified=verified,
    )


def _as_matrix(activations: ArrayLike) -> np.ndarray:
    if hasattr(activations, "detach"):
        activations = activations.detach().cpu().numpy()
    t = np.asarray(activations)
    if t.ndim < 1 or t.shape[0] == 0:
        raise ValueError(f"activations must be (N, ...) with N > 0, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.number):
        raise ValueError(f"activations must be numeric, got dtype {t.dtype}")
    return t.reshape(t.shape[0], -1)
