"""A cosine decision threshold at a target FPR, measured on labelled faces.

Two protocols (``protocol``):

* ``"single_image"`` (the default): the score ``/v1/verify`` computes, as NIST FRVT measures
  it: each image embedded **once, alone** (no flip), every pair of images of different
  identities an impostor pair, every pair of one identity a genuine pair (N images give about
  N^2/2 impostor pairs: ~1,500 images resolve FPR 1e-5). The identities are split at random in
  two halves: the threshold is read off the first half's pairs, and its FPR and TPR are
  measured on the second half's (:class:`facevib.onnx_meta.HeldOut`, Wilson intervals), so
  the shipped figures are those of people the threshold never saw. ``.bin`` sets carry no
  identities: their listed pairs are split in two at random instead (the halves may share
  people, and ``source`` says so).
* ``"template"`` (IJB folders only): the IJB 1:1 protocol of :mod:`facevib.eval.ijb` (image +
  flip, detector-score weighted templates). Template cosines are far tighter than single-image
  ones, so this threshold does not apply to ``/v1/verify``; the server says so.

The threshold is read off the impostor scores exactly (:func:`facevib.eval.roc.tpr_at_fpr`:
accept iff ``cosine > threshold``, at most ``floor(target_fpr * impostors)`` impostors
accepted), and ``resolved`` is that function's flag: ``target_fpr * impostors >= 1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facevib.data.ijb import IJB_TARGETS, ijb_layout, read_ijb
from facevib.eval.embed import Embedder
from facevib.eval.ijb import embed_ijb, evaluate_ijb
from facevib.eval.roc import OperatingPoint, impostor_thresholds, split_scores, tpr_at_fpr, wilson_interval
from facevib.eval.templates import fusion_weights, template_features, template_rows
from facevib.eval.verification import l2_normalize
from facevib.export.labelled import LabelledImages, calibration_kind, read_labelled_images, read_labelled_pairs
from facevib.onnx_meta import PROTOCOLS, Calibration, HeldOut, IdentificationCalibration

__all__ = [
    "SplitScores",
    "calibrate",
    "calibrate_identification",
    "calibration_kind",
    "embed_single",
    "held_out_rates",
    "identification_threshold",
    "identity_pair_scores",
    "identity_split_scores",
    "split_halves",
]

# Rows of the similarity matrix computed at once: 1024 x N float64 stays small for any N here.
_ROW_BLOCK = 1024


def split_halves(items: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``items`` in a seeded random order, cut in two (the first half the smaller, when odd),
    each half sorted: which identities (or pairs) calibrate and which are held out."""
    shuffled = np.random.default_rng(seed).permutation(np.asarray(items))
    return np.sort(shuffled[: len(shuffled) // 2]), np.sort(shuffled[len(shuffled) // 2 :])


def embed_single(
    embedder: Embedder, images: np.ndarray, *, progress: bool = True, desc: str = "calibrating"
) -> np.ndarray:
    """Unit-length single-image embeddings (no flip), ``(N, D)`` float64, with a progress bar."""
    from tqdm.auto import tqdm

    parts = []
    step = embedder.batch_size
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(images), step):
            parts.append(embedder.embed(images[start : start + step]))
            bar.update(len(parts[-1]))
    return l2_normalize(np.concatenate(parts).astype(np.float64))


def identity_pair_scores(unit: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and same-identity label of every unordered pair ``i < j`` of rows of ``unit``."""
    scores, same = [], []
    n = len(unit)
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        block = unit[start:stop] @ unit.T
        rows, cols = np.nonzero(np.arange(start, stop)[:, None] < np.arange(n)[None, :])
        scores.append(block[rows, cols])
        same.append(identities[start + rows] == identities[cols])
    if not scores:
        return np.zeros(0), np.zeros(0, bool)
    return np.concatenate(scores), np.concatenate(same)


def held_out_rates(scores: np.ndarray, same: np.ndarray, threshold: float, identities: int) -> HeldOut:
    """FPR and TPR of "accept iff score > threshold" on held-out pairs, with 95% Wilson intervals."""
    genuine, impostor = split_scores(scores, same)
    false_accepts = int(np.count_nonzero(impostor > threshold))
    true_accepts = int(np.count_nonzero(genuine > threshold))
    return HeldOut(
        identities=int(identities),
        impostor_pairs=int(impostor.size),
        genuine_pairs=int(genuine.size),
        false_accepts=false_accepts,
        true_accepts=true_accepts,
        fpr=false_accepts / impostor.size,
        fpr_interval=wilson_interval(false_accepts, int(impostor.size)),
        tpr=true_accepts / genuine.size,
        tpr_interval=wilson_interval(true_accepts, int(genuine.size)),
    )


def _calibration(
    point: OperatingPoint, target_fpr: float, source: str, protocol: str, holdout: HeldOut | None
) -> Calibration:
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
        protocol=protocol,
        holdout=holdout,
    )


def _need_both(scores: np.ndarray, same: np.ndarray, what: str) -> None:
    if same.all() or not same.any():
        raise ValueError(
            f"{what} has {int(same.sum())} genuine and {int((~same).sum())} impostor pairs: both are needed "
            "(more identities, or more images per identity)"
        )


def _pairs_calibration(embedder: Embedder, data: Path, target_fpr: float, seed: int, progress: bool) -> Calibration:
    pairs = read_labelled_pairs(data)
    unit = embed_single(embedder, pairs.images, progress=progress)
    scores = np.sum(unit[0::2] * unit[1::2], axis=1)
    first, second = split_halves(np.arange(scores.size), seed)
    for half, name in ((first, "calibration half"), (second, "held-out half")):
        _need_both(scores[half], pairs.same[half], f"{data}: the {name} of the pairs")
    (point,) = tpr_at_fpr(scores[first], pairs.same[first], [target_fpr])
    holdout = held_out_rates(scores[second], pairs.same[second], point.threshold, identities=0)
    source = (
        f"{pairs.source}, single image (no flip); threshold on a random half of the pairs, rates on the other "
        "(identities unknown, so the halves may share people)"
    )
    return _calibration(point, target_fpr, source, "single_image", holdout)


@dataclass(frozen=True)
class SplitScores:
    """Single-image pair scores of a labelled set, split by identity: ``calibration`` and
    ``held_out`` are ``(scores, same)`` over every pair inside each half; ``identities`` the
    two halves' sizes; ``faces`` what was read."""

    calibration: tuple[np.ndarray, np.ndarray]
    held_out: tuple[np.ndarray, np.ndarray]
    identities: tuple[int, int]
    faces: LabelledImages


def identity_split_scores(
    embedder: Embedder, data: str | os.PathLike, *, max_images: int = 4000, seed: int = 0, progress: bool = True
) -> SplitScores:
    """Embed (a sample of) the labelled set ``data`` once per image and score every pair inside
    each half of its identities (:func:`split_halves`).

    Raises:
        ValueError: fewer than 4 identities, or a half without genuine or impostor pairs.
    """
    faces = read_labelled_images(data, max_images=max_images, seed=seed)
    names = np.unique(faces.identities)
    if names.size < 4:
        raise ValueError(f"{data}: {names.size} identities; single-image calibration needs at least 4 (2 per half)")
    halves = split_halves(names, seed)
    unit = embed_single(embedder, faces.images, progress=progress)
    scored = []
    for members, name in zip(halves, ("calibration", "held-out"), strict=True):
        rows = np.flatnonzero(np.isin(faces.identities, members))
        scores, same = identity_pair_scores(unit[rows], faces.identities[rows])
        _need_both(scores, same, f"{data}: the {name} half ({members.size} identities, {rows.size} images)")
        scored.append((scores, same))
    return SplitScores(scored[0], scored[1], (int(halves[0].size), int(halves[1].size)), faces)


def _identity_calibration(
    embedder: Embedder, data: Path, target_fpr: float, max_images: int, seed: int, progress: bool
) -> Calibration:
    split = identity_split_scores(embedder, data, max_images=max_images, seed=seed, progress=progress)
    (point,) = tpr_at_fpr(*split.calibration, [target_fpr])
    holdout = held_out_rates(*split.held_out, point.threshold, identities=split.identities[1])
    faces = split.faces
    unlabelled = f", {faces.unlabelled} images without a subject left out" if faces.unlabelled else ""
    source = (
        f"{faces.source}: {len(faces.images)} of {faces.available} images{unlabelled}, single image (no flip), "
        f"every pair; threshold on {split.identities[0]} identities, rates on {split.identities[1]} others"
    )
    return _calibration(point, target_fpr, source, "single_image", holdout)


def _template_calibration(
    embedder: Embedder, data: Path, target: str, target_fpr: float, progress: bool
) -> Calibration:
    ijb = read_ijb(data, target)
    features = embed_ijb(ijb, embedder, progress=progress)
    (exact,) = evaluate_ijb(ijb, features, fprs=[target_fpr]).summary["tpr_at_fpr"]["exact"]
    source = f"{target} 1:1 template pairs (image + flip, detector-score weighted) in {ijb.layout.root}"
    return _calibration(OperatingPoint(**exact), target_fpr, source, "template", None)


def calibrate(
    embedder: Embedder,
    data: str | os.PathLike,
    target_fpr: float = 1e-4,
    *,
    protocol: str = "single_image",
    max_images: int = 4000,
    seed: int = 0,
    progress: bool = True,
) -> Calibration:
    """The threshold of ``embedder``'s cosine scores at ``target_fpr`` on the faces in ``data``.

    Args:
        embedder: the model to calibrate; the export pipeline passes the written ONNX file
            (:meth:`Embedder.from_onnx`), i.e. what the server runs.
        data: a folder of ``.bin`` files, an IJB folder, a RecordIO set or an image folder
            (:func:`facevib.export.labelled.calibration_kind`).
        target_fpr: in (0, 1).
        protocol: ``"single_image"`` or ``"template"`` (IJB only); see the module docstring.
        max_images: images sampled from a labelled set (whole identities; ~N^2/2 pairs).
        seed: of the sampling and of the split into halves.
        progress: show a progress bar while embedding.

    Raises:
        FileNotFoundError: ``data`` holds no usable set.
        ValueError: bad ``target_fpr``/``protocol``, too few identities or pairs, or malformed
            data (the file is named).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target FPR must be in (0, 1), got {target_fpr}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"calibration protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    data = Path(data)
    kind, target = calibration_kind(data)
    if protocol == "template":
        if kind != "ijb":
            raise ValueError(f"the template protocol needs an IJB-B/C folder; {data} holds a {kind} set")
        assert target is not None
        return _template_calibration(embedder, data, target, target_fpr, progress)
    if kind == "verification":
        return _pairs_calibration(embedder, data, target_fpr, seed, progress)
    return _identity_calibration(embedder, data, target_fpr, max_images, seed, progress)


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
