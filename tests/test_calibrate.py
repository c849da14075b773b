"""Single-image calibration: every cross-identity pair, the exact threshold on one half of the
identities, its rates on the other half; the same answer from a RecordIO set and an image folder."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facevib.data.datasets import MXFaceDataset
from facevib.data.transforms import images_to_tensor
from facevib.eval.embed import Embedder
from facevib.export.calibrate import calibrate, held_out_rates, identity_pair_scores, split_halves
from facevib.export.labelled import calibration_kind, sample_identities
from facevib.models import create_model
from facevib.onnx_meta import Calibration

TINY = {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 32), "embedding_dim": 32}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(11)
    return create_model("r18", **TINY).eval()


@pytest.fixture(scope="module")
def rec_only(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic RecordIO set alone (the full folder's .bin files would win)."""
    folder = tmp_path_factory.mktemp("rec")
    for name in ("train.rec", "train.idx", "property"):
        (folder / name).symlink_to(synthetic_dir / name)
    return folder


def _unit(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(images_to_tensor(images)).double().numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_identity_pair_scores_cover_every_pair_once() -> None:
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(1500, 8))  # more rows than one block of the similarity matrix
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    identities = rng.integers(0, 40, size=1500)
    scores, same = identity_pair_scores(unit, identities)
    rows, cols = np.triu_indices(1500, k=1)  # numpy's own enumeration of i < j, row-major
    np.testing.assert_allclose(scores, np.einsum("ij,ij->i", unit[rows], unit[cols]), atol=1e-12)
    np.testing.assert_array_equal(same, identities[rows] == identities[cols])


def test_sample_identities_keeps_whole_identities_up_to_the_cap() -> None:
    identities = np.repeat(np.arange(50), 30)  # 50 identities of 30 images
    rows = sample_identities(identities, max_images=200, max_per_identity=20, seed=3)
    counts = np.bincount(identities[rows], minlength=50)
    assert rows.size == 200 and len(set(rows.tolist())) == 200
    assert sorted(counts[counts > 0].tolist()) == [20] * 10  # 10 identities, 20 images each


def test_held_out_rates_count_strictly_above_the_threshold() -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.2, 0.8, 0.5, 0.1])
    same = np.array([True, True, False, False, True, False, False])
    held = held_out_rates(scores, same, threshold=0.5, identities=3)
    assert (held.false_accepts, held.impostor_pairs, held.true_accepts, held.genuine_pairs) == (0, 4, 2, 3)
    assert held.fpr == 0.0 and held.tpr == pytest.approx(2 / 3)
    # Wilson's upper end with no false accept out of n is z^2 / (n + z^2) (a known closed form).
    z2 = 1.959963984540054**2
    assert held.fpr_interval == (0.0, pytest.approx(z2 / (4 + z2)))
    assert held.tpr_interval[0] < 2 / 3 < held.tpr_interval[1]


def test_calibration_equals_a_brute_force_reference(model: torch.nn.Module, rec_only: Path) -> None:
    embedder = Embedder.from_module(model, device="cpu", batch_size=50)
    target = 0.01
    cal = calibrate(embedder, rec_only, target, progress=False)

    dataset = MXFaceDataset(rec_only, train=False, normalize=False)
    images = np.stack([dataset[i][0].permute(1, 2, 0).numpy() for i in range(len(dataset))])
    labels = np.asarray(dataset.labels)
    unit = _unit(model, images)
    first, second = split_halves(np.unique(labels), seed=0)

    def pairs(members: np.ndarray) -> tuple[list[float], list[float]]:
        rows = [i for i in range(len(labels)) if labels[i] in set(members.tolist())]
        genuine, impostor = [], []
        for i, j in itertools.combinations(rows, 2):
            (genuine if labels[i] == labels[j] else impostor).append(float(unit[i] @ unit[j]))
        return genuine, impostor

    genuine, impostor = pairs(first)
    allowed = math.floor(target * len(impostor))
    threshold = sorted(impostor, reverse=True)[allowed]
    assert cal.protocol == "single_image" and cal.single_image and cal.resolved
    assert (cal.impostor_pairs, cal.genuine_pairs) == (len(impostor), len(genuine))
    assert cal.threshold == pytest.approx(threshold, abs=1e-6)
    assert cal.fpr == pytest.approx(sum(s > threshold for s in impostor) / len(impostor), abs=1.5 / len(impostor))
    assert cal.tpr == pytest.approx(sum(s > threshold for s in genuine) / len(genuine), abs=1.5 / len(genuine))

    held_genuine, held_impostor = pairs(second)
    held = cal.holdout
    assert held is not None and held.identities == len(second)
    assert (held.impostor_pairs, held.genuine_pairs) == (len(held_impostor), len(held_genuine))
    assert abs(held.false_accepts - sum(s > threshold for s in held_impostor)) <= 1  # float32 vs float64 ties
    assert abs(held.true_accepts - sum(s > threshold for s in held_genuine)) <= 1
    assert held.fpr_interval[0] <= held.fpr <= held.fpr_interval[1]

    # The metadata round trip keeps every field, the held-out half included.
    assert Calibration.from_dict(_json_round_trip(cal)) == cal


