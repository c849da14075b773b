"""Photos with one controlled nuisance at a chosen level, for quality studies.

:func:`nuisance_conditions` draws a photo's conditions with every random nuisance switched off
(``difficulty=0``: no occluder, no motion blur, no low resolution, minimal landmark error, a
mild camera blur and sensor noise) and a near-frontal head, then forces one nuisance to a
level. :func:`render_aligned` renders such a photo and aligns it the way real data is
prepared (a detector's noisy landmarks, then :func:`facevib.align.norm_crop`).

Levels 1..3 grow in strength; ``clean`` has level 0 only. Identities come from the
``quality`` split, a seed stream of its own, so they are disjoint from the training set and
from every verification set the dataset writer makes.
"""

from __future__ import annotations

import numpy as np

from facevib.align import norm_crop
from facevib.synth.jobs import PHOTO, identity_for, stream
from facevib.synth.params import Conditions, Identity, sample_conditions
from facevib.synth.render import noisy_landmarks, render_face

__all__ = ["NUISANCE_LEVELS", "QUALITY_SPLIT", "nuisance_conditions", "render_aligned", "quality_identity"]

QUALITY_SPLIT = "quality"
# Per nuisance, the value forced at levels 1, 2, 3 (units are those of Conditions' fields):
# camera blur sigma in pixels at a 192-pixel crop; sensor noise sigma in 8-bit levels; the
# occluder kind, ordered by the share of identity cues it hides (a hat covers the forehead,
# sunglasses the eyes, a hand or patch lands on a landmark and a mask covers nose and mouth);
# |yaw| in degrees; the resolution factor of the camera (0.14 of a 176-pixel crop is 25 px).
NUISANCE_LEVELS: dict[str, tuple] = {
    "clean": (),
    "blur": (2.0, 3.5, 5.5),
    "noise": (12.0, 24.0, 40.0),
    "occlusion": ("sunglasses", "hand", "mask"),
    "pose": (35.0, 55.0, 72.0),
    "lowres": (0.35, 0.22, 0.14),
}
_BASE_YAW_SIGMA = 8.0  # degrees: near-frontal, so pose is the nuisance only where it is forced


def nuisance_conditions(rng: np.random.Generator, ident: Identity, nuisance: str, level: int) -> Conditions:
    """Conditions of one photo of ``ident`` with only ``nuisance`` at ``level`` (0 for ``clean``).

    Raises:
        ValueError: an unknown nuisance, or a level outside ``1..3`` (``0`` for ``clean``).
    """
    if nuisance not in NUISANCE_LEVELS:
        raise ValueError(f"unknown nuisance {nuisance!r}; expected one of {sorted(NUISANCE_LEVELS)}")
    levels = NUISANCE_LEVELS[nuisance]
    if not (level == 0 if not levels else 1 <= level <= len(levels)):
        allowed = "0" if not levels else f"1..{len(levels)}"
        raise ValueError(f"nuisance {nuisance!r}: level must be {allowed}, got {level}")
    cond = sample_conditions(rng, ident, yaw_sigma=_BASE_YAW_SIGMA, difficulty=0.0)
    if not levels:
        return cond
    value = levels[level - 1]
    if nuisance == "blur":
        cond.blur = float(value)
    elif nuisance == "noise":
        cond.noise = float(value)
    elif nuisance == "occlusion":
        cond.occlusion = str(value)
    elif nuisance == "pose":
        cond.yaw = float(np.radians(value) * np.sign(cond.yaw or 1.0))
    else:
        cond.downscale = float(value)
    return cond


def quality_identity(seed: int, index: int) -> Identity:
    """Identity ``index`` of the quality split for ``seed``."""
    return identity_for(seed, QUALITY_SPLIT, index)


def render_aligned(seed: int, index: int, photo: int, nuisance: str, level: int, crop_size: int = 176) -> np.ndarray:
    """Aligned 112x112 RGB uint8 crop of photo ``photo`` of quality-split identity ``index``.

    The photo's random stream depends on ``(seed, index, photo)`` only, so the same photo
    number rendered under two nuisances shares its scene (background, lighting, expression).
    """
    ident = quality_identity(seed, index)
    cond = nuisance_conditions(stream(seed, QUALITY_SPLIT, index, PHOTO, photo), ident, nuisance, level)
    image, landmarks, _ = render_face(ident, cond, crop_size)
    return norm_crop(image, noisy_landmarks(landmarks, cond))
