"""``python -m facevib.data`` and ``python -m facevib.synth`` end to end (subprocess): synth, pack, inspect, and user errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facevib.align import norm_crop, three_point_landmarks
from facevib.data.bins import read_bin
from facevib.data.recordio import IndexedRecordReader, unpack
from facevib.synth import write_synthetic_dataset
from facevib.synth.params import sample_conditions, sample_identity
from facevib.synth.render import render_face

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path | None = None, module: str = "facevib.data") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def _synth(*args: str) -> subprocess.CompletedProcess:
    return _cli(*args, module="facevib.synth")


def _assert_user_error(result: subprocess.CompletedProcess, *fragments: str, prog: str = "facevib.data") -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"python -m {prog}"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def loose_faces(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """3 identities x 3 rendered loose crops (PNG, 160 px) and their exact landmarks."""
    root = tmp_path_factory.mktemp("loose")
    images, landmarks = {}, {}
    for person in range(3):
        ident = sample_identity(np.random.default_rng([42, person]))
        (root / f"person_{person}").mkdir()
        for shot in range(3):
            cond = sample_conditions(np.random.default_rng([43, person, shot]), ident, yaw_sigma=10.0, difficulty=0.3)
            image, points, _ = render_face(ident, cond, 160)
            rel = f"person_{person}/shot_{shot}.png"
            cv2.imwrite(str(root / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            images[rel], landmarks[rel] = image, points
    return root, images, landmarks


def _read_pack(prefix: Path) -> tuple[list[int], list[np.ndarray]]:
    reader = IndexedRecordReader(prefix.parent / (prefix.name + ".rec"))
    header = unpack(reader.read(0))[0]
    first_identity = int(header.label[0])
    labels, images = [], []
    for key in range(1, first_identity):
        head, body = unpack(reader.read(key))
        labels.append(int(head.label))
        images.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return labels, images


def test_pack_with_landmarks_aligns_like_norm_crop(tmp_path: Path, loose_faces):
    root, images, landmarks = loose_faces
    lines = ["# rendered test faces: path x1 y1 ... x5 y5 [score]"]
    for n, (rel, points) in enumerate(sorted(landmarks.items())):
        if n == 1:  # IJB's *_name_5pts_score.txt lines work as they are
            lines.append(f"{rel} " + " ".join(f"{v:.4f}" for v in points.ravel()) + " 0.998")
        elif n == 2:  # the three-point form: eyes and mouth centre
            lines.append(f"{rel} " + " ".join(f"{v:.4f}" for v in three_point_landmarks(points).ravel()))
        else:
            lines.append(f"{rel} " + " ".join(f"{v:.4f}" for v in points.ravel()))
    (tmp_path / "landmarks.txt").write_text("\n".join(lines) + "\n")
    result = _cli("pack", root, tmp_path / "out" / "faces", "--landmarks", tmp_path / "landmarks.txt", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 9 and summary["identities"] == 3 and summary["aligned"]
    labels, packed = _read_pack(tmp_path / "out" / "faces")
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for n, rel in enumerate(sorted(images)):
        points = three_point_landmarks(landmarks[rel]) if n == 2 else landmarks[rel]
        reference = norm_crop(images[rel], np.round(points, 4))
        assert packed[n].shape == (112, 112, 3)
        assert np.abs(packed[n].astype(int) - reference.astype(int)).mean() < 3  # JPEG q95
    assert (tmp_path / "out" / "property").read_text() == "3,112,112"
    assert (tmp_path / "out" / "faces.identities.tsv").read_text().splitlines() == [
        "0\tperson_0",
        "1\tperson_1",
        "2\tperson_2",
    ]


def test_pack_aligned_crops_then_inspect(tmp_path: Path, loose_faces):
    root, images, landmarks = loose_faces
    aligned = tmp_path / "aligned"
    for rel, image in images.items():
        (aligned / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str((aligned / rel).with_suffix(".jpg")), cv2.cvtColor(norm_crop(image, landmarks[rel]), cv2.COLOR_RGB2BGR)
        )
    (aligned / "person_1" / "notes.txt").write_text("not an image, ignored by extension")
    result = _cli("pack", aligned, tmp_path / "rec" / "train", "--quality", "90")
    assert result.returncode == 0, result.stderr
    assert "packed 9 images of 3 identities" in result.stdout

    result = _cli("inspect", tmp_path / "rec", "--json", "--sheet", tmp_path / "sheet.png", "--per-identity", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.split("\ncontact sheet")[0])
    assert report["images"] == 9 and report["identities"] == 3 and report["records"] == 13
    assert (report["label_min"], report["label_max"]) == (0, 2)
    assert report["per_identity"] == {"min": 3, "median": 3.0, "max": 3}
    assert report["layout"].startswith("MS1M header") and report["problems"] == []
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (3 * 116 + 4, 2 * 116 + 4, 3)


def test_synth_cli_equals_the_library_and_inspects(tmp_path: Path):
    options = {
        "identities": 3,
        "images_per_identity": 2,
        "seed": 7,
        "lfw_identities": 4,
        "lfw_pairs": 6,
        "cfp_fp_identities": 0,
        "agedb_30_identities": 2,
        "agedb_30_pairs": 2,
        "bin_images_per_identity": 2,
        "ijb_identities": 2,
        "ijb_templates_per_identity": 2,
        "ijb_max_media": 2,
        "ijb_max_frames": 1,
        "workers": 1,
    }
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    result = _synth("--out", tmp_path / "cli", *flags)
    assert result.returncode == 0, result.stderr
    assert "train.rec 6 images of 3 identities" in result.stdout and "lfw.bin: 6 pairs" in result.stdout
    write_synthetic_dataset(tmp_path / "lib", **options)
    for name in ("train.rec", "train.idx", "property", "lfw.bin", "agedb_30.bin", "IJBC/meta/ijbc_name_5pts_score.txt"):
        assert (
            hashlib.sha256((tmp_path / "cli" / name).read_bytes()).digest()
            == hashlib.sha256((tmp_path / "lib" / name).read_bytes()).digest()
        ), name
    assert not (tmp_path / "cli" / "cfp_fp.bin").exists()

    result = _cli("inspect", tmp_path / "cli" / "lfw.bin", "--sheet", tmp_path / "pairs.png")
    assert result.returncode == 0, result.stderr
    assert "pairs           6 (3 same, 3 different)" in result.stdout
    # --identities 8 (default) pairs: the first 4 same and 4 different, here all 3 + 3, two photos a row.
    sheet = cv2.imread(str(tmp_path / "pairs.png"))
    assert sheet.shape == (6 * 116 + 4, 2 * 116 + 4, 3)
    data = read_bin(tmp_path / "cli" / "lfw.bin")
    order = np.r_[np.flatnonzero(data.issame), np.flatnonzero(~data.issame)]
    for row, pair in enumerate(order):
        for column in (0, 1):
            y, x = 4 + row * 116, 4 + column * 116
            cell = sheet[y + 20 : y + 112, x : x + 112]  # below the caption
            expected = cv2.cvtColor(data.images[2 * pair + column], cv2.COLOR_RGB2BGR)[20:]
            np.testing.assert_array_equal(cell, expected, err_msg=f"sheet row {row}, photo {column}")


def test_user_errors_are_one_line(tmp_path: Path, loose_faces):
    root, images, landmarks = loose_faces
    _assert_user_error(_cli("pack", tmp_path / "nowhere", tmp_path / "o"), "image folder not found", "nowhere")

    bad = tmp_path / "bad_landmarks.txt"
    rel = sorted(landmarks)[0]
    bad.write_text(f"{rel} " + " ".join(f"{v:.2f}" for v in landmarks[rel].ravel()) + "\nperson_0/shot_1.png 1 2 3\n")
    _assert_user_error(_cli("pack", root, tmp_path / "o", "--landmarks", bad), f"{bad}:2:", "4 fields")

    bad.write_text(f"{rel} 1 2 3 4 5 6 7 8 9 ten\n")
    _assert_user_error(_cli("pack", root, tmp_path / "o", "--landmarks", bad), f"{bad}:1:", "must be numbers")

    partial = tmp_path / "partial.txt"
    partial.write_text(f"{rel} " + " ".join(f"{v:.2f}" for v in landmarks[rel].ravel()) + "\n")
    _assert_user_error(
        _cli("pack", root, tmp_path / "o", "--landmarks", partial), "8 of 9 images have no landmarks line"
    )

    # Not aligned and no landmarks: every image is reported, nothing is written.
    _assert_user_error(_cli("pack", root, tmp_path / "o" / "x"), "9 of 9 images", "expected an aligned 112x112 crop")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("x*"))

    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "b").mkdir()
    cv2.imwrite(str(broken / "a" / "ok.png"), np.zeros((112, 112, 3), np.uint8))
    (broken / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    cv2.imwrite(str(broken / "b" / "ok.png"), np.zeros((112, 112, 3), np.uint8))
    result = _cli("pack", broken, tmp_path / "br" / "train")
    _assert_user_error(result, "1 of 3 images", "b/corrupt.jpg", "not a decodable image")
    assert not (tmp_path / "br" / "train.rec").exists() and not (tmp_path / "br" / "property").exists()

    _assert_user_error(_cli("inspect", tmp_path / "nothing_here"), "no RecordIO file")
    _assert_user_error(
        _synth("--out", tmp_path / "s", "--images-per-identity", "0"),
        "images_per_identity must be >= 1",
        prog="facevib.synth",
    )
    argparse_error = _synth("--identities", "3")
    assert (
        argparse_error.returncode == 2 and "--out" in argparse_error.stderr and "Traceback" not in argparse_error.stderr
    )


def test_inspect_reads_both_layouts_of_the_mxnet_fixture(mxnet_fixture_dir: Path):
    from facevib.data.inspect import summarize_rec

    # tests/fixtures/mxnet_rec/README.md: 20 images of 4 identities (5 each), written by mxnet.
    with_header = summarize_rec(mxnet_fixture_dir)
    assert with_header.layout.startswith("MS1M header: record 0 labels [21, 25]")
    plain = summarize_rec(mxnet_fixture_dir / "no_header" / "train")
    assert plain.layout.startswith("plain records")
    for summary in (with_header, plain):
        assert (summary.images, summary.identities, summary.label_min, summary.label_max) == (20, 4, 0, 3)
        assert summary.per_identity == (5, 5, 5.0) and summary.problems == []
        np.testing.assert_array_equal(summary.labels, np.repeat(np.arange(4), 5))