def _json_round_trip(cal: Calibration) -> dict:
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(cal)))


def test_an_image_folder_gives_the_recordio_answer(model: torch.nn.Module, rec_only: Path, tmp_path: Path) -> None:
    dataset = MXFaceDataset(rec_only, train=False, normalize=False)
    for i in range(len(dataset)):
        image, label = dataset[i]
        folder = tmp_path / f"id{label:04d}"  # sorted folder names keep the identities' order
        folder.mkdir(exist_ok=True)
        rgb = image.permute(1, 2, 0).numpy()
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # lossless
    assert calibration_kind(tmp_path) == ("folder", None)
    embedder = Embedder.from_module(model, device="cpu")
    from_folder = calibrate(embedder, tmp_path, 0.01, progress=False)
    from_rec = calibrate(embedder, rec_only, 0.01, progress=False)
    assert from_folder.source.startswith("image folder") and from_rec.source.startswith("RecordIO")
    assert from_folder.threshold == pytest.approx(from_rec.threshold, abs=1e-6)
    assert from_folder.holdout == from_rec.holdout


def test_calibration_refuses_what_it_cannot_measure(model: torch.nn.Module, rec_only: Path, tmp_path: Path) -> None:
    embedder = Embedder.from_module(model, device="cpu")
    with pytest.raises(ValueError, match="template protocol needs an IJB-B/C folder; .* holds a recordio set"):
        calibrate(embedder, rec_only, 0.01, protocol="template", progress=False)
    with pytest.raises(ValueError, match="protocol must be one of single_image, template, got 'pairs'"):
        calibrate(embedder, rec_only, 0.01, protocol="pairs", progress=False)
    few = tmp_path / "few"
    for identity in range(3):
        (few / f"p{identity}").mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(few / f"p{identity}" / f"{k}.png"), np.full((112, 112, 3), 40 * identity + k, np.uint8))
    with pytest.raises(ValueError, match="3 identities; single-image calibration needs at least 4"):
        calibrate(embedder, few, 0.01, progress=False)
    with pytest.raises(FileNotFoundError, match="no identity sub-folders"):
        calibrate(embedder, few / "p0", 0.01, progress=False)


def test_metadata_without_a_protocol_reads_as_template() -> None:
    """Files written before the field existed: the server must not apply their threshold to
    single images, so they read as template calibrations; a wrong protocol names the key."""
    from facevib.onnx_meta import MetadataError

    old = {"threshold": 0.5, "target_fpr": 1e-4, "fpr": 0.0, "tpr": 0.9, "impostor_pairs": 10}
    old |= {"genuine_pairs": 5, "resolved": False, "source": "ijb:IJBC"}
    assert Calibration.from_dict(old).protocol == "template" and not Calibration.from_dict(old).single_image
    with pytest.raises(MetadataError, match="facevib.calibration.protocol: expected one of single_image, template"):
        Calibration.from_dict(old | {"protocol": "templates"})
    with pytest.raises(MetadataError, match="facevib.calibration.holdout: missing field"):
        Calibration.from_dict(old | {"protocol": "single_image", "holdout": {"fpr": 0.0}})


# ---------------------------------------------------------------- IJB without its 1:N files


