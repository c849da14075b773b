"""Labelled face sets for calibration: aligned crops with an identity each, or labelled pairs.

:func:`calibration_kind` recognises a folder, :func:`read_labelled_images` reads one with
identities, and :func:`read_labelled_pairs` reads ``.bin`` sets, whose identities are unknown:

* ``.bin`` files (LFW, CFP-FP, ...): the listed pairs only (a pair of two people tells
  nothing about any third image);
* an IJB-B/C folder: each loose crop aligned from its 5 points, its subject read through its
  template from the 1:N files (gallery G1/G2 and mixed probes); images of templates the 1:N
  files do not list are left out and counted;
* a RecordIO set (``train.rec`` + ``train.idx``, identities from the records);
* an image folder ``root/<identity>/<image>`` of aligned crops.

Large sets are sampled whole identity by whole identity (a seeded shuffle, at most
``max_per_identity`` images each) up to ``max_images``, so genuine pairs survive the sampling;
N images already give about N^2/2 impostor pairs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facevib.data.ijb import IJB_TARGETS, ijb_layout, read_ijb
from facevib.eval.verification import list_bin_targets, load_bins

__all__ = [
    "LabelledImages",
    "LabelledPairs",
    "calibration_kind",
    "read_labelled_images",
    "read_labelled_pairs",
    "sample_identities",
]


@dataclass(frozen=True)
class LabelledImages:
    """Aligned crops with identities.

    ``images`` ``(N, H, W, 3)`` uint8 RGB, ``identities`` ``(N,)`` int64; ``available`` is how
    many labelled images the set holds before sampling and ``unlabelled`` how many images were
    left out for want of an identity.
    """

    images: np.ndarray
    identities: np.ndarray
    source: str
    available: int
    unlabelled: int = 0


@dataclass(frozen=True)
class LabelledPairs:
    """Pairs ``i`` at rows ``2i`` and ``2i + 1`` of ``images``; ``same`` ``(P,)`` bool."""

    images: np.ndarray
    same: np.ndarray
    source: str


def calibration_kind(data: str | os.PathLike) -> tuple[str, str | None]:
    """What ``data`` holds: ``("verification", None)`` (``.bin`` files), ``("ijb", "IJBC"/"IJBB")``,
    ``("recordio", None)`` or ``("folder", None)``, tried in this order.

    Raises:
        FileNotFoundError: ``data`` is missing or holds none of them.
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"calibration data {data} is not a folder")
    if list_bin_targets(data):
        return "verification", None
    for target in IJB_TARGETS:
        if ijb_layout(data, target).tid_mid.is_file():
            return "ijb", target
    if (data / "train.rec").is_file() and (data / "train.idx").is_file():
        return "recordio", None
    if any(entry.is_dir() for entry in data.iterdir()):
        return "folder", None
    raise FileNotFoundError(
        f"calibration data {data} holds no verification .bin files, no IJB-B/C meta/ folder, no train.rec + "
        f"train.idx and no identity sub-folders (looked for {data}/*.bin, {data}/meta/ijbc_face_tid_mid.txt, "
        f"{data}/IJBC/meta/..., {data}/train.rec and {data}/<identity>/<image>)"
    )


