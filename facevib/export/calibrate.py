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
from facevib.eval.roc import OperatingPoint, tpr_at_fpr
from facevib.eval.verification import l2_normalize, list_bin_targets, load_bins
from facevib.onnx_meta import Calibration

__all__ = ["calibration_kind", "calibrate"]


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
