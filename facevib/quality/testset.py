"""The held-out quality test set: synthetic identities never trained on, clean and with one controlled nuisance.

Per identity: ``clean_photos`` clean photos, then one photo per (nuisance, level) of
:data:`facevib.synth.nuisance.NUISANCE_LEVELS`. Genuine pairs are every pair of photos of
one identity; impostor pairs every pair of photos of two identities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facevib.synth.nuisance import NUISANCE_LEVELS, render_aligned

__all__ = ["QualityTestSet", "render_test_set", "photo_plan", "score_pairs"]


@dataclass(frozen=True)
class QualityTestSet:
    """Aligned crops (N, 112, 112, 3) and, per crop, its identity, nuisance name and level."""

    images: np.ndarray
    identity: np.ndarray
    nuisance: np.ndarray
    level: np.ndarray


def photo_plan(clean_photos: int) -> list[tuple[str, int]]:
    """The (nuisance, level) of each photo of one identity, in photo order."""
    plan = [("clean", 0)] * clean_photos
    for name, levels in NUISANCE_LEVELS.items():
        plan += [(name, level) for level in range(1, len(levels) + 1)]
    return plan


def render_test_set(seed: int, identities: int, clean_photos: int = 3, crop_size: int = 176) -> QualityTestSet:
    """Render the set for quality-split identities ``0..identities-1`` of ``seed``.

    Raises:
        ValueError: fewer than 2 identities or no clean photo.
    """
    if identities < 2 or clean_photos < 1:
        raise ValueError(
            f"the quality test set needs >= 2 identities and >= 1 clean photo, got {identities}, {clean_photos}"
        )
    plan = photo_plan(clean_photos)
    images, ident, nuisance, level = [], [], [], []
    for index in range(identities):
        for photo, (name, strength) in enumerate(plan):
            images.append(render_aligned(seed, index, photo, name, strength, crop_size))
            ident.append(index)
            nuisance.append(name)
            level.append(strength)
    return QualityTestSet(np.stack(images), np.asarray(ident), np.asarray(nuisance), np.asarray(level))


def score_pairs(unit: np.ndarray, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines of every pair of L2-normalised embeddings ``unit``.

    Returns ``(genuine (M, 2) index pairs, their cosines, impostor cosines)``.
    """
    cos = unit @ unit.T
    i, j = np.triu_indices(len(unit), k=1)
    same = identity[i] == identity[j]
    pairs = np.stack([i[same], j[same]], axis=1)
    return pairs, cos[i[same], j[same]], cos[i[~same], j[~same]]