def sample_identities(identities: np.ndarray, max_images: int, max_per_identity: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: identities in a seeded random order, at most ``max_per_identity``
    random images of each, until ``max_images`` images are taken (an identity that would
    overflow is cut to fit)."""
    if max_images < 2 or max_per_identity < 1:
        raise ValueError(f"need max_images >= 2 and max_per_identity >= 1, got {max_images} and {max_per_identity}")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    taken = 0
    for identity in rng.permutation(np.unique(identities)):
        rows = rng.permutation(np.flatnonzero(identities == identity))[:max_per_identity]
        rows = rows[: max_images - taken]
        chosen.append(rows)
        taken += rows.size
        if taken >= max_images:
            break
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _ijb_images(data: Path, target: str, max_images: int, max_per_identity: int, seed: int) -> LabelledImages:
    from facevib.eval.ijb import load_aligned

    ijb = read_ijb(data, target)
    if ijb.one_to_n is None:
        raise FileNotFoundError(
            f"{ijb.layout.root}: single-image calibration reads each image's subject from the 1:N files "
            f"({', '.join(str(p) for p in ijb.layout.one_to_n)}), which are missing; use --calibration-protocol "
            "template for the 1:1 template protocol, or another labelled set"
        )
    subject_of: dict[int, int] = {}
    for templates, subjects in [
        *ijb.one_to_n.galleries.values(),
        (ijb.one_to_n.probe_templates, ijb.one_to_n.probe_subjects),
    ]:
        subject_of.update(zip(templates.tolist(), subjects.tolist(), strict=True))
    subjects = np.array([subject_of.get(t, -1) for t in ijb.templates.tolist()], np.int64)
    labelled = np.flatnonzero(subjects >= 0)
    rows = labelled[sample_identities(subjects[labelled], max_images, max_per_identity, seed)]
    paths = ijb.image_paths()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        crops = list(pool.map(lambda i: load_aligned(paths[i], ijb.landmarks[i]), rows.tolist()))
    return LabelledImages(
        images=np.stack(crops),
        identities=subjects[rows],
        source=f"{target} images in {ijb.layout.root}, subjects from the 1:N files",
        available=int(labelled.size),
        unlabelled=int(subjects.size - labelled.size),
    )


def _dataset_images(dataset, source: str, max_images: int, max_per_identity: int, seed: int) -> LabelledImages:
    labels = np.asarray(dataset.labels, np.int64)
    rows = sample_identities(labels, max_images, max_per_identity, seed)
    # normalize=False datasets give (3, H, W) uint8 tensors; the embedder takes (N, H, W, 3).
    images = np.stack([dataset[int(i)][0].permute(1, 2, 0).numpy() for i in rows])
    return LabelledImages(images=images, identities=labels[rows], source=source, available=int(labels.size))


def read_labelled_images(
    data: str | os.PathLike, *, max_images: int = 4000, max_per_identity: int = 20, seed: int = 0
) -> LabelledImages:
    """Read (a sample of) the labelled images in ``data`` (an IJB, RecordIO or image folder).

    Raises:
        FileNotFoundError: ``data`` is not such a folder (or an IJB folder lacks its 1:N files).
        ValueError: ``data`` holds ``.bin`` files (use :func:`read_labelled_pairs`), or is malformed
            (the reader names the file).
    """
    data = Path(data)
    kind, target = calibration_kind(data)
    if kind == "verification":
        raise ValueError(f"{data} holds .bin pair lists, which carry no identities: read them as pairs")
    if kind == "ijb":
        assert target is not None
        return _ijb_images(data, target, max_images, max_per_identity, seed)
    if kind == "recordio":
        from facevib.data.datasets import MXFaceDataset

        dataset = MXFaceDataset(data, train=False, normalize=False)
        return _dataset_images(dataset, f"RecordIO images {dataset.rec_path}", max_images, max_per_identity, seed)
    from facevib.data.datasets import ImageFolderDataset

    dataset = ImageFolderDataset(data, train=False, normalize=False)
    return _dataset_images(dataset, f"image folder {data}", max_images, max_per_identity, seed)


def read_labelled_pairs(data: str | os.PathLike) -> LabelledPairs:
    """Every pair of every ``.bin`` set in ``data``.

    Raises:
        FileNotFoundError: no ``.bin`` file in ``data``.
    """
    data = Path(data)
    bins = load_bins(data)
    return LabelledPairs(
        images=np.concatenate([b.images for b in bins]),
        same=np.concatenate([np.asarray(b.issame, dtype=bool) for b in bins]),
        source=f"verification pairs {','.join(f'{b.name}.bin' for b in bins)} in {data}",
    )
