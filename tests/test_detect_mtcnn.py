"""The built-in MTCNN detector: real photos, pasted faces, negatives, and its ONNX files vs PyTorch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detect_support import (
    ASTRONAUT_POINTS,
    GRACE_POINTS,
    astronaut,
    grace_hopper,
    interocular,
    iou,
    paste_faces,
)

from facevib.detect import Face, load_detector
from facevib.detect.convert import NET_NAMES, WHEEL_NAME, convert, read_wheel_weights
from facevib.detect.mtcnn import MTCNN, weights_dir
from facevib.detect.mtcnn_torch import build_nets

ROOT = Path(__file__).resolve().parents[1]
# `make detector-wheel` (and `make test`, `make detector-weights`) fetch the wheel here; FACEVIB_MTCNN_WHEEL overrides.
WHEEL = Path(os.environ.get("FACEVIB_MTCNN_WHEEL", ROOT / "build" / WHEEL_NAME))
# Largest landmark error allowed, as a fraction of the hand-measured distance between the eyes
# (0.1 is the usual "failure" cut of normalised-mean-error landmark benchmarks), and at least
# MIN_POINT_SLACK pixels: on a 35-pixel face a tenth of the eye distance is under 2 pixels.
MAX_POINT_ERROR = 0.1
MIN_POINT_SLACK = 2.5
# Pasted faces are shrunk down to 45 pixels wide; MTCNN's worst point there (Grace Hopper's
# right eye behind her glasses, already 0.065 off at full size) reaches 0.13.
MAX_POINT_ERROR_SMALL = 0.15


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN(threads=1)


def _onnx_state_dicts() -> dict[str, dict[str, torch.Tensor]]:
    """The committed ONNX files' initializers as PyTorch state dicts (PReLU slopes back to 1-D)."""
    import onnx
    from onnx import numpy_helper

    states = {}
    for net in NET_NAMES:
        model = onnx.load(str(weights_dir() / f"{net}.onnx"))
        state = {}
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init).copy()
            state[init.name] = torch.from_numpy(array.reshape(-1) if init.name.startswith("prelu") else array)
        states[net] = state
    return states


class TorchNets:
    """The PyTorch reference networks behind the same interface as the ONNX Runtime sessions."""

    def __init__(self, nets: dict[str, torch.nn.Module]) -> None:
        self._nets = nets

    def _run(self, net: str, batch: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [out.numpy() for out in self._nets[net](torch.from_numpy(batch))]

    def pnet(self, batch):
        return self._run("pnet", batch)

    def rnet(self, batch):
        return self._run("rnet", batch)

    def onet(self, batch):
        return self._run("onet", batch)


def _check_points(face: Face, expected: np.ndarray, label: str, tolerance: float = MAX_POINT_ERROR) -> None:
    errors = np.linalg.norm(face.landmarks - expected, axis=1)
    allowed = max(tolerance * interocular(expected), MIN_POINT_SLACK)
    assert errors.max() < allowed, f"{label}: landmark errors {errors.round(2)} px, allowed {allowed:.2f}"
    # Every point lies in the box.
    x1, y1, x2, y2 = face.bbox
    assert ((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2)).all(), label
    assert ((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2)).all(), label


@pytest.mark.parametrize("name", ["astronaut", "grace"])
def test_one_face_with_hand_checked_landmarks(detector, name):
    photo, points = (astronaut(), ASTRONAUT_POINTS) if name == "astronaut" else (grace_hopper(), GRACE_POINTS)
    faces = detector.detect(photo)
    assert len(faces) == 1, [f.to_dict() for f in faces]
    face = faces[0]
    assert face.score > 0.99
    _check_points(face, points, name)
    # The eyes are about a third of a face box apart (MTCNN boxes span brow to chin).
    assert 0.3 < interocular(points) / face.width < 0.6


def test_pasted_faces_all_found_with_their_boxes(detector):
    placements = [
        ("astronaut", 60, (40, 40)),
        ("astronaut", 140, (200, 300)),
        ("astronaut", 300, (900, 50)),
        ("grace", 90, (450, 80)),
        ("grace", 200, (600, 420)),
        ("grace", 45, (100, 600)),
    ]
    canvas, pasted = paste_faces(720, 1280, placements)
    # The box each face gets alone in its photo, moved and scaled like the paste.
    alone = {"astronaut": detector.detect(astronaut())[0], "grace": detector.detect(grace_hopper())[0]}
    regions = {"astronaut": (150, 40), "grace": (150, 100)}
    faces = detector.detect(canvas)
    assert len(faces) == len(placements), [f.bbox.tolist() for f in faces]
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True), "faces must come largest first"
    for (name, _, (px, py)), where in zip(placements, pasted, strict=True):
        expected_box = (alone[name].bbox - np.tile(regions[name], 2)) * where.scale + [px, py, px, py]
        match = max(faces, key=lambda f: iou(f.bbox, expected_box))
        assert iou(match.bbox, expected_box) > 0.6, (name, where.scale, match.bbox, expected_box)
        _check_points(match, where.points, f"{name} at scale {where.scale:.2f}", MAX_POINT_ERROR_SMALL)
    two = detector.detect(canvas, max_faces=2)
    assert [f.bbox.tolist() for f in two] == [f.bbox.tolist() for f in faces[:2]]
    # min_face_size: only faces at least that large are looked for.
    big = detector.detect(canvas, min_face_size=150)
    expected_big = [f for f in faces if f.size >= 150]
    assert 1 <= len(big) == len(expected_big) < len(faces)
    for got, want in zip(big, expected_big, strict=True):
        assert iou(got.bbox, want.bbox) > 0.8


