"""Sample sets for information-plane measurements: digits, a RecordIO face set, a ``.bin`` set.

Each source gives a probe-training side and a held-out side (:class:`~facevib.info.plane.Samples`):

- ``digits``: scikit-learn's ``load_digits`` with the stratified split the classification
  experiments use (``test_fraction``, ``seed``), images (N, 8, 8) in [-1, 1];
- a RecordIO folder (``train.rec`` + ``train.idx``): up to ``max_classes`` identities with at
  least two images, their images alternately assigned to the two sides (so every identity
  the held-out side asks about was seen by the probe), at most ``per_class`` each;
- a verification ``.bin``: its pairs split in halves, the label being same / different.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facevib.info.plane import Samples

__all__ = ["load_samples"]


def load_samples(
    spec: str,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    max_classes: int = 50,
    per_class: int = 8,
    max_pairs: int = 600,
) -> tuple[Samples, Samples, str]:
    """``(train, test, description)`` for ``spec``: ``digits``, a RecordIO folder / prefix, or a ``.bin``.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a set too small to split (the message names it).
    """
    if spec == "digits":
        return _digits(test_fraction, seed)
    path = Path(spec)
    if path.suffix == ".bin":
        return _verification(path, max_pairs)
    rec_dir = path if path.is_dir() else path.parent
    if path.is_dir() or path.suffix in (".rec", ".idx") or (rec_dir / f"{path.name}.rec").is_file():
        return _recordio(path, max_classes, per_class)
    raise FileNotFoundError(f"--data {spec!r}: not 'digits', a .bin file or a RecordIO folder (train.rec + train.idx)")


def _digits(test_fraction: float, seed: int) -> tuple[Samples, Samples, str]:
    from facevib.data.classic.digits import load_digits_split

    x_train, y_train, x_test, y_test = load_digits_split(test_fraction, seed)
    desc = f"digits (load_digits, test_fraction={test_fraction}, seed={seed})"
    return Samples(torch.from_numpy(x_train), y_train), Samples(torch.from_numpy(x_test), y_test), desc


def _recordio(path: Path, max_classes: int, per_class: int) -> tuple[Samples, Samples, str]:
    from facevib.data.datasets import MXFaceDataset

    dataset = MXFaceDataset(path, train=False)
    labels = dataset.labels
    chosen: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)[:per_class]
        if members.size >= 2:
            chosen.append(members)
        if len(chosen) == max_classes:
            break
    if len(chosen) < 2:
        raise ValueError(f"{path}: fewer than 2 identities with 2+ images; cannot split for a probe")
    sides: list[list[int]] = [[], []]
    for members in chosen:
        for k, index in enumerate(members):
            sides[k % 2].append(int(index))

    def side(indices: list[int]) -> Samples:
        images = torch.stack([dataset[i][0] for i in indices])
        return Samples(images, labels[indices])

    desc = f"{path} ({len(chosen)} identities, {len(sides[0]) + len(sides[1])} images)"
    return side(sides[0]), side(sides[1]), desc


def _verification(path: Path, max_pairs: int) -> tuple[Samples, Samples, str]:
    from facevib.data.bins import read_bin
    from facevib.data.transforms import images_to_tensor

    vbin = read_bin(path)
    count = min(len(vbin), max_pairs)
    if count < 4:
        raise ValueError(f"{path}: {len(vbin)} pairs; need at least 4 to split for a probe")
    half = count // 2

    def side(start: int, stop: int) -> Samples:
        images = vbin.images[2 * start : 2 * stop]
        x = images_to_tensor(np.ascontiguousarray(images))
        pairs = np.arange(2 * (stop - start)).reshape(-1, 2)
        return Samples(x, pairs=pairs, pair_labels=vbin.issame[start:stop].astype(np.int64))

    desc = f"{path} ({count} pairs, label = same identity)"
    return side(0, half), side(half, count), desc
