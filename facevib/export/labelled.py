"""Labelled face sets for calibration: aligned crops with an identity each, or labelled pairs.

:func:`calibration_kind` recognises a folder, :func:`read_labelled_images` reads one with
identities, and :func:`read_labelled_pairs` reads ``.bin`` sets, whose identities are unknown:

* ``.bin`` files (LFW, CFP-FP, ...): the listed pairs only (a pair of two people tells
  nothing about any third image);
* an IJB-B/C folder: each loose crop aligned from its 5 points, its subject read through its
  template from the 1:N files (gallery G1/G2 and mixed probes); images of templates the 1:N
  files do not list are left out and counted. Without the 1:N files the identities are derived
  from the 1:1 template pair labels (:func:`template_pair_identities`);
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

from facevib.data.ijb import IJB_TARGETS, IJBFormatError, IJBSet, ijb_layout, read_ijb
from facevib.eval.verification import list_bin_targets, load_bins

__all__ = [
    "LabelledImages",
    "LabelledPairs",
    "calibration_kind",
    "read_labelled_images",
    "read_labelled_pairs",
    "sample_identities",
    "template_pair_identities",
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


@dataclass(frozen=True)
class PairIdentities:
    """Identities derived from 1:1 template pair labels (:func:`template_pair_identities`).

    ``templates`` ``(T,)`` the templates the pair file names, sorted; ``identities`` ``(T,)`` each
    one's derived identity (the smallest template id of its connected component);
    ``components`` how many identities; ``covered`` / ``component_pairs`` how many of the
    unordered pairs of distinct identities carry at least one impostor label.
    """

    templates: np.ndarray
    identities: np.ndarray
    components: int
    covered: int
    component_pairs: int


def template_pair_identities(
    pair_templates: np.ndarray, pair_labels: np.ndarray, where: str = "pairs"
) -> PairIdentities:
    """Identities of the templates named in IJB 1:1 pairs, from the labels alone.

    A template is one subject's media, so its images share an identity. A genuine pair puts its
    two templates in one identity; the identities are the connected components of the graph
    whose nodes are the templates the pairs name and whose edges are the genuine pairs (a
    template in impostor pairs only is an identity of its own). An impostor pair says its two
    templates are different people: one that falls inside a component contradicts the genuine
    labels and is an error. Two components are taken to be two people even where no impostor
    label says so (a subject whose templates no genuine pair links would be counted twice);
    :attr:`PairIdentities.covered` says for how many component pairs a label confirms it.

    Raises:
        IJBFormatError: an impostor pair inside one component (``where`` names the file).
    """
    pairs = np.asarray(pair_templates, np.int64).reshape(-1, 2)
    labels = np.asarray(pair_labels, bool)
    templates, index = np.unique(pairs, return_inverse=True)
    index = index.reshape(-1, 2)
    parent = np.arange(templates.size)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees shallow
            node = parent[node]
        return node

    for a, b in index[labels].tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is the component's smallest template
    roots = np.array([root(i) for i in range(templates.size)], np.int64)
    impostors = roots[index[~labels]]
    inside = np.flatnonzero(impostors[:, 0] == impostors[:, 1])
    if inside.size:
        first = pairs[~labels][inside[0]]
        raise IJBFormatError(
            f"{where}: {inside.size} impostor pair(s) join templates that genuine pairs link into one identity, "
            f"e.g. templates {first[0]} and {first[1]}"
        )
    components = int(np.unique(roots).size)
    covered = int(np.unique(np.sort(impostors, axis=1), axis=0).shape[0]) if impostors.size else 0
    return PairIdentities(
        templates=templates,
        identities=templates[roots],
        components=components,
        covered=covered,
        component_pairs=components * (components - 1) // 2,
    )


def _one_to_n_subjects(ijb: IJBSet) -> tuple[np.ndarray, str]:
    """Each image's subject (-1: not listed) from the 1:N files, and how they were found."""
    assert ijb.one_to_n is not None
    subject_of: dict[int, int] = {}
    for templates, subjects in [
        *ijb.one_to_n.galleries.values(),
        (ijb.one_to_n.probe_templates, ijb.one_to_n.probe_subjects),
    ]:
        subject_of.update(zip(templates.tolist(), subjects.tolist(), strict=True))
    return np.array([subject_of.get(t, -1) for t in ijb.templates.tolist()], np.int64), "subjects from the 1:N files"


def _pair_label_subjects(ijb: IJBSet) -> tuple[np.ndarray, str]:
    """Each image's identity (-1: its template is in no pair) derived from the 1:1 pair labels."""
    derived = template_pair_identities(ijb.pair_templates, ijb.pair_labels, where=str(ijb.layout.pairs))
    position = np.searchsorted(derived.templates, ijb.templates)
    found = derived.templates[np.minimum(position, derived.templates.size - 1)] == ijb.templates
    subjects = np.where(found, derived.identities[np.minimum(position, derived.templates.size - 1)], -1)
    how = (
        f"no 1:N files, so identities derived from the 1:1 pair labels: {derived.components} connected components "
        f"of the genuine template pairs over {derived.templates.size} templates, impostor labels confirming "
        f"{derived.covered} of the {derived.component_pairs} identity pairs"
    )
    return subjects.astype(np.int64), how


def _ijb_images(data: Path, target: str, max_images: int, max_per_identity: int, seed: int) -> LabelledImages:
    from facevib.eval.ijb import load_aligned

    ijb = read_ijb(data, target)
    subjects, how = _one_to_n_subjects(ijb) if ijb.one_to_n is not None else _pair_label_subjects(ijb)
    labelled = np.flatnonzero(subjects >= 0)
    rows = labelled[sample_identities(subjects[labelled], max_images, max_per_identity, seed)]
    paths = ijb.image_paths()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        crops = list(pool.map(lambda i: load_aligned(paths[i], ijb.landmarks[i]), rows.tolist()))
    return LabelledImages(
        images=np.stack(crops),
        identities=subjects[rows],
        source=f"{target} images in {ijb.layout.root}, {how}",
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
        FileNotFoundError: ``data`` is not such a folder.
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