@pytest.mark.parametrize("kind", ["black", "white", "uniform_noise", "smooth_noise", "tiny"])
def test_no_face_in_blank_and_noise_images(detector, kind):
    rng = np.random.default_rng(7)
    image = {
        "black": lambda: np.zeros((480, 640, 3), np.uint8),
        "white": lambda: np.full((480, 640, 3), 255, np.uint8),
        "uniform_noise": lambda: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "smooth_noise": lambda: _smooth_noise(rng),
        "tiny": lambda: astronaut()[::64, ::64].copy(),  # 8x8: smaller than P-Net's window
    }[kind]()
    assert detector.detect(image) == []


def _smooth_noise(rng: np.random.Generator) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3)


def test_bad_inputs_and_options_name_the_problem(detector):
    photo = astronaut()
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(photo.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detector.detect(photo[..., 0])
    with pytest.raises(ValueError, match="max_faces"):
        detector.detect(photo, max_faces=0)
    with pytest.raises(ValueError, match="threshold"):
        detector.detect(photo, threshold=1.5)
    with pytest.raises(ValueError, match="min_face_size"):
        detector.detect(photo, min_face_size=-3)
    with pytest.raises(FileNotFoundError, match="no_such_det.onnx"):
        load_detector("no_such_det.onnx")
    # A threshold above the face's score removes it.
    assert detector.detect(photo, threshold=1.0) == []


def test_onnx_nets_equal_the_pytorch_definition():
    """The committed ONNX graphs vs the PyTorch modules carrying the same weights, on the same input."""
    from facevib.detect.mtcnn import OrtNets

    torch_nets = TorchNets(build_nets(_onnx_state_dicts()))
    ort_nets = OrtNets(threads=1)
    rng = np.random.default_rng(0)
    for net, shape in [
        ("pnet", (2, 3, 37, 53)),
        ("pnet", (1, 3, 12, 12)),
        ("rnet", (9, 3, 24, 24)),
        ("onet", (5, 3, 48, 48)),
    ]:
        batch = rng.uniform(-1, 1, shape).astype(np.float32)
        ours = getattr(ort_nets, net)(batch)
        reference = getattr(torch_nets, net)(batch)
        assert len(ours) == len(reference)
        for a, b in zip(ours, reference, strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"{net} {shape}")


def test_whole_cascade_same_with_pytorch_nets(detector):
    reference = MTCNN(nets=TorchNets(build_nets(_onnx_state_dicts())))
    canvas, _ = paste_faces(400, 600, [("astronaut", 120, (20, 30)), ("grace", 160, (300, 100))])
    for image in (grace_hopper(), canvas):
        ours, theirs = detector.detect(image), reference.detect(image)
        assert len(ours) == len(theirs) >= 1
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a.bbox, b.bbox, atol=1e-2)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-2)
            assert abs(a.score - b.score) < 1e-4


@pytest.mark.skipif(
    not WHEEL.is_file(), reason=f"{WHEEL} not fetched (`make detector-wheel` fetches it; `make test` does)"
)
def test_committed_onnx_files_are_reproduced_from_the_wheel(tmp_path):
    """The converter rebuilds byte-identical files, and the wheel's PyTorch nets give the same outputs."""
    from facevib.detect.__main__ import main

    assert main(["convert", "--wheel", str(WHEEL), "--out", str(tmp_path)]) == 0
    written = [tmp_path / name for name in ("pnet.onnx", "rnet.onnx", "onet.onnx", "LICENSE-facenet-pytorch.md")]
    assert written == convert(WHEEL, tmp_path)
    for path in written:
        assert path.read_bytes() == (weights_dir() / path.name).read_bytes(), f"{path.name} differs from the wheel's"
    weights, _, _ = read_wheel_weights(WHEEL)
    wheel_nets = TorchNets(build_nets({n: {k: torch.from_numpy(v) for k, v in w.items()} for n, w in weights.items()}))
    from facevib.detect.mtcnn import OrtNets

    batch = np.random.default_rng(1).uniform(-1, 1, (3, 3, 48, 48)).astype(np.float32)
    for a, b in zip(OrtNets(threads=1).onet(batch), wheel_nets.onet(batch), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_describe_names_the_files(detector):
    info = detector.describe()
    assert info["name"] == "mtcnn" and info["min_face_size"] == 20.0 and info["stage_thresholds"] == [0.6, 0.7, 0.7]
    assert all(Path(path).is_file() for path in info["files"].values())
    assert info["providers"] == ["CPUExecutionProvider"]


def test_cli_detect_prints_faces_and_names_bad_files(tmp_path, capsys):
    import json

    import cv2

    from facevib.detect.__main__ import main

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    assert main(["detect", str(photo), "--max-faces", "1"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert result["photo"] == str(photo) and len(result["faces"]) == 1
    np.testing.assert_allclose(
        result["faces"][0]["landmarks"], ASTRONAUT_POINTS, atol=0.1 * interocular(ASTRONAUT_POINTS)
    )
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"no image")
    assert main(["detect", str(junk)]) == 2
    assert "junk.jpg" in capsys.readouterr().err
    assert main(["detect", str(photo), "--detector", str(tmp_path / "det_none.onnx")]) == 2
    assert "det_none.onnx" in capsys.readouterr().err
