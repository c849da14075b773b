"""The built-in detector: MTCNN's three-stage cascade on ONNX Runtime, numpy and OpenCV.

Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks" (IEEE SPL 2016, arXiv:1604.02878):

1. **P-Net** runs fully convolutionally over an image pyramid (scale factor 0.709, first
   scale ``12 / min_face_size``); every output cell is a 12x12 window (stride 2) with a face
   probability and four box offsets. Windows above 0.6 are kept, suppressed per scale (IoU
   0.5) and across scales (IoU 0.7), regressed and squared.
2. **R-Net** scores 24x24 crops of all those candidates in one batch (threshold 0.7, NMS 0.7).
3. **O-Net** scores 48x48 crops in one batch (threshold 0.7), regresses the final box and
   gives the five landmarks; a last NMS (0.7, overlap over the smaller box) removes boxes
   inside boxes.

The weights are the trained ones shipped in the ``facenet-pytorch`` 2.6.0 wheel (MIT licence,
notice in ``weights/LICENSE-facenet-pytorch.md``), converted to ONNX by
:mod:`facevib.detect.convert` and committed, because the serving image has no torch and no
internet (see that module for how the files are reproduced and checked).

Coordinates follow :mod:`facevib.detect.boxes`. Crops are cut at integer boxes and the
networks' regressions and landmark fractions refer to those integer boxes, as in the original
cascade; a landmark fraction ``f`` of a box starting at ``x1`` of width ``w`` is pixel index
``x1 + f * w``, the convention the networks were trained with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facevib.detect.base import Face, check_image, check_options, largest_first
from facevib.detect.boxes import crop_resize, nms, square
from facevib.detect.providers import session_notes, session_providers

__all__ = ["MTCNN", "MTCNNConfig", "OrtNets", "weights_dir"]

# A net maps a float32 NCHW batch to its outputs: P-Net (prob, reg), R-Net (prob, reg),
# O-Net (prob, reg, points); prob has (background, face) on axis 1.
NetFn = Callable[[np.ndarray], Sequence[np.ndarray]]

_PNET_STRIDE = 2
_PNET_CELL = 12


@dataclass(frozen=True)
class MTCNNConfig:
    """The cascade's parameters (the usual MTCNN defaults)."""

    min_face_size: float = 20.0  # smallest face side looked for, in pixels
    scale_factor: float = 0.709  # pyramid step (about 1 / sqrt(2): each level halves the area)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probability
    nms_pnet_scale: float = 0.5  # IoU within one pyramid level
    nms_pnet_all: float = 0.7  # IoU across levels
    nms_rnet: float = 0.7
    nms_onet: float = 0.7  # overlap over the smaller box

    def __post_init__(self) -> None:
        if not self.min_face_size >= _PNET_CELL:
            raise ValueError(f"min_face_size must be >= {_PNET_CELL} pixels (P-Net's window), got {self.min_face_size}")
        if not 0.1 <= self.scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in [0.1, 1), got {self.scale_factor}")
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {self.thresholds}")


def weights_dir() -> Path:
    """The folder holding ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx`` inside the package."""
    return Path(str(resources.files("facevib.detect") / "weights"))


