"""Render jobs of the synthetic dataset: one identity's photos per job, so jobs can run in
worker processes in any order and the result depends only on the job's seeds.

Seeds: every random stream is ``stream(seed, split, identity, tag, a, b, c)``, that is
``numpy.random.default_rng([seed, split code, identity, tag, a, b, c])``: a ``SeedSequence``
over seven integers (fixed length, because a SeedSequence pads short entropy with zeros,
so ``[1, 2]`` and ``[1, 2, 0]`` would collide):

* identity ``i`` of split ``s`` (``SPLITS``): tag ``IDENTITY``;
* photo ``j`` of that identity: tag ``PHOTO``, ``a = j``;
* IJB template/media layout of subject ``i``: tag ``LAYOUT``; media ``m`` of template ``t``:
  tag ``MEDIA``, ``(t, m)``; frame ``f`` of that media: tag ``FRAME``, ``(t, m, f)``;
* the pairs of a verification set: identity 0, tag ``PAIRS``.

So an identity is the same whatever the number of identities or photos asked for, and the
first ``K`` photos of an identity are the same whatever ``images_per_identity`` is.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facevib.align import norm_crop
from facevib.data.bins import encode_jpeg
from facevib.synth.params import Identity, jitter_conditions, sample_conditions, sample_identity
from facevib.synth.render import noisy_landmarks, render_face

__all__ = ["SPLITS", "stream", "identity_for", "AlignedJob", "IJBJob", "run_job", "init_worker", "worker_main"]

# Split codes: disjoint seed streams, hence disjoint identities.
SPLITS = {"train": 0, "lfw": 1, "cfp_fp": 2, "agedb_30": 3, "ijbc": 4, "quality": 5}
IDENTITY, PHOTO, LAYOUT, MEDIA, FRAME, PAIRS = range(6)


def stream(seed: int, split: str, identity: int, tag: int, a: int = 0, b: int = 0, c: int = 0) -> np.random.Generator:
    """The random generator of one stream (see the module docstring)."""
    return np.random.default_rng([seed, SPLITS[split], identity, tag, a, b, c])


def identity_for(seed: int, split: str, index: int) -> Identity:
    """Identity ``index`` of ``split`` for ``seed``."""
    return sample_identity(stream(seed, split, index, IDENTITY))


@dataclass(frozen=True)
class AlignedJob:
    """Aligned 112x112 JPEGs of one identity (training set and verification pools).

    ``kinds`` names each photo's condition preset: ``"any"`` (training-like), ``"frontal"``
    (|yaw| <= 10 degrees), ``"profile"`` (|yaw| 55-78 degrees), ``"young"`` / ``"old"``
    (age shifted by -/+ 0.3).
    """

    seed: int
    split: str
    index: int
    kinds: tuple[str, ...]
    crop_size: int
    quality: int
    yaw_sigma: float
    difficulty: float


@dataclass(frozen=True)
class IJBJob:
    """Loose crops of one IJB subject: ``media[t]`` lists the frame counts of template t's media."""

    seed: int
    index: int
    media: tuple[tuple[int, ...], ...]
    min_size: int
    max_size: int
    quality: int
    difficulty: float


def _conditions(rng: np.random.Generator, ident: Identity, kind: str, yaw_sigma: float, difficulty: float):
    if kind == "frontal":
        return sample_conditions(rng, ident, yaw_range=(0.0, 10.0), difficulty=difficulty)
    if kind == "profile":
        return sample_conditions(rng, ident, yaw_range=(55.0, 78.0), difficulty=difficulty)
    if kind in ("young", "old"):
        shift = -0.3 if kind == "young" else 0.3
        return sample_conditions(rng, ident, yaw_sigma=yaw_sigma, age_shift=shift, difficulty=difficulty)
    if kind == "any":
        return sample_conditions(rng, ident, yaw_sigma=yaw_sigma, difficulty=difficulty)
    raise ValueError(f"unknown photo kind {kind!r}")


def _aligned(job: AlignedJob) -> list[bytes]:
    ident = identity_for(job.seed, job.split, job.index)
    out = []
    for j, kind in enumerate(job.kinds):
        rng = stream(job.seed, job.split, job.index, PHOTO, j)
        cond = _conditions(rng, ident, kind, job.yaw_sigma, job.difficulty)
        image, landmarks, _ = render_face(ident, cond, job.crop_size)
        # The same path as real data: a detector's (noisy) landmarks, then norm_crop.
        out.append(encode_jpeg(norm_crop(image, noisy_landmarks(landmarks, cond)), job.quality))
    return out


def _detector_score(rng: np.random.Generator, visibility: float, blur: float) -> float:
    # Real IJB-C scores are mostly > 0.9, with a tail for profiles, occlusion and blur.
    score = 0.999 - 0.55 * (1.0 - visibility) ** 1.5 - 0.08 * max(blur - 1.2, 0.0) + rng.normal(0, 0.01)
    return float(np.clip(score, 0.05, 0.999))


def _ijb(job: IJBJob) -> list[list[list[tuple[bytes, np.ndarray, float]]]]:
    """Per template, per media, per frame: (loose-crop JPEG, detector landmarks (5, 2), score)."""
    ident = identity_for(job.seed, "ijbc", job.index)
    templates = []
    for t, frames_per_media in enumerate(job.media):
        medias = []
        for m, frames in enumerate(frames_per_media):
            rng = stream(job.seed, "ijbc", job.index, MEDIA, t, m)
            # IJB is unconstrained: wider poses and stronger nuisances than the training set.
            base = sample_conditions(rng, ident, yaw_sigma=30.0, difficulty=job.difficulty)
            size = int(rng.integers(job.min_size, job.max_size + 1))
            aspect = rng.uniform(0.75, 1.0)  # loose crops are taller than wide
            shots = []
            for f in range(frames):
                frame_rng = stream(job.seed, "ijbc", job.index, FRAME, t, m, f)
                cond = base if f == 0 else jitter_conditions(frame_rng, base)
                image, landmarks, visibility = render_face(ident, cond, size)
                width = int(round(size * aspect))
                left = int(frame_rng.integers(0, size - width + 1))
                crop = np.ascontiguousarray(image[:, left : left + width])
                detected = noisy_landmarks(landmarks, cond) - np.array([left, 0.0])
                score = _detector_score(frame_rng, visibility, cond.blur)
                shots.append((encode_jpeg(crop, job.quality), detected, score))
            medias.append(shots)
        templates.append(medias)
    return templates


def init_worker() -> None:
    """Worker-process initialiser: one process per core already, so cv2 runs single-threaded."""
    cv2.setNumThreads(1)


def run_job(job: AlignedJob | IJBJob):
    """Run one job (what worker processes execute)."""
    if isinstance(job, AlignedJob):
        return _aligned(job)
    return _ijb(job)


def worker_main(job_file: str) -> int:
    """Worker process: run the pickled job list in ``job_file``, writing one pickled
    ``(ok, result or traceback)`` per job to stdout, in order (see ``facevib.synth.dataset._run``)."""
    init_worker()
    jobs = pickle.loads(Path(job_file).read_bytes())
    out = sys.stdout.buffer
    for job in jobs:
        try:
            message = (True, run_job(job))
        except Exception:  # handed to the parent, which raises it with this traceback
            message = (False, traceback.format_exc())
        pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
        if not message[0]:
            return 1
    return 0
