"""IJB-B / IJB-C evaluation: embed the loose crops, cache the features, score 1:1 and 1:N.

Pipeline (insightface's ``ijb_11.py`` settings: flip test, detector-score weighting, no
per-image normalisation before aggregation):

1. :func:`embed_ijb`: each loose crop is aligned to the ArcFace template from its 5 landmarks
   (:func:`facevib.align.norm_crop`), embedded with its flip (their sum), and, for
   uncertainty fusion, scored by the model's uncertainty. :class:`ImageFeatures` holds the
   result and is cached to an ``.npz`` file so that re-scoring skips the network.
2. :func:`evaluate_ijb`: weights (:func:`facevib.eval.templates.fusion_weights`), template
   features (:func:`~facevib.eval.templates.template_features`), pair scores
   (:func:`~facevib.eval.templates.score_pairs`), TPR at FPR both exactly and at the nearest
   ROC point (:mod:`facevib.eval.roc`), and 1:N identification when the protocol files exist.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facevib.data.ijb import IJBFormatError, IJBSet
from facevib.data.imagecodec import decode_rgb
from facevib.eval.embed import Embedder
from facevib.eval.identification import DEFAULT_FPIRS, average_galleries, identification_metrics
from facevib.eval.roc import DEFAULT_FPRS, roc_auc, roc_curve, tpr_at_fpr, tpr_at_fpr_nearest
from facevib.eval.templates import fusion_weights, score_pairs, template_features, template_rows

__all__ = [
    "ImageFeatures",
    "IJBResult",
    "embed_ijb",
    "evaluate_ijb",
    "load_features",
    "loader_threads",
    "save_features",
]

_FORMAT = "facevib-ijb-features-1"


@dataclass
class ImageFeatures:
    """Per-image features of an IJB set, in the order of its ``tid_mid`` file.

    ``features`` are image + flip embedding sums (float32, not normalised), ``face_scores``
    the detector scores, ``uncertainty`` the model's per-image uncertainty (or None).
    """

    names: np.ndarray
    features: np.ndarray
    face_scores: np.ndarray
    uncertainty: np.ndarray | None = None
    model: str = ""

    def __post_init__(self) -> None:
        count = len(self.names)
        if self.features.ndim != 2 or self.features.shape[0] != count:
            raise ValueError(f"features must be ({count}, D), got {self.features.shape}")
        if self.face_scores.shape != (count,):
            raise ValueError(f"face_scores must be ({count},), got {self.face_scores.shape}")
        if self.uncertainty is not None and self.uncertainty.shape != (count,):
            raise ValueError(f"uncertainty must be ({count},), got {self.uncertainty.shape}")

    def matched_to(self, ijb: IJBSet, source: str = "features") -> ImageFeatures:
        """These features reordered to ``ijb``'s image order; every image must be present."""
        if np.array_equal(self.names, ijb.image_names):
            return self
        position = {name: row for row, name in enumerate(self.names.tolist())}
        lacking = [name for name in ijb.image_names.tolist() if name not in position]
        if lacking:
            raise ValueError(
                f"{source} lacks {len(lacking)} of the {len(ijb.image_names)} images of {ijb.layout.root} "
                f"(e.g. {', '.join(lacking[:5])}): it was computed for another set"
            )
        order = np.fromiter((position[n] for n in ijb.image_names.tolist()), np.int64, len(ijb.image_names))
        return ImageFeatures(
            names=ijb.image_names,
            features=self.features[order],
            face_scores=self.face_scores[order],
            uncertainty=None if self.uncertainty is None else self.uncertainty[order],
            model=self.model,
        )