class OrtNets:
    """The three networks as ONNX Runtime sessions (thread-safe: ``InferenceSession.run`` is)."""

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        providers: list[str] | None = None,
        threads: int = 0,
        device: str = "cpu",
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - onnxruntime is part of the serve extra
            raise ImportError("face detection needs onnxruntime: pip install 'facevib[serve]'") from None

        choice = session_providers(device, providers)
        folder = Path(folder) if folder is not None else weights_dir()
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        self.paths: dict[str, Path] = {}
        self._sessions = {}
        for net in ("pnet", "rnet", "onet"):
            path = folder / f"{net}.onnx"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: MTCNN weight file missing (rebuild with `make detector-weights`)")
            try:
                self._sessions[net] = ort.InferenceSession(str(path), options, providers=choice.providers)
            except Exception as err:  # ORT raises its own exception types for unreadable files
                raise ValueError(f"{path}: ONNX Runtime cannot load it ({err})") from None
            self.paths[net] = path
        self.providers = self._sessions["pnet"].get_providers()
        self.device = device
        self.warnings = session_notes(choice, self.providers, device)

    def _run(self, net: str, batch: np.ndarray) -> list[np.ndarray]:
        return self._sessions[net].run(None, {"image": batch})

    def pnet(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        return self._run("pnet", batch)

    def rnet(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        return self._run("rnet", batch)

    def onet(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        return self._run("onet", batch)


def _to_input(pixels: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` or ``(H, W, 3)`` uint8 RGB -> float32 NCHW ``(pixel - 127.5) / 128``."""
    batch = pixels[None] if pixels.ndim == 3 else pixels
    return ((batch.astype(np.float32) - 127.5) * (1.0 / 128.0)).transpose(0, 3, 1, 2).copy()


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each box side by its offset times the box's width (x) or height (y)."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    scale = np.stack([width, height, width, height], axis=1)
    return boxes + offsets * scale


def _empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4)), np.zeros(0)


class MTCNN:
    """The built-in face detector (see the module docstring). Thread-safe: it holds no per-call state.

    Args:
        config: cascade parameters; ``detect``'s options override ``min_face_size`` and the
            last stage's threshold per call.
        nets: the three networks; default: the committed ONNX files on ONNX Runtime.
        providers: ONNX Runtime providers for the default nets (default: chosen from ``device``).
        threads: ONNX Runtime intra-op threads (0: its default).
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto``
            (:func:`facevib.detect.providers.choose_providers`).
    """

    name = "mtcnn"

    def __init__(
        self,
        config: MTCNNConfig | None = None,
        *,
        nets: Any | None = None,
        providers: list[str] | None = None,
        threads: int = 0,
        device: str = "cpu",
    ) -> None:
        self.config = config or MTCNNConfig()
        self.nets = nets if nets is not None else OrtNets(providers=providers, threads=threads, device=device)

    def describe(self) -> dict[str, Any]:
        paths = getattr(self.nets, "paths", {})
        return {
            "name": self.name,
            "source": "built-in MTCNN (weights from facenet-pytorch 2.6.0, MIT)",
            "files": {net: str(path) for net, path in paths.items()},
            "providers": list(getattr(self.nets, "providers", [])),
            "requested_device": getattr(self.nets, "device", None),
            "warnings": list(getattr(self.nets, "warnings", [])),
            "min_face_size": self.config.min_face_size,
            "threshold": self.config.thresholds[2],
            "stage_thresholds": list(self.config.thresholds),
            "scale_factor": self.config.scale_factor,
        }

    def scales(self, height: int, width: int, min_face_size: float) -> list[float]:
        """The pyramid: scales at which P-Net's 12-pixel window sees faces from ``min_face_size`` up."""
        first = _PNET_CELL / min_face_size
        scales = []
        shortest = min(height, width) * first
        scale = first
        while shortest >= _PNET_CELL:
            scales.append(scale)
            scale *= self.config.scale_factor
            shortest *= self.config.scale_factor
        return scales

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
        min_size = max(float(min_face_size), _PNET_CELL) if min_face_size is not None else self.config.min_face_size
        last_threshold = self.config.thresholds[2] if threshold is None else float(threshold)
        image = np.ascontiguousarray(image)
        boxes, _ = self._proposals(image, min_size)
        if len(boxes):
            boxes = self._refine(image, boxes)
        if not len(boxes):
            return []
        # The pyramid starts at min_size, but box regression can still shrink a box below it.
        faces = [face for face in self._output(image, boxes, last_threshold) if face.size >= min_size]
        return largest_first(faces, max_faces)

    def _proposals(self, image: np.ndarray, min_size: float) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: P-Net over the pyramid -> regressed square candidates (integer boxes)."""
        height, width = image.shape[:2]
        cfg = self.config
        all_boxes, all_scores = [], []
        level = image
        for scale in self.scales(height, width, min_size):
            out_h, out_w = math.ceil(height * scale), math.ceil(width * scale)
            # Each level is shrunk from the previous one (area averaging either way): the pyramid
            # then costs about two first levels instead of one full image per level.
            level = cv2.resize(level, (out_w, out_h), interpolation=cv2.INTER_AREA)
            prob, reg = self.nets.pnet(_to_input(level))[:2]
            face = prob[0, 1]
            rows, cols = np.nonzero(face >= cfg.thresholds[0])
            if rows.size == 0:
                continue
            # Map each window back with the per-axis scale the resize really applied.
            sx, sy = width / out_w, height / out_h
            x0 = cols * _PNET_STRIDE
            y0 = rows * _PNET_STRIDE
            boxes = np.stack([x0 * sx, y0 * sy, (x0 + _PNET_CELL) * sx, (y0 + _PNET_CELL) * sy], axis=1)
            scores = face[rows, cols].astype(np.float64)
            offsets = reg[0][:, rows, cols].T.astype(np.float64)
            keep = nms(boxes, scores, cfg.nms_pnet_scale)
            all_boxes.append(np.concatenate([boxes[keep], offsets[keep]], axis=1))
            all_scores.append(scores[keep])
        if not all_boxes:
            return _empty_boxes()
        stacked = np.concatenate(all_boxes)
        scores = np.concatenate(all_scores)
        keep = nms(stacked[:, :4], scores, cfg.nms_pnet_all)
        boxes = _regress(stacked[keep, :4], stacked[keep, 4:])
        return np.round(square(boxes)), scores[keep]

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net over all candidates in one batch -> regressed square boxes."""
        prob, reg = self.nets.rnet(_to_input(crop_resize(image, boxes, 24)))[:2]
        face = prob[:, 1].astype(np.float64)
        passed = face >= self.config.thresholds[1]
        boxes, face, reg = boxes[passed], face[passed], reg[passed].astype(np.float64)
        if not len(boxes):
            return np.zeros((0, 4))
        keep = nms(boxes, face, self.config.nms_rnet)
        return np.round(square(_regress(boxes[keep], reg[keep])))

    def _output(self, image: np.ndarray, boxes: np.ndarray, threshold: float) -> list[Face]:
        """Stage 3: O-Net over all refined boxes in one batch -> final boxes, scores, landmarks."""
        prob, reg, points = self.nets.onet(_to_input(crop_resize(image, boxes, 48)))[:3]
        face = prob[:, 1].astype(np.float64)
        passed = face >= threshold
        boxes, face = boxes[passed], face[passed]
        reg, points = reg[passed].astype(np.float64), points[passed].astype(np.float64)
        if not len(boxes):
            return []
        width = (boxes[:, 2] - boxes[:, 0])[:, None]
        height = (boxes[:, 3] - boxes[:, 1])[:, None]
        # O-Net's points are all five x fractions, then all five y fractions, of the input box.
        landmarks = np.stack([boxes[:, :1] + points[:, :5] * width, boxes[:, 1:2] + points[:, 5:] * height], axis=2)
        final = _regress(boxes, reg)
        keep = nms(final, face, self.config.nms_onet, mode="min")
        img_h, img_w = image.shape[:2]
        final[:, [0, 2]] = np.clip(final[:, [0, 2]], 0, img_w)
        final[:, [1, 3]] = np.clip(final[:, [1, 3]], 0, img_h)
        return [Face(final[k], landmarks[k], float(face[k])) for k in keep]
