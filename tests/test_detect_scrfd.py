"""The SCRFD plug-in's decoder, on ONNX graphs built here with insightface's det_*.onnx layout.

No SCRFD model file can be had offline, so these tests build small ONNX graphs with the same
input and outputs (1x3x640x640 in; scores, box distances and keypoints for strides 8, 16, 32,
two anchors per location) whose outputs encode faces at known positions, and check that the
detector finds exactly those faces in the photo's coordinates. One score is not a constant
but the normalised red value of one input pixel, which pins down the preprocessing (RGB,
``(x - 127.5) / 128``, top-left letterbox).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facevib.detect import load_detector
from facevib.detect.scrfd import SCRFD

STRIDES = (8, 16, 32)
SIZE = 640
# The probe face's score is input[0, 0, PROBE_Y, PROBE_X] (red channel after normalisation).
PROBE_X, PROBE_Y = 10, 10


def _anchor(stride: int, row: int, col: int, anchor: int) -> int:
    return (row * (SIZE // stride) + col) * 2 + anchor


# (stride, row, col, anchor, score, distances l t r b, keypoint offsets) in stride units.
# Score None: the probe. "dup" overlaps "a" with a lower score (NMS removes it); "low" is under 0.5.
FACES = {
    "a": (8, 20, 30, 1, 0.9, (5, 6, 5, 7), (-2.5, -2, 2.5, -2, 0, 1, -2, 4, 2, 4)),
    "dup": (8, 20, 31, 0, 0.8, (5, 6, 5, 7), (-2.5, -2, 2.5, -2, 0, 1, -2, 4, 2, 4)),
    "b": (32, 5, 12, 0, 0.7, (3, 3, 3, 3), (-1, -1, 1, -1, 0, 0, -1, 1.5, 1, 1.5)),
    "low": (16, 3, 3, 1, 0.3, (1, 1, 1, 1), (0,) * 10),
    "probe": (16, 15, 5, 0, None, (2, 2, 2, 2), (-1, -0.5, 1, -0.5, 0, 0.2, -0.8, 1, 0.8, 1)),
}


def expected_face(name: str, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The box and landmarks of ``FACES[name]`` in the photo (the 640 canvas divided by ``factor``)."""
    stride, row, col, _, _, dist, kps = FACES[name]
    centre = np.array([col * stride, row * stride], dtype=np.float64)
    d = np.array(dist, dtype=np.float64) * stride
    box = np.concatenate([centre - d[:2], centre + d[2:]])
    points = centre + np.array(kps, dtype=np.float64).reshape(5, 2) * stride
    return box / factor, points / factor


