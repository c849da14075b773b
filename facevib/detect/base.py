"""What every face detector in facevib gives its callers: :class:`Face` and the :class:`Detector` protocol.

The server, ``python -m facevib.data pack --detect`` and the benchmarks only see this
interface; :func:`facevib.detect.load_detector` picks the implementation (the built-in MTCNN
or an SCRFD ONNX file). Landmarks are the five ArcFace points in the order
:data:`facevib.align.ARCFACE_TEMPLATE` uses, so ``norm_crop(image, face.landmarks)`` aligns a
detected face exactly as evaluation aligns a face with given landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Detector", "Face", "check_image", "check_options", "largest_first"]


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    Attributes:
        bbox: ``(4,)`` float32 ``x1, y1, x2, y2`` in pixels of the input image.
        landmarks: ``(5, 2)`` float32 pixel coordinates in ArcFace order: left eye, right eye,
            nose tip, left mouth corner, right mouth corner, where "left" is the point with the
            smaller x in an upright frontal face (insightface's convention).
        score: the detector's confidence in ``[0, 1]``.
    """

    bbox: np.ndarray
    landmarks: np.ndarray
    score: float

    def __post_init__(self) -> None:
        bbox = np.array(self.bbox, dtype=np.float32).reshape(-1)
        landmarks = np.array(self.landmarks, dtype=np.float32)
        if bbox.shape != (4,):
            raise ValueError(f"Face.bbox must have 4 values (x1, y1, x2, y2), got shape {bbox.shape}")
        if landmarks.shape != (5, 2):
            raise ValueError(f"Face.landmarks must have shape (5, 2), got {landmarks.shape}")
        bbox.flags.writeable = False
        landmarks.flags.writeable = False
        # Frozen dataclass: the validated, read-only copies replace what the caller passed.
        object.__setattr__(self, "bbox", bbox)
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def size(self) -> float:
        """The longer side of the box: what ``min_face_size`` is compared with."""
        return max(self.width, self.height)

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"bbox": [4 floats], "landmarks": [[x, y] x 5], "score": float}``."""
        return {
            "bbox": [float(v) for v in self.bbox],
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
            "score": self.score,
        }


@runtime_checkable
class Detector(Protocol):
    """A face detector: RGB photo in, faces largest first out. Implementations are thread-safe."""

    name: str

    def detect(
        self,
        image: np.ndarray,
        *,
        min_face_size: float | None = None,
        threshold: float | None = None,
        max_faces: int | None = None,
    ) -> list[Face]:
        """Faces in ``image`` (``H x W x 3`` uint8 RGB), largest box first.

        Args:
            min_face_size: smallest face to return, in pixels of the longer box side (None: the
                detector's default; MTCNN also starts its image pyramid there, so it is faster).
            threshold: smallest score to keep (None: the detector's default).
            max_faces: keep at most this many (the largest); None keeps all.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """What the detector is (name, source file, defaults), for ``/v1/info`` and logs."""
        ...


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a detector input: ``H x W x 3`` uint8 RGB with both sides >= 1; returns it unchanged."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H x W x 3 uint8 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def check_options(min_face_size: float | None, threshold: float | None, max_faces: int | None) -> None:
    """``ValueError`` naming the option for values no detector can honour."""
    if min_face_size is not None and not (np.isfinite(min_face_size) and min_face_size > 0):
        raise ValueError(f"min_face_size must be a positive number of pixels, got {min_face_size!r}")
    if threshold is not None and not (0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if max_faces is not None and (isinstance(max_faces, bool) or int(max_faces) != max_faces or max_faces < 1):
        raise ValueError(f"max_faces must be an int >= 1, got {max_faces!r}")


def largest_first(faces: Sequence[Face], max_faces: int | None = None) -> list[Face]:
    """``faces`` by box area, largest first (ties: higher score first), cut to ``max_faces``."""
    ordered = sorted(faces, key=lambda face: (-face.area, -face.score))
    return ordered if max_faces is None else ordered[:max_faces]
