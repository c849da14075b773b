"""``python -m facevib.data pack PHOTOS OUT --detect``: raw photos in, aligned RecordIO out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from detect_support import ASTRONAUT_POINTS, GRACE_POINTS, astronaut, grace_hopper

from facevib.align import estimate_norm, norm_crop
from facevib.data.pack import PackError, pack_folder
from facevib.data.recordio import IndexedRecordReader, unpack
from facevib.detect import load_detector

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "facevib.data", *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)


def _read_pack(prefix: Path) -> tuple[list[int], list[np.ndarray]]:
    reader = IndexedRecordReader(prefix.parent / (prefix.name + ".rec"))
    first_identity = int(unpack(reader.read(0))[0].label[0])
    labels, images = [], []
    for key in range(1, first_identity):
        head, body = unpack(reader.read(key))
        labels.append(int(head.label))
        images.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return labels, images


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """astronaut/: 2 photos; grace/: 2 photos and a blank one; nobody/: noise only."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    _save(root / "astronaut" / "a.png", astronaut())
    _save(root / "astronaut" / "b.jpg", cv2.resize(astronaut(), (384, 384), interpolation=cv2.INTER_AREA))
    _save(root / "grace" / "a.jpg", grace_hopper())
    _save(root / "grace" / "b.png", np.ascontiguousarray(grace_hopper()[60:460, 40:480]))
    _save(root / "grace" / "wall.png", np.full((300, 400, 3), 180, np.uint8))
    _save(root / "nobody" / "noise.png", rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    return root


def test_pack_detect_aligns_photos_and_lists_those_without_a_face(tmp_path, photo_dir):
    result = _cli("pack", photo_dir, tmp_path / "out" / "train", "--detect", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert "packed 4 images of 2 identities (aligned on the largest face found by mtcnn)" in result.stdout
    assert "no face found in 2 of 6 photos" in result.stdout
    assert "1 identities had no photo with a face: nobody" in result.stdout
    listing = tmp_path / "out" / "train.no_face.txt"
    assert listing.read_text().splitlines() == ["grace/wall.png", "nobody/noise.png"]
    assert (tmp_path / "out" / "property").read_text() == "2,112,112"
    assert (tmp_path / "out" / "train.identities.tsv").read_text().splitlines() == ["0\tastronaut", "1\tgrace"]

    labels, crops = _read_pack(tmp_path / "out" / "train")
    assert labels == [0, 0, 1, 1]
    # Each crop is norm_crop on the detector's landmarks of that photo (the packed crop went through
    # JPEG q95: about 3 grey levels on these textured faces), and aligned like the hand-checked points.
    detector = load_detector()
    photos = {
        "astronaut/a.png": (astronaut(), ASTRONAUT_POINTS),
        "astronaut/b.jpg": None,
        "grace/a.jpg": (grace_hopper(), GRACE_POINTS),
        "grace/b.png": None,
    }
    for crop, (rel, hand) in zip(crops, photos.items(), strict=True):
        image = cv2.cvtColor(cv2.imread(str(photo_dir / rel)), cv2.COLOR_BGR2RGB)
        face = detector.detect(image)[0]
        reference = norm_crop(image, face.landmarks)
        assert np.abs(crop.astype(int) - reference.astype(int)).mean() < 4, rel
        if hand is not None:
            # The hand-checked points land within 3 pixels (of 112) of where aligning on them puts them.
            points = np.c_[hand[1], np.ones(5)]
            moved = points @ estimate_norm(face.landmarks).T - points @ estimate_norm(hand[1]).T
            assert np.linalg.norm(moved, axis=1).max() < 3, (rel, moved)


def test_pack_folder_detect_summary(tmp_path):
    small = tmp_path / "small"
    _save(small / "astro" / "face.png", cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA))
    _save(small / "astro" / "wall.png", np.full((120, 160, 3), 60, np.uint8))
    summary = pack_folder(small, tmp_path / "out" / "train", detector=load_detector(), threads=1, progress=False)
    found = summary["detection"]
    assert summary["images"] == 1 and summary["identities"] == 1 and summary["aligned"]
    assert found["photos"] == 2 and found["with_face"] == 1 and found["without_face"] == 1
    assert found["several_faces"] == 0 and found["dropped_identities"] == []
    assert Path(found["no_face_list"]).read_text().splitlines() == ["astro/wall.png"]


def test_pack_detect_user_errors(tmp_path, photo_dir):
    empty = tmp_path / "faceless"
    _save(empty / "x" / "wall.png", np.full((100, 100, 3), 90, np.uint8))
    with pytest.raises(PackError, match="no face found in any of the 1 photos"):
        pack_folder(empty, tmp_path / "o" / "t", detector=load_detector(), progress=False)
    assert not (tmp_path / "o" / "t.rec").exists()
    broken = tmp_path / "broken"
    _save(broken / "x" / "ok.png", cv2.resize(astronaut(), (128, 128), interpolation=cv2.INTER_AREA))
    (broken / "x" / "bad.jpg").write_bytes(b"not a jpeg")
    result = _cli("pack", broken, tmp_path / "o2" / "t", "--detect")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "x/bad.jpg: not a decodable image" in result.stderr
    result = _cli("pack", photo_dir, tmp_path / "o3" / "t", "--detect", "--detector", tmp_path / "det_none.onnx")
    assert result.returncode == 2 and "det_none.onnx" in result.stderr and "Traceback" not in result.stderr
    result = _cli("pack", photo_dir, tmp_path / "o4" / "t", "--detector", "mtcnn", "--min-face-size", "40")
    assert result.returncode == 2 and "only apply with --detect" in result.stderr
    result = _cli("pack", photo_dir, tmp_path / "o5" / "t", "--detect", "--landmarks", tmp_path / "l.txt")
    assert result.returncode == 2 and "not both" in result.stderr
