"""Shared pieces of the detector tests: the two real photos, hand-checked landmarks, a canvas of pasted faces."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import matplotlib.cbook
import numpy as np
import skimage.data

# Located by hand on 5x and 8x enlargements with a pixel grid (pixel-index coordinates):
# pupil centres, nose tip, mouth corners; "left" is the smaller x, as in the ArcFace template.
ASTRONAUT_POINTS = np.array([[204.0, 102.0], [247.0, 104.0], [224.0, 128.0], [203.0, 140.0], [246.0, 141.0]])
GRACE_POINTS = np.array([[221.0, 189.0], [302.0, 186.0], [265.0, 239.0], [228.0, 279.0], [311.0, 276.0]])
# A region around each face (x1, y1, x2, y2) cut out to build canvases.
ASTRONAUT_REGION = (150, 40, 300, 200)
GRACE_REGION = (150, 100, 380, 360)


def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def grace_hopper() -> np.ndarray:
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def interocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[1] - points[0]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@dataclass(frozen=True)
class Pasted:
    """One face pasted on a canvas: where its hand-checked points and its region landed."""

    points: np.ndarray  # (5, 2) on the canvas
    region: np.ndarray  # (4,) the pasted region's box on the canvas
    scale: float  # canvas pixels per photo pixel


def paste_faces(
    height: int, width: int, placements: list[tuple[str, int, tuple[int, int]]], background: int = 200
) -> tuple[np.ndarray, list[Pasted]]:
    """A ``height x width`` canvas with face regions pasted as ``(photo name, pasted width, (x, y))``."""
    sources = {
        "astronaut": (astronaut(), ASTRONAUT_REGION, ASTRONAUT_POINTS),
        "grace": (grace_hopper(), GRACE_REGION, GRACE_POINTS),
    }
    canvas = np.full((height, width, 3), background, dtype=np.uint8)
    pasted = []
    for name, size, (px, py) in placements:
        photo, (x1, y1, x2, y2), points = sources[name]
        scale = size / (x2 - x1)
        resized = cv2.resize(photo[y1:y2, x1:x2], (size, round((y2 - y1) * scale)), interpolation=cv2.INTER_AREA)
        canvas[py : py + resized.shape[0], px : px + resized.shape[1]] = resized
        # Pixel-index coordinates: a resize by s maps index i to (i + 0.5) * s - 0.5.
        moved = (points - [x1, y1] + 0.5) * scale - 0.5 + [px, py]
        region = np.array([px, py, px + resized.shape[1], py + resized.shape[0]], dtype=np.float64)
        pasted.append(Pasted(moved, region, scale))
    return canvas, pasted
