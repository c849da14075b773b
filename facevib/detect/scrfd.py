"""Plug-in for SCRFD face detectors exported to ONNX (insightface model packs' ``det_*.onnx``).

Guo et al., "Sample and Computation Redistribution for Efficient Face Detection"
(arXiv:2105.04714). The layout decoded here is the one insightface's ``model_zoo`` reads:

* one input ``1 x 3 x H x W`` (640 x 640 in the model packs; a dynamic H/W gets 640 x 640),
  RGB, ``(pixel - 127.5) / 128``. The photo is resized to fit with its aspect ratio kept and
  placed in the top-left corner of a zero canvas (a letterbox); detections are divided by
  that resize factor.
* 9 outputs: scores for strides 8, 16, 32, then box distances for the same strides, then
  keypoint offsets (``(A, 1)``, ``(A, 4)``, ``(A, 10)`` each, with or without a leading batch
  axis of 1), where ``A = (H / s) * (W / s) * 2``: two anchors per location, locations in
  row-major order, the two anchors of a location adjacent. 15 outputs are the five-stride
  variant (8 ... 128, one anchor per location).
* an anchor's centre is ``(column * s, row * s)``; its box is ``centre -/+ distances * s``
  (left, top, right, bottom) and keypoint ``k`` is ``centre + offsets[2k:2k+2] * s``. Scores
  are probabilities already. Boxes above the threshold (default 0.5) go through NMS at IoU 0.4.

Files with 6 or 10 outputs have no keypoints; they are refused, since faces cannot be aligned
without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facevib.detect.base import Face, check_image, check_options, largest_first
from facevib.detect.boxes import nms
from facevib.detect.providers import session_notes, session_providers

__all__ = ["SCRFD", "letterbox"]

_LAYOUTS = {9: ((8, 16, 32), 2), 15: ((8, 16, 32, 64, 128), 1)}  # outputs -> (strides, anchors per location)
_DEFAULT_SIZE = 640


def letterbox(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
    """``image`` resized to fit ``height x width`` (aspect kept), top-left on zeros; ``(canvas, factor)``."""
    img_h, img_w = image.shape[:2]
    factor = min(height / img_h, width / img_w)
    new_h = max(1, min(height, int(round(img_h * factor))))
    new_w = max(1, min(width, int(round(img_w * factor))))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return canvas, factor


class SCRFD:
    """An SCRFD ``det_*.onnx`` on ONNX Runtime (see the module docstring). Thread-safe.

    Args:
        path: the ONNX file.
        providers: ONNX Runtime providers (default: chosen from ``device``).
        threads: intra-op threads (0: ONNX Runtime's default).
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto``
            (:func:`facevib.detect.providers.choose_providers`).
        threshold: default score threshold.
        nms_threshold: IoU above which the lower-scoring of two boxes is dropped.

    Raises:
        FileNotFoundError / ValueError naming ``path`` when it is missing or not this layout.
    """

    name = "scrfd"

    def __init__(
        self,
        path: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int = 0,
        threshold: float = 0.5,
        nms_threshold: float = 0.4,
        device: str = "cpu",
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - onnxruntime is part of the serve extra
            raise ImportError("face detection needs onnxruntime: pip install 'facevib[serve]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such SCRFD model file")
        check_options(None, threshold, None)
        self.threshold = float(threshold)
        self.nms_threshold = float(nms_threshold)
        choice = session_providers(device, providers)
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=choice.providers)
        except Exception as err:  # ORT raises its own exception types for unreadable or invalid files
            raise ValueError(f"{self.path}: not a model ONNX Runtime can load ({err})") from None
        self.providers = self._session.get_providers()
        self.device = device
        self.warnings = session_notes(choice, self.providers, device)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [tuple(i.shape) for i in inputs]
            raise ValueError(f"{self.path}: an SCRFD model has one N x 3 x H x W input, this one has {shapes}")
        self._input = inputs[0].name
        channels, height, width = inputs[0].shape[1:]
        if isinstance(channels, int) and channels != 3:
            raise ValueError(f"{self.path}: input {self._input!r} has {channels} channels, SCRFD takes 3")
        # Dynamic sizes: insightface's default detection size.
        self.input_size = (
            height if isinstance(height, int) and height > 0 else _DEFAULT_SIZE,
            width if isinstance(width, int) and width > 0 else _DEFAULT_SIZE,
        )
        outputs = self._session.get_outputs()
        if len(outputs) in (6, 10):
            raise ValueError(
                f"{self.path}: {len(outputs)} outputs is an SCRFD model without keypoints; faces cannot be aligned "
                "without them (use a *_kps model or the built-in mtcnn detector)"
            )
        if len(outputs) not in _LAYOUTS:
            raise ValueError(
                f"{self.path}: {len(outputs)} outputs; an SCRFD det_*.onnx has 9 (3 strides) or 15 (5 strides): "
                "scores, box distances and keypoints per stride"
            )
        self.strides, self.anchors = _LAYOUTS[len(outputs)]
        for group, width_expected in enumerate((1, 4, 10)):
            for level in range(len(self.strides)):
                out = outputs[group * len(self.strides) + level]
                last = out.shape[-1] if out.shape else None
                if isinstance(last, int) and last != width_expected:
                    kind = ("scores", "box distances", "keypoints")[group]
                    raise ValueError(
                        f"{self.path}: output {out.name!r} should hold {kind} of stride {self.strides[level]} "
                        f"(last axis {width_expected}), its shape is {out.shape}"
                    )
        self._centres = {stride: self._anchor_centres(stride) for stride in self.strides}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": f"SCRFD ONNX file {self.path.name}",
            "files": {"model": str(self.path)},
            "providers": list(self.providers),
            "requested_device": self.device,
            "warnings": list(self.warnings),
            "input_size": list(self.input_size),
            "threshold": self.threshold,
            "nms_threshold": self.nms_threshold,
            "strides": list(self.strides),
        }

    def _anchor_centres(self, stride: int) -> np.ndarray:
        rows, cols = self.input_size[0] // stride, self.input_size[1] // stride
        ys, xs = np.mgrid[:rows, :cols]
        centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        return np.repeat(centres, self.anchors, axis=0)  # the anchors of one location are adjacent

    def detect(
        self,
        image: np.ndarray,
        *,
        min_face_size: float | None = None,
        threshold: float | None = None,
        max_faces: int | None = None,
    ) -> list[Face]:
        """Faces in ``image`` (``H x W x 3`` uint8 RGB), largest first (see :class:`~facevib.detect.base.Detector`)."""
        check_image(image)
        check_options(min_face_size, threshold, max_faces)
        cut = self.threshold if threshold is None else float(threshold)
        canvas, factor = letterbox(image, *self.input_size)
        blob = ((canvas.astype(np.float32) - 127.5) * (1.0 / 128.0)).transpose(2, 0, 1)[None].copy()
        outputs = self._session.run(None, {self._input: blob})
        levels = len(self.strides)
        boxes, scores, points = [], [], []
        for level, stride in enumerate(self.strides):
            centres = self._centres[stride]
            score = self._rows(outputs[level], 1, centres, f"scores of stride {stride}").reshape(-1)
            keep = np.flatnonzero(score >= cut)
            if keep.size == 0:
                continue
            dist = self._rows(outputs[levels + level], 4, centres, f"box distances of stride {stride}")[keep] * stride
            kps = self._rows(outputs[2 * levels + level], 10, centres, f"keypoints of stride {stride}")[keep] * stride
            c = centres[keep]
            boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], axis=1))
            points.append(c[:, None, :] + kps.reshape(-1, 5, 2))
            scores.append(score[keep])
        if not boxes:
            return []
        all_boxes = np.concatenate(boxes).astype(np.float64) / factor
        all_points = np.concatenate(points).astype(np.float64) / factor
        all_scores = np.concatenate(scores).astype(np.float64)
        keep = nms(all_boxes, all_scores, self.nms_threshold)
        faces = [Face(all_boxes[k], all_points[k], float(all_scores[k])) for k in keep]
        if min_face_size is not None:
            faces = [face for face in faces if face.size >= min_face_size]
        return largest_first(faces, max_faces)

    def _rows(self, output: np.ndarray, width: int, centres: np.ndarray, what: str) -> np.ndarray:
        """One output as ``(A, width)``, checked against the anchor count of its stride."""
        array = np.asarray(output)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2 or array.shape != (len(centres), width):
            raise ValueError(
                f"{self.path}: the output with the {what} has shape {np.shape(output)}, expected "
                f"({len(centres)}, {width}) for a {self.input_size[0]}x{self.input_size[1]} input"
            )
        return array.astype(np.float32, copy=False)
