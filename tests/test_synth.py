"""The synthetic identity set: real formats, held-out identities, determinism, learnability."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SYNTH_IDENTITIES, SYNTH_IMAGES_PER_IDENTITY
from threadpoolctl import threadpool_limits  # installed with scikit-learn (dev extra)

from facevib.align import norm_crop
from facevib.data.bins import read_bin
from facevib.data.recordio import IndexedRecordReader, unpack
from facevib.synth import SynthOptions, verification_pairs, write_synthetic_dataset
from facevib.synth.jobs import SPLITS, AlignedJob, identity_for, run_job

DEFAULTS = SynthOptions()
SMALL = dict(  # a complete but tiny set: every writer runs, in a second or two
    identities=3,
    images_per_identity=2,
    lfw_identities=4,
    lfw_pairs=6,
    cfp_fp_identities=2,
    cfp_fp_pairs=2,
    agedb_30_identities=2,
    agedb_30_pairs=2,
    bin_images_per_identity=2,
    ijb_identities=2,
    ijb_templates_per_identity=2,
    ijb_max_media=2,
    ijb_max_frames=2,
)


def _decode(buf) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _tenfold_accuracy(scores: np.ndarray, issame: np.ndarray) -> float:
    """LFW protocol: threshold chosen on 9 folds, accuracy on the 10th, averaged."""
    folds = np.array_split(np.arange(len(scores)), 10)
    accuracies = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(scores)), test)
        thresholds = np.unique(scores[train])
        train_acc = [((scores[train] > t) == issame[train]).mean() for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accuracies.append(((scores[test] > best) == issame[test]).mean())
    return float(np.mean(accuracies))


# ----------------------------------------------------------------------------- training set


def test_train_rec_has_the_ms1m_layout(synthetic_dir: Path):
    reader = IndexedRecordReader(synthetic_dir / "train.rec")
    n_images = SYNTH_IDENTITIES * SYNTH_IMAGES_PER_IDENTITY
    assert reader.keys == list(range(n_images + SYNTH_IDENTITIES + 1))
    header = unpack(reader.read(0))[0]
    assert header.flag == 2 and header.label.tolist() == [n_images + 1, n_images + 1 + SYNTH_IDENTITIES]
    labels = []
    for key in range(1, n_images + 1):
        head, body = unpack(reader.read(key))
        assert head.flag == 0 and head.id == key
        labels.append(head.label)
        if key % 37 == 1:
            assert _decode(body).shape == (112, 112, 3)
    expected = np.repeat(np.arange(SYNTH_IDENTITIES), SYNTH_IMAGES_PER_IDENTITY)
    np.testing.assert_array_equal(labels, expected)  # contiguous labels, grouped by identity
    for label in range(SYNTH_IDENTITIES):
        head, body = unpack(reader.read(n_images + 1 + label))
        first = 1 + label * SYNTH_IMAGES_PER_IDENTITY
        assert head.flag == 2 and head.label.tolist() == [first, first + SYNTH_IMAGES_PER_IDENTITY]
        assert len(body) == 0
    assert (synthetic_dir / "property").read_text() == f"{SYNTH_IDENTITIES},112,112"


def test_training_crops_are_aligned_faces(synthetic_dir: Path):
    """Aligned crops put the eyes where the template does: the eye band is darker than the
    cheeks below on average (the eyes, brows and lids are dark), for most images."""
    reader = IndexedRecordReader(synthetic_dir / "train.rec")
    images = np.stack([_decode(unpack(reader.read(k))[1]) for k in range(1, 97)]).astype(np.float32).mean(axis=3)
    mean = images.mean(axis=0)
    eyes = mean[46:58, 32:80].mean()
    cheeks = mean[60:70, 32:80].mean()
    assert eyes < cheeks - 3
    # And the crops differ a lot from one another (pose, lighting, backgrounds).
    assert images.std(axis=0).mean() > 25


# ----------------------------------------------------------------------------- verification sets


@pytest.mark.parametrize("name", ["lfw", "cfp_fp", "agedb_30"])
def test_bins_are_balanced_in_every_fold(synthetic_dir: Path, name: str):
    data = read_bin(synthetic_dir / f"{name}.bin")
    pairs = getattr(DEFAULTS, f"{name}_pairs")
    assert data.images.shape == (2 * pairs, 112, 112, 3)
    for fold in np.array_split(data.issame, 10):
        assert abs(int(fold.sum()) - len(fold) / 2) <= 0.5


def test_bins_come_from_held_out_identities(synthetic_dir: Path):
    manifest = json.loads((synthetic_dir / "synth.json").read_text())
    assert manifest["identities"]["train"] == SYNTH_IDENTITIES
    # Every identity of every split is its own seed stream: no parameter vector repeats.
    vectors = {
        split: np.stack([identity_for(0, split, i).vector() for i in range(count)])
        for split, count in manifest["identities"].items()
    }
    splits = list(vectors)
    for a in range(len(splits)):
        for b in range(a + 1, len(splits)):
            gap = np.abs(vectors[splits[a]][:, None] - vectors[splits[b]][None]).max(axis=2)
            assert gap.min() > 1e-3, (splits[a], splits[b])
    # The .bin images are those identities' photos: re-render a few pool photos and
    # compare bytes with what the .bin holds.
    with open(synthetic_dir / "lfw.bin", "rb") as handle:
        stored, issame = pickle.load(handle, encoding="bytes")
    pairs = manifest["pairs"]["lfw"]
    opts = manifest["options"]
    for p in (0, len(pairs) // 2, len(pairs) - 1):
        a, i, b, j = pairs[p]
        assert (a == b) == issame[p]
        job = AlignedJob(
            0,
            "lfw",
            a,
            ("any",) * opts["bin_images_per_identity"],
            opts["crop_size"],
            opts["quality"],
            opts["yaw_sigma"] * 0.75,
            opts["difficulty"],
        )
        assert run_job(job)[i] == stored[2 * p]


def test_cfp_and_agedb_pairs_pair_the_right_photos():
    pool = ("frontal", "frontal", "profile", "profile")
    pairs, issame = verification_pairs(np.random.default_rng(0), 30, pool, 100, "frontal", "profile")
    assert sum(issame) == 50 and len(set(map(tuple, pairs))) == 100
    for (a, i, b, j), same in zip(pairs, issame, strict=True):
        assert pool[i] == "frontal" and pool[j] == "profile" and (a == b) == same
    # With >= 20 identities the 10 folds are identity-disjoint, as LFW's are.
    blocks = np.array_split(np.array(pairs), 10)
    members = [set(block[:, 0]) | set(block[:, 2]) for block in blocks]
    assert all(not (members[f] & members[g]) for f in range(10) for g in range(f + 1, 10))


# ----------------------------------------------------------------------------- IJB-C


def _read_table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def test_ijbc_meta_files_are_consistent(synthetic_dir: Path):
    root = synthetic_dir / "IJBC"
    tid_mid = _read_table(root / "meta" / "ijbc_face_tid_mid.txt")
    five = _read_table(root / "meta" / "ijbc_name_5pts_score.txt")
    pairs = np.array(_read_table(root / "meta" / "ijbc_template_pair_label.txt"), dtype=int)
    assert all(len(row) == 3 for row in tid_mid) and all(len(row) == 12 for row in five)
    names = [row[0] for row in tid_mid]
    assert names == [row[0] for row in five]  # insightface pairs the two files by line
    assert names == [f"{n}.jpg" for n in range(1, len(names) + 1)]
    templates = np.array([int(row[1]) for row in tid_mid])
    medias = np.array([int(row[2]) for row in tid_mid])
    assert set(pairs[:, :2].ravel()) <= set(templates.tolist())
    assert set(pairs[:, 2].tolist()) == {0, 1}
    # Templates of several media, media of several images (video frames), somewhere.
    media_per_template = [len(set(medias[templates == t])) for t in np.unique(templates)]
    images_per_media = np.bincount(medias - medias.min())
    assert max(media_per_template) > 1 and images_per_media.max() > 1
    assert len(np.unique(templates)) == DEFAULTS.ijb_identities * DEFAULTS.ijb_templates_per_identity
    # Every listed image exists as a loose (not aligned) crop, landmarks in its pixels.
    values = np.array([[float(v) for v in row[1:]] for row in five])
    landmarks, scores = values[:, :10].reshape(-1, 5, 2), values[:, 10]
    assert ((scores > 0) & (scores <= 1)).all() and scores.std() > 0.01
    inside = 0
    for name, points in zip(names, landmarks, strict=True):
        crop = cv2.imread(str(root / "loose_crop" / name))
        assert crop is not None and crop.shape[0] >= DEFAULTS.ijb_min_crop and crop.shape[0] != 112
        inside += bool(
            (points >= 0).all() and (points[:, 0] < crop.shape[1]).all() and (points[:, 1] < crop.shape[0]).all()
        )
    assert inside >= 0.9 * len(names)
    aligned = norm_crop(cv2.imread(str(root / "loose_crop" / names[0])), landmarks[0])
    assert aligned.shape == (112, 112, 3)


def test_ijbc_protocols(synthetic_dir: Path):
    meta = synthetic_dir / "IJBC" / "meta"
    pairs = np.array(_read_table(meta / "ijbc_template_pair_label.txt"), dtype=int)

    def csv(name: str) -> dict[int, int]:
        lines = (meta / name).read_text().splitlines()
        assert lines[0].startswith("TEMPLATE_ID,SUBJECT_ID,")
        return {int(r.split(",")[0]): int(r.split(",")[1]) for r in lines[1:]}

    g1, g2, probes = csv("ijbc_1N_gallery_G1.csv"), csv("ijbc_1N_gallery_G2.csv"), csv("ijbc_1N_probe_mixed.csv")
    assert not set(g1.values()) & set(g2.values())  # the two galleries hold different subjects
    assert set(g1.values()) | set(g2.values()) == set(probes.values())
    subject = {**g1, **g2, **probes}
    assert not (set(g1) | set(g2)) & set(probes)
    for t1, t2, label in pairs:  # 1:1 pairs are gallery vs probe, genuine iff same subject
        assert t1 in g1 or t1 in g2
        assert t2 in probes
        assert label == int(subject[t1] == subject[t2])
    assert pairs[:, 2].sum() == DEFAULTS.ijb_identities * (DEFAULTS.ijb_templates_per_identity - 1)


# ----------------------------------------------------------------------------- determinism


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path):
    one = write_synthetic_dataset(tmp_path / "a", seed=3, workers=1, **SMALL)
    two = write_synthetic_dataset(tmp_path / "b", seed=3, workers=2, **SMALL)
    assert one["workers"] == 1 and two["workers"] == 2
    digests = _digest(tmp_path / "a")
    assert len(digests) > 15 and digests == _digest(tmp_path / "b")
    other = write_synthetic_dataset(tmp_path / "c", seed=4, workers=1, **SMALL)
    assert other["train"]["images"] == one["train"]["images"]
    assert _digest(tmp_path / "c")["train.rec"] != digests["train.rec"]
    # Rewriting a synthetic directory with fewer sets leaves nothing stale behind.
    write_synthetic_dataset(tmp_path / "a", seed=3, workers=1, **{**SMALL, "cfp_fp_identities": 0, "ijb_identities": 0})
    assert not (tmp_path / "a" / "cfp_fp.bin").exists() and not (tmp_path / "a" / "IJBC").exists()
    assert _digest(tmp_path / "a")["lfw.bin"] == digests["lfw.bin"]


def test_worker_processes_give_the_same_images():
    jobs = [AlignedJob(5, "train", i, ("any",) * 2, 128, 90, 20.0, 1.0) for i in range(3)]
    from facevib.synth.dataset import _run

    assert list(_run(jobs, 2)) == [run_job(job) for job in jobs]


def test_identities_do_not_depend_on_images_per_identity(tmp_path: Path):
    few = {**SMALL, "images_per_identity": 2}
    many = {**SMALL, "images_per_identity": 3, "identities": 4}
    write_synthetic_dataset(tmp_path / "few", seed=1, workers=1, **few)
    write_synthetic_dataset(tmp_path / "many", seed=1, workers=1, **many)
    small, large = (
        IndexedRecordReader(tmp_path / "few" / "train.rec"),
        IndexedRecordReader(tmp_path / "many" / "train.rec"),
    )
    # Identity c's first photos are the same bytes in both sets (keys shift with the count).
    for label in range(3):
        for k in range(2):
            assert unpack(small.read(1 + 2 * label + k))[1] == unpack(large.read(1 + 3 * label + k))[1]
    assert SPLITS["train"] != SPLITS["lfw"]


def test_bad_options_raise(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown synthetic-set option.*lfw_pair\\b"):
        write_synthetic_dataset(tmp_path, lfw_pair=3)
    with pytest.raises(ValueError, match="images_per_identity must be >= 1, got 0"):
        write_synthetic_dataset(tmp_path, identities=2, images_per_identity=0)
    with pytest.raises(ValueError, match="seed"):
        write_synthetic_dataset(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="lfw_identities must be 0 or >= 2"):
        write_synthetic_dataset(tmp_path, lfw_identities=1)


# ----------------------------------------------------------------------------- learnability


def _features(images: np.ndarray) -> np.ndarray:
    small = np.stack([cv2.resize(im, (28, 28), interpolation=cv2.INTER_AREA) for im in images]).astype(np.float32)
    x = small.reshape(len(images), -1)
    x -= x.mean(axis=1, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)


def test_learnable_but_not_trivial(synthetic_dir: Path):
    """Identity is in the pixels, but not trivially.

    Measured on this fixture (seed 0, 24 x 12 training images, default lfw.bin), 10-fold
    accuracy: raw-pixel cosine 0.51 on lfw.bin (lighting, exposure and backgrounds drown
    it); PCA + Fisher LDA ("Fisherfaces") fitted on the training identities 0.65 on the
    unseen lfw.bin identities; nearest class mean on held-out photos of the training
    identities 0.16 (chance 1/24 = 0.04). A tiny 3-block CNN (56x56 input, CosFace) trained
    on 200 x 20 images for 8 CPU minutes reaches 0.93 / 0.65 / 0.80 on lfw / cfp_fp /
    agedb_30 (0.90 / 0.64 / 0.78 after 160 s).
    Too weak nuisances would push the pixel numbers toward 1; identities without a stable
    appearance would push the learned ones to chance.
    """
    data = read_bin(synthetic_dir / "lfw.bin")
    raw = data.images.reshape(len(data.images), -1).astype(np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    pixel_acc = _tenfold_accuracy((raw[0::2] * raw[1::2]).sum(axis=1), data.issame)

    reader = IndexedRecordReader(synthetic_dir / "train.rec")
    count = SYNTH_IDENTITIES * SYNTH_IMAGES_PER_IDENTITY
    records = [unpack(reader.read(k)) for k in range(1, count + 1)]
    labels = np.array([int(head.label) for head, _ in records])
    train = _features(np.stack([_decode(body)[:, :, ::-1] for _, body in records]))

    # Closed set: class means of each identity's first half, classify the second half.
    half = (np.arange(count) % SYNTH_IMAGES_PER_IDENTITY) < SYNTH_IMAGES_PER_IDENTITY // 2
    means = np.stack([train[half & (labels == c)].mean(axis=0) for c in range(SYNTH_IDENTITIES)])
    predicted = (train[~half] @ means.T).argmax(axis=1)
    closed_acc = float((predicted == labels[~half]).mean())

    # Open set: Fisherfaces from the training identities, applied to the lfw.bin identities.
    mean = train.mean(axis=0)
    # PCA through the small Gram matrix, on one BLAS thread: threaded LAPACK crawls on a
    # busy 2-core machine (seconds instead of milliseconds).
    with threadpool_limits(limits=1):
        values, vectors = np.linalg.eigh(((train - mean) @ (train - mean).T).astype(np.float64))
    top = np.argsort(values)[::-1][:60]
    basis = ((train - mean).T @ vectors[:, top] / np.sqrt(values[top])).T
    z = (train - mean) @ basis.T
    within = sum(np.cov(z[labels == c].T) * (np.sum(labels == c) - 1) for c in range(SYNTH_IDENTITIES))
    centres = np.stack([z[labels == c].mean(axis=0) for c in range(SYNTH_IDENTITIES)]) - z.mean(axis=0)
    between = centres.T @ centres * SYNTH_IMAGES_PER_IDENTITY
    with threadpool_limits(limits=1):
        values, vectors = np.linalg.eig(np.linalg.solve(within + 1e-3 * np.eye(len(within)), between))
    lda = np.real(vectors[:, np.argsort(-np.real(values))[: SYNTH_IDENTITIES - 1]])
    test = ((_features(data.images) - mean) @ basis.T) @ lda
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    fisher_acc = _tenfold_accuracy((test[0::2] * test[1::2]).sum(axis=1), data.issame)

    report = f"pixel {pixel_acc:.3f}, closed-set {closed_acc:.3f}, fisher {fisher_acc:.3f}"
    assert pixel_acc < 0.8, f"raw pixels separate lfw.bin too well: nuisances too weak ({report})"
    assert 3.0 / SYNTH_IDENTITIES < closed_acc < 0.9, report
    assert 0.56 < fisher_acc < 0.95, report
