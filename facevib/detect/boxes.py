"""Box arithmetic shared by the detectors: non-maximum suppression, squaring, padded crops.

Boxes are ``(N, 4)`` float arrays ``x1, y1, x2, y2`` in continuous pixel coordinates: pixel
``i`` covers ``[i, i + 1)``, so a box's width is ``x2 - x1`` and the box ``[0, W)`` is the
whole image.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["crop_resize", "nms", "square"]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    A box is dropped when its overlap with a kept, higher-scoring box exceeds
    ``iou_threshold``; overlap is intersection over union (``mode="union"``) or over the
    smaller area (``mode="min"``, MTCNN's last stage, which also removes a small box lying
    inside a larger one).
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, k].astype(np.float64) for k in range(4))
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        if not rest.size:
            break
        inter = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0.0)
        inter *= np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0.0)
        if mode == "union":
            denom = areas[best] + areas[rest] - inter
        else:
            denom = np.minimum(areas[best], areas[rest])
        # overlap <= threshold, written without a division (denominators are >= 0; empty boxes never suppress).
        order = rest[(inter <= iou_threshold * denom) | (denom <= 0)]
    return np.asarray(keep, dtype=np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """The squares with the same centres whose side is the longer side of each box."""
    out = boxes.astype(np.float64, copy=True)
    width = out[:, 2] - out[:, 0]
    height = out[:, 3] - out[:, 1]
    side = np.maximum(width, height)
    out[:, 0] += 0.5 * (width - side)
    out[:, 1] += 0.5 * (height - side)
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def crop_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``(N, size, size, 3)`` uint8: each integer box cut from ``image``, zero outside it, resized.

    ``boxes`` must hold integers (callers round them first, and regress from the rounded box
    so landmarks refer to exactly the pixels the network saw). Area interpolation matches how
    the networks' training crops were shrunk.
    """
    height, width = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64)):
        box_w, box_h = max(int(x2 - x1), 1), max(int(y2 - y1), 1)
        patch = np.zeros((box_h, box_w, 3), dtype=np.uint8)
        sx1, sy1 = max(int(x1), 0), max(int(y1), 0)
        sx2, sy2 = min(int(x2), width), min(int(y2), height)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        interpolation = cv2.INTER_AREA if box_w >= size else cv2.INTER_LINEAR
        out[k] = cv2.resize(patch, (size, size), interpolation=interpolation)
    return out