def build_scrfd(
    path: Path,
    *,
    batched_outputs: bool = False,
    dynamic_input: bool = False,
    keypoints: bool = True,
    score_width: int = 1,
) -> Path:
    """Write an ONNX graph with the SCRFD layout whose outputs hold ``FACES``."""
    scores = {s: np.zeros(((SIZE // s) ** 2 * 2, score_width), np.float32) for s in STRIDES}
    dists = {s: np.ones(((SIZE // s) ** 2 * 2, 4), np.float32) for s in STRIDES}
    kpss = {s: np.zeros(((SIZE // s) ** 2 * 2, 10), np.float32) for s in STRIDES}
    probe_mask = np.zeros_like(scores[16])
    for stride, row, col, anchor, score, dist, kps in FACES.values():
        index = _anchor(stride, row, col, anchor)
        if score is None:
            probe_mask[index] = 1.0
        else:
            scores[stride][index] = score
        dists[stride][index] = dist
        kpss[stride][index] = kps
    inits, nodes, outputs = [], [], []
    # probe = input[0, 0, y, x] as a (1, 1) tensor, placed by the one-hot mask into stride 16's scores.
    for name, value in {
        "starts": [0, 0, PROBE_Y, PROBE_X],
        "ends": [1, 1, PROBE_Y + 1, PROBE_X + 1],
        "flat": [1, 1],
    }.items():
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
    nodes.append(helper.make_node("Slice", ["input.1", "starts", "ends"], ["probe4d"]))
    nodes.append(helper.make_node("Reshape", ["probe4d", "flat"], ["probe"]))
    inits.append(numpy_helper.from_array(probe_mask, "probe_mask"))
    nodes.append(helper.make_node("Mul", ["probe_mask", "probe"], ["probe_scores"]))
    groups = [("score", scores), ("bbox", dists)] + ([("kps", kpss)] if keypoints else [])
    for group, tables in groups:
        for stride in STRIDES:
            name = f"{group}_{stride}"
            table = tables[stride][None] if batched_outputs else tables[stride]
            inits.append(numpy_helper.from_array(table, f"{name}_const"))
            if group == "score" and stride == 16:
                probe = "probe_scores"
                if batched_outputs:
                    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
                    nodes.append(helper.make_node("Unsqueeze", ["probe_scores", "axis0"], ["probe_scores_b"]))
                    probe = "probe_scores_b"
                nodes.append(helper.make_node("Add", [f"{name}_const", probe], [name]))
            else:
                nodes.append(helper.make_node("Identity", [f"{name}_const"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(table.shape)))
    dims = ["batch", 3, "height", "width"] if dynamic_input else [1, 3, SIZE, SIZE]
    graph = helper.make_graph(
        nodes, "fake_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, dims)], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _photo(height: int, width: int) -> np.ndarray:
    # Uniform so the letterbox resize keeps the probe pixel's value: red 200, green and blue 10.
    photo = np.empty((height, width, 3), np.uint8)
    photo[...] = (200, 10, 10)
    return photo


@pytest.mark.parametrize("batched_outputs", [False, True])
@pytest.mark.parametrize("dynamic_input", [False, True])
def test_decoder_finds_the_encoded_faces(tmp_path, batched_outputs, dynamic_input):
    path = build_scrfd(tmp_path / "det_fake.onnx", batched_outputs=batched_outputs, dynamic_input=dynamic_input)
    detector = load_detector(str(path))
    assert isinstance(detector, SCRFD) and detector.input_size == (SIZE, SIZE)
    photo = _photo(720, 1280)  # letterboxed to 640x360: factor 0.5
    faces = detector.detect(photo)
    expected_probe = (200 - 127.5) / 128  # RGB order and (x - 127.5) / 128, or the probe would differ
    wanted = {"a": 0.9, "b": 0.7, "probe": expected_probe}
    assert len(faces) == len(wanted), [f.to_dict() for f in faces]
    for name, score in wanted.items():
        box, points = expected_face(name, 0.5)
        match = [f for f in faces if np.allclose(f.bbox, box, atol=1e-3)]
        assert len(match) == 1, (name, box, [f.bbox for f in faces])
        np.testing.assert_allclose(match[0].landmarks, points, atol=1e-3)
        assert match[0].score == pytest.approx(score, abs=1e-6)
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    # The threshold lets the weak face through; max_faces keeps the largest; min_face_size drops small ones.
    assert len(detector.detect(photo, threshold=0.2)) == 4
    assert [f.score for f in detector.detect(photo, max_faces=1)] == [faces[0].score]
    big_enough = expected_face("a", 0.5)[0]
    assert {round(f.score, 3) for f in detector.detect(photo, min_face_size=big_enough[3] - big_enough[1])} == {
        0.9,
        0.7,
    }


def test_letterbox_of_a_tall_photo(tmp_path):
    detector = SCRFD(build_scrfd(tmp_path / "det.onnx"))
    faces = detector.detect(_photo(1600, 1000))  # factor 0.4: 400x640 on the canvas, right part padding
    box, points = expected_face("b", 0.4)
    match = [f for f in faces if np.allclose(f.bbox, box, atol=1e-2)]
    assert len(match) == 1
    np.testing.assert_allclose(match[0].landmarks, points, atol=1e-2)


def test_probe_follows_the_red_channel(tmp_path):
    """The probe's score is the red value the decoder fed: blue-heavy photo -> below zero -> no probe face."""
    detector = SCRFD(build_scrfd(tmp_path / "det.onnx"))
    probe_box = expected_face("probe", 1.0)[0]
    red = _photo(640, 640)
    blue = np.ascontiguousarray(red[..., ::-1])  # red 10, blue 200
    at_probe = [f for f in detector.detect(red, threshold=0.05) if np.allclose(f.bbox, probe_box, atol=1e-3)]
    assert len(at_probe) == 1 and at_probe[0].score == pytest.approx((200 - 127.5) / 128, abs=1e-6)
    assert not [f for f in detector.detect(blue, threshold=0.05) if np.allclose(f.bbox, probe_box, atol=1e-3)]


def test_files_without_the_layout_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="without keypoints"):
        SCRFD(build_scrfd(tmp_path / "det_nokps.onnx", keypoints=False))
    with pytest.raises(ValueError, match=r"det_wide\.onnx.*scores of stride 8"):
        SCRFD(build_scrfd(tmp_path / "det_wide.onnx", score_width=2))
    junk = tmp_path / "det_junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="det_junk.onnx"):
        load_detector(str(junk))
    with pytest.raises(FileNotFoundError, match="det_missing.onnx"):
        load_detector(str(tmp_path / "det_missing.onnx"))
    detector = SCRFD(build_scrfd(tmp_path / "det.onnx"))
    assert detector.describe()["name"] == "scrfd" and detector.describe()["strides"] == [8, 16, 32]