def save_features(path: str | os.PathLike, features: ImageFeatures) -> Path:
    """Write ``features`` to an ``.npz`` file (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "format": np.asarray(_FORMAT),
        "names": np.asarray(features.names, dtype=str),
        "features": features.features,
        "face_scores": features.face_scores,
        "model": np.asarray(features.model),
    }
    if features.uncertainty is not None:
        arrays["uncertainty"] = features.uncertainty
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a name
        np.savez(handle, **arrays)
    os.replace(tmp, path)
    return path


def load_features(path: str | os.PathLike) -> ImageFeatures:
    """Read a features file written by :func:`save_features`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a features file (the message names the missing keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read it as an .npz features file ({err})") from err
    needed = {"format", "names", "features", "face_scores"}
    if not needed <= arrays.keys() or str(arrays["format"]) != _FORMAT:
        raise ValueError(
            f"{path} is not a facevib IJB features file (has {sorted(arrays)}, needs {sorted(needed)} "
            f"with format {_FORMAT!r})"
        )
    uncertainty = arrays.get("uncertainty")
    return ImageFeatures(
        names=arrays["names"],
        features=np.asarray(arrays["features"], dtype=np.float32),
        face_scores=np.asarray(arrays["face_scores"], dtype=np.float32),
        uncertainty=None if uncertainty is None else np.asarray(uncertainty, dtype=np.float32),
        model=str(arrays.get("model", "")),
    )


def _load_aligned(path: Path, landmarks: np.ndarray) -> np.ndarray:
    from facevib.align import norm_crop

    try:
        rgb = decode_rgb(np.fromfile(path, dtype=np.uint8))
    except (OSError, ValueError) as err:
        raise IJBFormatError(f"{path}: cannot be read as an image ({err})") from err
    try:
        return norm_crop(rgb, landmarks)
    except ValueError as err:  # e.g. degenerate landmarks: say which image
        raise IJBFormatError(f"{path}: cannot align it ({err})") from err


def loader_threads() -> int:
    """One image-loading thread per CPU core this process may use.

    Decoding and aligning a crop releases the GIL (OpenCV), so threads scale with the
    cores; at IJB-C scale (469k crops) loading, not the GPU, is otherwise the bottleneck."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _aligned_batches(ijb: IJBSet, batch: int, workers: int) -> Iterator[tuple[int, np.ndarray]]:
    """Aligned crops in batches, the next batch loading on threads while one is embedded."""
    paths = ijb.image_paths()
    starts = range(0, len(paths), batch)
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(start: int) -> list[Future]:
            stop = min(start + batch, len(paths))
            return [pool.submit(_load_aligned, paths[i], ijb.landmarks[i]) for i in range(start, stop)]

        pending = submit(starts[0]) if starts else []
        for index, start in enumerate(starts):
            current = pending
            if index + 1 < len(starts):
                pending = submit(starts[index + 1])
            yield start, np.stack([job.result() for job in current])


def embed_ijb(
    ijb: IJBSet,
    embedder: Embedder,
    *,
    with_uncertainty: bool = False,
    progress: bool = True,
    workers: int | None = None,
    batch_size: int | None = None,
    model_name: str = "",
) -> ImageFeatures:
    """Align and embed every loose crop of ``ijb`` (image + flip), with a progress bar.

    Args:
        with_uncertainty: also compute the model's per-image uncertainty (raises ValueError
            up front when the model has none).
        workers: image-loading threads (default: :func:`loader_threads`).
        batch_size: images loaded per step (default: the embedder's batch size, at least 64).
    """
    from tqdm.auto import tqdm

    if with_uncertainty and not embedder.has_uncertainty:
        embedder.uncertainty(np.zeros((0, 112, 112, 3), np.uint8))  # raises the explanatory error
    count = len(ijb.image_names)
    batch = batch_size or max(64, embedder.batch_size)
    workers = workers or loader_threads()
    features: np.ndarray | None = None
    uncertainty = np.empty(count, np.float32) if with_uncertainty else None
    with tqdm(total=count, desc=f"embedding {ijb.target}", unit="img", disable=not progress) as bar:
        for start, images in _aligned_batches(ijb, batch, workers):
            if uncertainty is not None:  # embedding and uncertainty from the same network passes
                out, uncertainty[start : start + len(images)] = embedder.embed_with_uncertainty(images)
            else:
                out = embedder(images)
            if features is None:
                features = np.empty((count, out.shape[1]), np.float32)
            features[start : start + len(images)] = out
            bar.update(len(images))
    assert features is not None  # read_ijb guarantees at least one image
    return ImageFeatures(
        names=ijb.image_names,
        features=features,
        face_scores=ijb.face_scores.copy(),
        uncertainty=uncertainty,
        model=model_name or embedder.backend,
    )


@dataclass
class IJBResult:
    """``summary``: the JSON-ready numbers; ``fpr``/``tpr``: the ROC curve for plotting;
    ``scores``: the pair scores (float32, in the pair file's order)."""

    summary: dict[str, Any]
    fpr: np.ndarray
    tpr: np.ndarray
    scores: np.ndarray


def _one_to_n(ijb: IJBSet, template_ids: np.ndarray, unit: np.ndarray, fpirs: Sequence[float]) -> dict[str, Any]:
    protocol = ijb.one_to_n
    assert protocol is not None
    probes = unit[template_rows(template_ids, protocol.probe_templates, what="1:N probes")]
    galleries: dict[str, Any] = {}
    for name, (templates, subjects) in protocol.galleries.items():
        gallery = unit[template_rows(template_ids, templates, what=f"1:N gallery {name}")]
        galleries[name] = identification_metrics(probes, protocol.probe_subjects, gallery, subjects, fpirs)
    merged_templates = np.concatenate([t for t, _ in protocol.galleries.values()])
    merged_subjects = np.concatenate([s for _, s in protocol.galleries.values()])
    merged = identification_metrics(
        probes, protocol.probe_subjects, unit[template_rows(template_ids, merged_templates)], merged_subjects, fpirs
    )
    result = dict(galleries)
    result["mean"] = average_galleries(list(galleries.values()))
    result["+".join(protocol.galleries)] = merged
    return result


def evaluate_ijb(
    ijb: IJBSet,
    features: ImageFeatures,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    uncertainty_fusion: bool = False,
    progress: bool = False,
) -> IJBResult:
    """1:1 verification (and 1:N identification when its files exist) from image features.

    Raises:
        ValueError: the features do not cover ``ijb``'s images, or ``uncertainty_fusion``
            is asked of features computed without uncertainty.
    """
    from tqdm.auto import tqdm

    features = features.matched_to(ijb)
    if uncertainty_fusion and features.uncertainty is None:
        raise ValueError(
            "uncertainty fusion needs per-image uncertainties, but these features were computed without them "
            "(embed again with a cellvib/deepvib checkpoint and uncertainty fusion on)"
        )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    weights = fusion_weights(features.face_scores, features.uncertainty if uncertainty_fusion else None)
    template_ids, unit = template_features(features.features, ijb.templates, ijb.medias, weights)
    timings["aggregation_s"] = time.perf_counter() - started

    started = time.perf_counter()
    left = template_rows(template_ids, ijb.pair_templates[:, 0])
    right = template_rows(template_ids, ijb.pair_templates[:, 1])
    with tqdm(total=left.size, desc=f"scoring {ijb.target}", unit="pair", unit_scale=True, disable=not progress) as bar:
        scores = score_pairs(unit, left, right, progress=bar.update)
    timings["scoring_s"] = time.perf_counter() - started

    started = time.perf_counter()
    labels = ijb.pair_labels
    exact = tpr_at_fpr(scores, labels, fprs)
    curve = roc_curve(scores, labels)
    nearest = tpr_at_fpr_nearest(scores, labels, fprs, curve=curve)
    timings["roc_s"] = time.perf_counter() - started

    summary: dict[str, Any] = {
        "target": ijb.target,
        "data_root": str(ijb.layout.root),
        "model": features.model,
        "images": int(len(features.names)),
        "templates": int(template_ids.size),
        "pairs": int(labels.size),
        "genuine": int(labels.sum()),
        "impostor": int((~labels).sum()),
        "weighting": (
            "detector score x exp(-2 (u - min u)), u = model uncertainty (mean log sigma of the scored VIB cells)"
            if uncertainty_fusion
            else "detector score"
        ),
        "tpr_at_fpr": {"exact": [p.as_dict() for p in exact], "nearest_roc_point": [p.as_dict() for p in nearest]},
        "auc": roc_auc(curve[0], curve[1]),
    }
    if ijb.one_to_n is not None:
        started = time.perf_counter()
        summary["one_to_n"] = _one_to_n(ijb, template_ids, unit, fpirs)
        timings["one_to_n_s"] = time.perf_counter() - started
    summary["timings"] = timings
    return IJBResult(summary=summary, fpr=curve[0], tpr=curve[1], scores=scores)