def test_template_pair_identities_are_the_components_of_the_genuine_pairs() -> None:
    from facevib.data.ijb import IJBFormatError
    from facevib.export.labelled import template_pair_identities

    # Worked by hand: genuine 1-2, 2-3, 4-5 make {1, 2, 3} and {4, 5}; 6 is in an impostor pair only.
    pairs = np.array([[1, 2], [2, 3], [5, 4], [1, 4], [6, 1], [3, 4]])
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    derived = template_pair_identities(pairs, labels)
    assert derived.templates.tolist() == [1, 2, 3, 4, 5, 6]
    assert derived.identities.tolist() == [1, 1, 1, 4, 4, 6]
    # Identity pairs {1,4}, {1,6}, {4,6}: impostor labels confirm {1,4} (twice) and {1,6}.
    assert (derived.components, derived.component_pairs, derived.covered) == (3, 3, 2)
    with pytest.raises(IJBFormatError, match=r"here: 1 impostor pair\(s\) join .* e.g. templates 3 and 1"):
        template_pair_identities(np.vstack([pairs, [[3, 1]]]), np.append(labels, False), where="here")


@pytest.fixture(scope="module")
def ijb_without_1n(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic IJB-C folder with its 1:N gallery and probe files removed."""
    source = synthetic_dir / "IJBC"
    folder = tmp_path_factory.mktemp("ijb_no_1n") / "IJBC"
    (folder / "meta").mkdir(parents=True)
    (folder / "loose_crop").symlink_to(source / "loose_crop")
    for path in (source / "meta").iterdir():
        if "_1N_" not in path.name:
            (folder / "meta" / path.name).symlink_to(path)
    return folder


def _subjects_from_1n_files(ijb: Path) -> dict[int, int]:
    """template -> subject, read here from the CSV files (TEMPLATE_ID,SUBJECT_ID,...)."""
    subjects = {}
    for path in sorted((ijb / "meta").glob("ijbc_1N_*.csv")):
        for line in path.read_text().splitlines()[1:]:
            template, subject = line.split(",")[:2]
            subjects[int(template)] = int(subject)
    return subjects


def test_ijb_without_1n_files_derives_the_subjects_and_their_threshold(
    model: torch.nn.Module, synthetic_dir: Path, ijb_without_1n: Path
) -> None:
    from facevib.export.labelled import read_labelled_images

    full = synthetic_dir / "IJBC"
    assert not list((ijb_without_1n / "meta").glob("*_1N_*"))
    # The derived identities partition the images exactly as the 1:N files' subjects do.
    derived = read_labelled_images(ijb_without_1n)
    templates = [int(line.split()[1]) for line in (full / "meta" / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    truth = _subjects_from_1n_files(full)
    assert len(derived.identities) == len(templates) and derived.unlabelled == 0
    pairs = set(zip(derived.identities.tolist(), [truth[t] for t in templates], strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(set(truth.values()))
    assert "identities derived from the 1:1 pair labels" in derived.source

    # The threshold: the derived one (calibrate, seed 0) against the 1:N one over K other random
    # identity splits (seeds 1..K, each the threshold of one half's pairs, computed here from
    # the 1:N subjects). Every one is the same quantile of a random half of the same people, so
    # they differ by split noise only: the derived one must lie within 4 standard deviations of
    # the 1:N thresholds' spread, widened by sqrt(1 + 1/K) for the uncertainty of their mean.
    embedder = Embedder.from_module(model, device="cpu", batch_size=64)
    target = 0.01
    without = calibrate(embedder, ijb_without_1n, target, progress=False)
    assert without.resolved and without.protocol == "single_image" and "no 1:N files" in without.source
    faces = read_labelled_images(full)
    assert "subjects from the 1:N files" in faces.source
    unit = _unit(model, faces.images)
    with_1n = []
    for seed in range(1, 9):
        first, _ = split_halves(np.unique(faces.identities), seed)
        rows = np.flatnonzero(np.isin(faces.identities, first))
        scores, same = identity_pair_scores(unit[rows], faces.identities[rows])
        impostor = np.sort(scores[~same])[::-1]
        with_1n.append(impostor[math.floor(target * impostor.size)])  # accept iff > threshold
    with_1n = np.array(with_1n)
    spread = with_1n.std(ddof=1) * math.sqrt(1 + 1 / len(with_1n))
    assert spread > 0
    assert abs(without.threshold - with_1n.mean()) <= 4 * spread, (without.threshold, with_1n.tolist())
