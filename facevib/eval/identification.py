"""1:N (open-set) identification metrics for IJB-B/C: TPIR at FPIR, and CMC ranks.

For a gallery (one template per subject) and a set of probe templates:

* a probe is **mated** when its subject is enrolled in the gallery, **non-mated** otherwise;
* a mated probe's **rank** is 1 + the number of other gallery templates scoring at least its
  mate's score (ties count against it, so an undecided tie is not a hit); rank-k is the
  fraction of mated probes with rank <= k (closed-set CMC);
* FPIR(t) is the fraction of non-mated probes whose best gallery score is ``> t``;
  TPIR(t) is the fraction of mated probes whose mate is at rank 1 with score ``> t``.
  The threshold for a target FPIR is exact, from the sorted non-mated best scores, with the
  rule and tie handling of :func:`facevib.eval.roc.tpr_at_fpr`.

IJB-C's protocol evaluates each of the two disjoint galleries G1 and G2 against all mixed
probes and averages the two; insightface's script instead merges G1 and G2 into one gallery
(every probe then mated) and reports its ranks, also given here as ``"G1+G2"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from facevib.eval.roc import impostor_thresholds

__all__ = ["DEFAULT_FPIRS", "DEFAULT_RANKS", "identification_metrics", "average_galleries"]

DEFAULT_FPIRS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10)


def identification_metrics(
    probe_features: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_features: np.ndarray,
    gallery_subjects: np.ndarray,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    *,
    chunk: int = 4096,
) -> dict[str, Any]:
    """Open-set identification metrics of unit-norm probe features against a gallery.

    Returns:
        JSON-ready dict: ``probes``, ``mated``, ``non_mated``, ``gallery``, ``rank_<k>`` per
        rank (None without mated probes), and ``tpir_at_fpir``: a list of
        ``{fpir, tpir, threshold, achieved_fpir, resolved}`` (empty without non-mated probes).

    Raises:
        ValueError: a subject is enrolled twice, or shapes disagree.
    """
    probe_features = np.asarray(probe_features, dtype=np.float32)
    gallery_features = np.asarray(gallery_features, dtype=np.float32)
    probe_subjects, gallery_subjects = np.asarray(probe_subjects), np.asarray(gallery_subjects)
    if probe_features.shape[0] != probe_subjects.shape[0] or gallery_features.shape[0] != gallery_subjects.shape[0]:
        raise ValueError("features and subjects must have one row per template")
    if probe_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"probe features are {probe_features.shape[1]}-d, gallery {gallery_features.shape[1]}-d")
    distinct, counts = np.unique(gallery_subjects, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"gallery enrols subjects {distinct[counts > 1][:5].tolist()} more than once")

    order = np.argsort(gallery_subjects)
    position = np.searchsorted(gallery_subjects[order], probe_subjects)
    position = np.minimum(position, order.size - 1)
    mate = np.where(gallery_subjects[order][position] == probe_subjects, order[position], -1)
    mated = mate >= 0

    mate_score = np.full(probe_subjects.size, -np.inf, np.float32)
    rank = np.zeros(probe_subjects.size, np.int64)
    best = np.empty(probe_subjects.size, np.float32)
    for start in range(0, probe_subjects.size, chunk):
        sims = probe_features[start : start + chunk] @ gallery_features.T
        rows = np.arange(sims.shape[0])
        best[start : start + chunk] = sims.max(axis=1)
        local_mate = mate[start : start + chunk]
        has = local_mate >= 0
        scores = np.where(has, sims[rows, np.maximum(local_mate, 0)], -np.inf).astype(np.float32)
        mate_score[start : start + chunk] = scores
        # The mate itself is among the ">=" count, so rank = that count.
        rank[start : start + chunk] = np.where(has, np.count_nonzero(sims >= scores[:, None], axis=1), 0)

    n_mated, n_non_mated = int(mated.sum()), int((~mated).sum())
    result: dict[str, Any] = {
        "probes": int(probe_subjects.size),
        "mated": n_mated,
        "non_mated": n_non_mated,
        "gallery": int(gallery_subjects.size),
    }
    for k in ranks:
        result[f"rank_{k}"] = float(np.mean(rank[mated] <= k)) if n_mated else None
    points = []
    if n_mated and n_non_mated:
        hits = mate_score[mated][rank[mated] == 1]
        non_mated_best = best[~mated]
        for target, (threshold, k) in zip(fpirs, impostor_thresholds(non_mated_best, fpirs), strict=True):
            points.append(
                {
                    "fpir": float(target),
                    "tpir": float(np.count_nonzero(hits > threshold)) / n_mated,
                    "threshold": threshold,
                    "achieved_fpir": float(np.count_nonzero(non_mated_best > threshold)) / n_non_mated,
                    "resolved": k >= 1 or target == 0,
                }
            )
    result["tpir_at_fpir"] = points
    return result


def average_galleries(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of the rank-k and TPIR figures over galleries evaluated on the same FPIR grid."""
    if not results:
        raise ValueError("no gallery results to average")
    out: dict[str, Any] = {}
    for key in results[0]:
        if key.startswith("rank_"):
            values = [r[key] for r in results]
            out[key] = None if any(v is None for v in values) else float(np.mean(values))
    grids = [[p["fpir"] for p in r["tpir_at_fpir"]] for r in results]
    if grids[0] and all(g == grids[0] for g in grids):
        out["tpir_at_fpir"] = [
            {"fpir": f, "tpir": float(np.mean([r["tpir_at_fpir"][i]["tpir"] for r in results]))}
            for i, f in enumerate(grids[0])
        ]
    else:
        out["tpir_at_fpir"] = []
    return out
