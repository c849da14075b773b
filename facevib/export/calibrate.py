"""A cosine decision threshold at a target FPR, measured on labelled pairs with facevib.eval.

Two kinds of data (:func:`calibration_kind` decides):

* a folder of verification ``.bin`` files (LFW, CFP-FP, ...): every pair of every set, each
  image embedded **alone** (no flip), cosine of the two embeddings: exactly the score the
  server computes for ``/v1/verify`` on two aligned crops, so the threshold applies there as is;
* an IJB-B/C folder (``meta/`` + ``loose_crop/``, or its parent): the IJB 1:1 protocol of
  :mod:`facevib.eval.ijb` (image + flip, detector-score weighted templates), so the threshold
  is for template-to-template cosines; ``source`` says so.

The threshold is read off the impostor scores exactly (:func:`facevib.eval.roc.tpr_at_fpr`:
accept iff ``cosine > threshold``, at most ``floor(target_fpr * impostors)`` impostors
accepted), and ``resolved`` is that function's flag: ``target_fpr * impostors >= 1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facevib.data.ijb import IJB_TARGETS, ijb_layout, read_ijb
from facevib.eval.embed import Embedder
from facevib.eval.ijb import embed_ijb, evaluate_ijb
from facevib.eval.roc import OperatingPoint, impostor_thresholds, tpr_at_fpr
from facevib.eval.templates import fusion_weights, template_features, template_rows
from facevib.eval.verification import l2_normalize, list_bin_targets, load_bins
from facevib.onnx_meta import Calibration, IdentificationCalibration

__all__ = ["calibration_kind", "calibrate", "calibrate_identification", "identification_threshold"]


def calibration_kind(data: str | os.PathLike) -> tuple[str, str | None]:
    """``("verification", None)`` when ``data`` holds ``.bin`` files, ``("ijb", "IJBC"/"IJBB")``
    when it is an IJB folder (or its parent). ``.bin`` files win when both are present.

    Raises:
        FileNotFoundError: ``data`` is missing or holds neither.
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"calibration data {data} is not a folder")
    if list_bin_targets(data):
        return "verification", None
    for target in IJB_TARGETS:
        if ijb_layout(data, target).tid_mid.is_file():
            return "ijb", target
    raise FileNotFoundError(
        f"calibration data {data} holds no verification .bin files and no IJB-B/C meta/ folder "
        f"(looked for {data}/*.bin, {data}/meta/ijbc_face_tid_mid.txt and {data}/IJBC/meta/...)"
    )


def _verification_point(embedder: Embedder, data: Path, target_fpr: float) -> tuple[OperatingPoint, str]:
    bins = load_bins(data)
    scores, labels = [], []
    for verification_bin in bins:
        unit = l2_normalize(embedder.embed(verification_bin.images))
        scores.append(np.sum(unit[0::2] * unit[1::2], axis=1))
        labels.append(np.asarray(verification_bin.issame, dtype=bool))
    (point,) = tpr_at_fpr(np.concatenate(scores), np.concatenate(labels), [target_fpr])
    names = ",".join(f"{b.name}.bin" for b in bins)
    return point, f"verification pairs (single image, no flip): {names} in {data}"


def _ijb_point(embedder: Embedder, data: Path, target: str, target_fpr: float) -> tuple[OperatingPoint, str]:
    ijb = read_ijb(data, target)
    features = embed_ijb(ijb, embedder, progress=False)
    (exact,) = evaluate_ijb(ijb, features, fprs=[target_fpr]).summary["tpr_at_fpr"]["exact"]
    point = OperatingPoint(**exact)
    return point, f"{target} 1:1 template pairs (image + flip, detector-score weighted) in {ijb.layout.root}"


