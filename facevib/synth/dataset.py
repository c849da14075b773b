"""The synthetic identity set: the project's embedded default dataset, in the real formats.

``write_synthetic_dataset(out_dir, identities, images_per_identity, seed)`` writes

* ``train.rec`` / ``train.idx`` / ``property``: the training identities in MS1M layout
  (record 0 a header with labels ``[first identity record, end]``, image records grouped by
  identity with scalar labels ``0..N-1``, then one identity record per label holding
  ``[first image key, last image key + 1]``), 112x112 JPEG (quality 95) aligned crops;
* ``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``: verification pairs (insightface's pickle)
  from held-out identities: LFW-like (mostly frontal, 50% same pairs), CFP-FP-like (every
  pair is a frontal and a profile photo) and AgeDB-30-like (every pair is a young and an
  old photo: greyer hair, wrinkles, fuller jaw);
* ``IJBC/``: an IJB-C-style 1:1 and 1:N set from other held-out identities (see
  :mod:`facevib.synth.ijb`);
* ``synth.json``: the options, the seed derivation, the identity count of every split and
  the pairs of every .bin as ``[identity a, photo i, identity b, photo j]``.

Every photo is rendered as a loose crop (:mod:`facevib.synth.render`), its landmarks get a detector's
error, and training and .bin images are aligned with :func:`facevib.align.norm_crop` on
those noisy landmarks, exactly as real data is prepared. Identities differ in geometry,
colours, marks, hair, beard and glasses; photos differ in pose, expression, lighting,
age, background, occlusion, blur, noise and compression (:mod:`facevib.synth.params`).

Output is a deterministic function of the options (same seed, same bytes) whatever the
number of worker processes; see :mod:`facevib.synth.jobs` for how seeds derive per
identity and photo.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from facevib.data.bins import write_bin
from facevib.data.pack import write_ms1m, write_property
from facevib.synth.ijb import write_ijb
from facevib.synth.jobs import LAYOUT, PAIRS, SPLITS, AlignedJob, IJBJob, run_job, stream

__all__ = ["SynthOptions", "write_synthetic_dataset", "verification_pairs"]

FORMAT_VERSION = 1
_FOLDS = 10  # LFW's protocol: 10 folds, each half same and half different pairs


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SynthOptions:
    """What to generate (the ``help`` of each field is also the CLI's help).

    A held-out set is skipped when its identity count is 0.
    """

    identities: int = _opt(100, "training identities (labels 0..N-1)")
    images_per_identity: int = _opt(20, "training images per identity")
    seed: int = _opt(0, "seed; the same seed gives byte-identical files")
    lfw_identities: int = _opt(30, "held-out identities behind lfw.bin (0: no lfw.bin)")
    lfw_pairs: int = _opt(200, "pairs in lfw.bin (half same, half different)")
    cfp_fp_identities: int = _opt(16, "held-out identities behind cfp_fp.bin (frontal-profile pairs)")
    cfp_fp_pairs: int = _opt(100, "pairs in cfp_fp.bin")
    agedb_30_identities: int = _opt(16, "held-out identities behind agedb_30.bin (young-old pairs)")
    agedb_30_pairs: int = _opt(100, "pairs in agedb_30.bin")
    bin_images_per_identity: int = _opt(4, "photos per held-out identity that the .bin pairs draw from")
    ijb_identities: int = _opt(12, "IJB-C subjects (half in gallery G1, half in G2; 0: no IJBC/)")
    ijb_templates_per_identity: int = _opt(3, "templates per IJB subject: one gallery, the rest probes")
    ijb_max_media: int = _opt(3, "media per IJB template: 1..this many")
    ijb_max_frames: int = _opt(3, "frames per IJB media: 1 (a photo) .. this many (video frames)")
    ijb_impostor_pairs: int = _opt(0, "cap on IJB impostor template pairs (0: every gallery x other probes)")
    crop_size: int = _opt(176, "loose-crop render size in pixels for training and .bin photos")
    ijb_min_crop: int = _opt(140, "smallest IJB loose crop (pixels)")
    ijb_max_crop: int = _opt(220, "largest IJB loose crop (pixels)")
    quality: int = _opt(95, "JPEG quality of the aligned 112x112 crops")
    yaw_sigma: float = _opt(20.0, "spread of head yaw in degrees for training and LFW-like photos")
    difficulty: float = _opt(1.0, "scales occlusion, blur, noise and landmark error (0..3)")
    workers: int = _opt(0, "worker processes (0: one per CPU, at most 8; 1: in-process); never changes the output")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option out of range."""
        positive = (
            "identities",
            "images_per_identity",
            "crop_size",
            "ijb_min_crop",
            "ijb_templates_per_identity",
            "ijb_max_media",
            "ijb_max_frames",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "lfw_identities",
            "lfw_pairs",
            "cfp_fp_identities",
            "cfp_fp_pairs",
            "agedb_30_identities",
            "agedb_30_pairs",
            "ijb_identities",
            "ijb_impostor_pairs",
            "workers",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lfw", "cfp_fp", "agedb_30"):
            count, pairs = getattr(self, f"{name}_identities"), getattr(self, f"{name}_pairs")
            if count and count < 2:
                raise ValueError(f"{name}_identities must be 0 or >= 2 (different pairs need two people), got {count}")
            if count and pairs < 2:
                raise ValueError(f"{name}_pairs must be >= 2 when {name}_identities > 0, got {pairs}")
        if self.bin_images_per_identity < 2:
            raise ValueError(f"bin_images_per_identity must be >= 2, got {self.bin_images_per_identity}")
        if self.ijb_identities == 1 or (self.ijb_identities and self.ijb_templates_per_identity < 2):
            raise ValueError("an IJB set needs >= 2 identities with >= 2 templates each (gallery + probe)")
        if not self.ijb_min_crop <= self.ijb_max_crop:
            raise ValueError(f"ijb_min_crop {self.ijb_min_crop} > ijb_max_crop {self.ijb_max_crop}")
        if self.crop_size < 64 or self.ijb_min_crop < 64:
            raise ValueError("crop sizes below 64 pixels cannot hold a face worth aligning")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")
        if not 0.0 <= self.difficulty <= 3.0:
            raise ValueError(f"difficulty must be in [0, 3], got {self.difficulty}")
        if not 0.0 <= self.yaw_sigma <= 90.0:
            raise ValueError(f"yaw_sigma must be in [0, 90] degrees, got {self.yaw_sigma}")


# Photo pools of the verification sets and which pool photos may pair up.
_BIN_SETS = {
    "lfw": {"kinds": ("any",), "left": None, "right": None},
    "cfp_fp": {"kinds": ("frontal", "profile"), "left": "frontal", "right": "profile"},
    "agedb_30": {"kinds": ("young", "old"), "left": "young", "right": "old"},
}


def _pool_kinds(name: str, count: int) -> tuple[str, ...]:
    kinds = _BIN_SETS[name]["kinds"]
    return tuple(kinds[i * len(kinds) // count] for i in range(count))  # e.g. 2 frontal then 2 profile


def verification_pairs(
    rng: np.random.Generator, identities: int, pool: tuple[str, ...], pairs: int, left: str | None, right: str | None
) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
    """Draw ``pairs`` pairs ``(identity a, photo i, identity b, photo j)`` and their issame flags.

    Pairs come in 10 consecutive folds, each half same and half different pairs (as LFW's
    pairs.txt and the insightface .bin files are ordered, so 10-fold cross-validation over
    consecutive blocks stays balanced). With >= 20 identities the folds are also
    identity-disjoint, as LFW's are. ``left``/``right`` restrict which pool photos sit on
    each side (e.g. frontal vs profile); ``None`` allows any two distinct photos.
    """
    lefts = [i for i, kind in enumerate(pool) if left is None or kind == left]
    rights = [i for i, kind in enumerate(pool) if right is None or kind == right]
    folds = max(1, min(_FOLDS, pairs // 2))  # a fold needs a same and a different pair
    disjoint = identities >= 2 * folds
    out: list[tuple[int, int, int, int]] = []
    flags: list[bool] = []
    for fold, block in enumerate(np.array_split(np.arange(pairs), folds)):
        members = np.arange(fold, identities, folds) if disjoint else np.arange(identities)
        same = (len(block) + 1) // 2
        seen: set[tuple[tuple[int, int], tuple[int, int]]] = set()
        for k in range(len(block)):
            is_same = k < same
            for _attempt in range(50):  # avoid repeating a pair while unused ones remain
                a = int(rng.choice(members))
                b = a if is_same else int(rng.choice(members[members != a]))
                i, j = int(rng.choice(lefts)), int(rng.choice(rights))
                if is_same and i == j:
                    continue
                key = (min((a, i), (b, j)), max((a, i), (b, j)))  # (x, y) and (y, x) are one pair
                if key not in seen:
                    break
            seen.add(key)
            out.append((a, i, b, j))
            flags.append(is_same)
    return out, flags


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run(jobs: list, workers: int) -> Iterator:
    """Results of ``jobs`` in order, computed by ``workers`` processes (1: in this process).

    Workers are fresh interpreters (``python -m facevib.synth.worker``), not forks or
    multiprocessing children: a fork would copy a caller's threads and locks mid-state
    (torch, cv2), and spawn/forkserver re-import the caller's main script, which fails in
    scripts without an ``if __name__ == "__main__"`` guard. Job ``i`` goes to worker
    ``i % workers``; each worker streams its results back in order over a pipe.
    """
    if workers <= 1:
        for job in jobs:
            yield run_job(job)
        return
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # importable without installing
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="facevib-synth-") as tmp:
        try:
            for w in range(workers):
                job_file = Path(tmp) / f"jobs-{w}.pickle"
                job_file.write_bytes(pickle.dumps(jobs[w::workers]))
                command = [sys.executable, "-m", "facevib.synth.worker", str(job_file)]
                procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, env=env))
            for i, job in enumerate(jobs):
                proc = procs[i % workers]
                try:
                    ok, value = pickle.load(proc.stdout)
                except EOFError:
                    code = proc.wait()
                    raise RuntimeError(
                        f"synthetic-data worker {i % workers} exited (code {code}) before job {i}"
                    ) from None
                if not ok:
                    raise RuntimeError(f"synthetic-data worker failed on job {i} ({job}):\n{value}")
                yield value
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()


def _remove_previous(out: Path) -> None:
    """Clear what an earlier synthetic set left in ``out`` (recognised by its synth.json),
    so that no stale .bin or loose crop outlives a smaller or different run."""
    if not (out / "synth.json").is_file():
        return
    for name in ("train.rec", "train.idx", "property", "synth.json", *(f"{b}.bin" for b in _BIN_SETS)):
        (out / name).unlink(missing_ok=True)
    if (out / "IJBC").is_dir():
        shutil.rmtree(out / "IJBC")


def _ijb_layout(opts: SynthOptions, index: int) -> tuple[tuple[int, ...], ...]:
    rng = stream(opts.seed, "ijbc", index, LAYOUT)
    layout = []
    for _ in range(opts.ijb_templates_per_identity):
        media = int(rng.integers(1, opts.ijb_max_media + 1))
        # Half the media are single photos, the others short videos.
        layout.append(
            tuple(1 if rng.random() < 0.5 else int(rng.integers(1, opts.ijb_max_frames + 1)) for _ in range(media))
        )
    return tuple(layout)


def write_synthetic_dataset(
    out_dir: str | os.PathLike, identities: int = 100, images_per_identity: int = 20, seed: int = 0, **options
) -> dict:
    """Write the synthetic identity set to ``out_dir`` (layout in the module docstring).

    ``options`` are the other fields of :class:`SynthOptions` (held-out set sizes, crop
    sizes, quality, difficulty, workers). Returns a summary: paths, counts, identity
    counts per split, time taken and images rendered per second. Raises ``ValueError``
    naming an unknown or out-of-range option.
    """
    known = {f.name for f in fields(SynthOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown synthetic-set option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    opts = SynthOptions(identities=identities, images_per_identity=images_per_identity, seed=int(seed), **options)
    opts.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    started = time.perf_counter()
    common = {"seed": opts.seed, "crop_size": opts.crop_size, "quality": opts.quality, "difficulty": opts.difficulty}
    jobs: list = [
        AlignedJob(
            split="train", index=i, kinds=("any",) * opts.images_per_identity, yaw_sigma=opts.yaw_sigma, **common
        )
        for i in range(opts.identities)
    ]
    bins = [name for name in _BIN_SETS if getattr(opts, f"{name}_identities")]
    for name in bins:
        pool = _pool_kinds(name, opts.bin_images_per_identity)
        # LFW is mostly frontal news photos: a narrower yaw spread than the training set.
        yaw = opts.yaw_sigma * (0.75 if name == "lfw" else 1.0)
        jobs += [
            AlignedJob(split=name, index=i, kinds=pool, yaw_sigma=yaw, **common)
            for i in range(getattr(opts, f"{name}_identities"))
        ]
    ijb_jobs = [
        IJBJob(opts.seed, i, _ijb_layout(opts, i), opts.ijb_min_crop, opts.ijb_max_crop, 90, opts.difficulty * 1.2)
        for i in range(opts.ijb_identities)
    ]
    jobs += ijb_jobs
    renders = sum(len(j.kinds) if isinstance(j, AlignedJob) else sum(sum(m) for m in j.media) for j in jobs)
    if opts.workers:
        workers = min(opts.workers, len(jobs))
    else:  # auto: worker start-up (~0.5 s) only pays off beyond a few dozen renders
        workers = 1 if renders < 96 else min(8, _available_cpus(), len(jobs))
    results = _run(jobs, workers)
    summary: dict = {"out_dir": str(out), "seed": opts.seed, "workers": workers}
    try:
        train = write_ms1m(
            out / "train",
            [opts.images_per_identity] * opts.identities,
            (payload for _ in range(opts.identities) for payload in next(results)),
        )
        write_property(out, opts.identities)
        summary["train"] = train
        manifest_pairs = {}
        summary["bins"] = {}
        for name in bins:
            count = getattr(opts, f"{name}_identities")
            pools = [next(results) for _ in range(count)]
            spec = _BIN_SETS[name]
            pool = _pool_kinds(name, opts.bin_images_per_identity)
            pairs, issame = verification_pairs(
                stream(opts.seed, name, 0, PAIRS),
                count,
                pool,
                getattr(opts, f"{name}_pairs"),
                spec["left"],
                spec["right"],
            )
            images = [img for a, i, b, j in pairs for img in (pools[a][i], pools[b][j])]
            write_bin(out / f"{name}.bin", images, issame)
            manifest_pairs[name] = [list(p) for p in pairs]
            summary["bins"][name] = {
                "path": str(out / f"{name}.bin"),
                "pairs": len(pairs),
                "same": int(sum(issame)),
                "identities": count,
            }
        if ijb_jobs:
            subjects = [next(results) for _ in ijb_jobs]
            summary["ijb"] = write_ijb(
                out / "IJBC", subjects, stream(opts.seed, "ijbc", 0, PAIRS), opts.ijb_impostor_pairs
            )
    finally:
        results.close()
    seconds = time.perf_counter() - started
    manifest = {
        "format": "facevib-synthetic",
        "version": FORMAT_VERSION,
        "options": {k: v for k, v in asdict(opts).items() if k != "workers"},  # workers never change the output
        "seeds": "numpy.random.default_rng([seed, split, identity, tag, a, b, c]); see facevib.synth.jobs",
        "splits": {name: code for name, code in SPLITS.items()},
        "identities": {
            "train": opts.identities,
            **{name: getattr(opts, f"{name}_identities") for name in bins},
            "ijbc": opts.ijb_identities,
        },
        "pairs": manifest_pairs,
    }
    (out / "synth.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    summary.update(images_rendered=renders, seconds=round(seconds, 3), images_per_second=round(renders / seconds, 1))
    return summary