def calibrate(embedder: Embedder, data: str | os.PathLike, target_fpr: float = 1e-4) -> Calibration:
    """The threshold of ``embedder``'s cosine scores at ``target_fpr`` on the pairs in ``data``.

    Args:
        embedder: the model to calibrate; the export pipeline passes the written ONNX file
            (:meth:`Embedder.from_onnx`), i.e. what the server runs.
        data: a folder of ``.bin`` files or an IJB folder (see the module docstring).
        target_fpr: in (0, 1).

    Raises:
        FileNotFoundError: ``data`` holds no usable set.
        ValueError: ``target_fpr`` outside (0, 1), or malformed data (the file is named).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target FPR must be in (0, 1), got {target_fpr}")
    data = Path(data)
    kind, target = calibration_kind(data)
    if kind == "verification":
        point, source = _verification_point(embedder, data, target_fpr)
    else:
        assert target is not None
        point, source = _ijb_point(embedder, data, target, target_fpr)
    return Calibration(
        # float64 cosines of unit vectors can exceed 1 by an ulp; the contract keeps [-1, 1].
        threshold=float(np.clip(point.threshold, -1.0, 1.0)),
        target_fpr=float(target_fpr),
        fpr=float(point.fpr),
        tpr=float(point.tpr),
        impostor_pairs=int(point.impostors),
        genuine_pairs=int(point.genuine),
        resolved=bool(point.resolved),
        source=source,
    )


Search = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def identification_threshold(searches: list[Search], target_fpir: float, *, chunk: int = 4096) -> dict[str, float]:
    """The open-set threshold at ``target_fpir`` over labelled 1:N searches, pooled.

    Each search set is ``(probe features, probe subjects, gallery features, gallery subjects)``
    of unit rows, one gallery row per subject. A probe is non-mated when its subject is not in
    that gallery; its best score is what a server compares with the threshold. Pooling the
    non-mated best scores of every set, the threshold is read off them exactly
    (:func:`facevib.eval.roc.impostor_thresholds`: "accept iff score > threshold", at most
    ``floor(target_fpir * non_mated)`` accepted). TPIR: mated probes whose mate ranks first
    (strictly above every other subject: ties count against it) and scores above the threshold.

    Returns:
        ``threshold``, ``fpir``, ``tpir``, ``non_mated``, ``mated``, ``resolved`` (``k >= 1``).
    """
    non_mated_best, hits, mated_count = [], [], 0
    for probes, probe_subjects, gallery, gallery_subjects in searches:
        for start in range(0, len(probes), chunk):
            sims = probes[start : start + chunk] @ gallery.T
            is_mate = probe_subjects[start : start + chunk, None] == gallery_subjects[None, :]
            mated = is_mate.any(axis=1)
            best = sims.max(axis=1)
            non_mated_best.append(best[~mated])
            mate_score = np.where(is_mate, sims, -np.inf).max(axis=1)[mated]
            first = np.count_nonzero(sims[mated] >= mate_score[:, None], axis=1) == 1
            hits.append(mate_score[first])
            mated_count += int(mated.sum())
    pooled = np.concatenate(non_mated_best) if non_mated_best else np.empty(0, np.float32)
    if pooled.size == 0 or mated_count == 0:
        raise ValueError(
            f"identification calibration needs mated and non-mated searches, got {mated_count} and {pooled.size}"
        )
    ((threshold, k),) = impostor_thresholds(pooled, [target_fpir])
    hit_scores = np.concatenate(hits)
    return {
        "threshold": float(threshold),
        "fpir": float(np.count_nonzero(pooled > threshold)) / pooled.size,
        "tpir": float(np.count_nonzero(hit_scores > threshold)) / mated_count,
        "non_mated": int(pooled.size),
        "mated": mated_count,
        "resolved": bool(k >= 1),
    }


def calibrate_identification(
    embedder: Embedder, data: str | os.PathLike, target_fpir: float = 1e-2
) -> IdentificationCalibration:
    """The 1:N open-set threshold of ``embedder`` at ``target_fpir`` on an IJB folder's 1:N protocol.

    Templates are built as :mod:`facevib.eval.ijb` builds them (image + flip, detector-score
    weighted, L2-normalised); each gallery (IJB-C: G1 and G2) is searched by every mixed probe,
    and the searches of all galleries are pooled (:func:`identification_threshold`). A server
    enrolling one template per subject and answering "best subject iff its score > threshold"
    then has FPIR ``fpir`` and TPIR ``tpir`` on this data.

    Raises:
        FileNotFoundError: ``data`` is not an IJB folder with 1:N gallery and probe files.
        ValueError: ``target_fpir`` outside (0, 1), or malformed data (the file is named).
    """
    if not 0.0 < target_fpir < 1.0:
        raise ValueError(f"target FPIR must be in (0, 1), got {target_fpir}")
    data = Path(data)
    target = next((t for t in IJB_TARGETS if ijb_layout(data, t).tid_mid.is_file()), None)
    if target is None:
        raise FileNotFoundError(f"identification calibration data {data} is not an IJB-B/C folder (no meta/ files)")
    ijb = read_ijb(data, target)
    protocol = ijb.one_to_n
    if protocol is None:
        missing = ", ".join(str(p) for p in ijb.layout.one_to_n)
        raise FileNotFoundError(f"{ijb.layout.root} has no 1:N protocol files ({missing})")
    features = embed_ijb(ijb, embedder, progress=False)
    weights = fusion_weights(features.face_scores)
    template_ids, unit = template_features(features.features, ijb.templates, ijb.medias, weights)
    probes = unit[template_rows(template_ids, protocol.probe_templates, what="1:N probes")]
    searches = [
        (
            probes,
            protocol.probe_subjects,
            unit[template_rows(template_ids, templates, what=f"1:N gallery {name}")],
            subjects,
        )
        for name, (templates, subjects) in protocol.galleries.items()
    ]
    point = identification_threshold(searches, target_fpir)
    return IdentificationCalibration(
        threshold=float(np.clip(point["threshold"], -1.0, 1.0)),
        target_fpir=float(target_fpir),
        fpir=point["fpir"],
        tpir=point["tpir"],
        non_mated=point["non_mated"],
        mated=point["mated"],
        resolved=point["resolved"],
        source=f"{target} 1:N searches of galleries {'+'.join(protocol.galleries)} by the mixed probes (pooled) "
        f"in {ijb.layout.root}",
    )
