"""Request and response models: the contract clients code against, and what ``/openapi.json`` shows.

Requests are validated in two steps so that one bad image does not fail the others: the
envelope (``images`` is a list of objects; ``a``/``b`` are objects) first, then each image on
its own, its errors named under its position (``images[2].landmarks``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EmbedEnvelope",
    "DetectionOptions",
    "EmbedRequest",
    "EmbedResponse",
    "EmbeddingInput",
    "ErrorDetail",
    "ErrorResponse",
    "FaceResult",
    "HealthResponse",
    "ImageError",
    "ImageInput",
    "ImageOk",
    "MultipartEmbedRequest",
    "VerifyEnvelope",
    "VerifyRequest",
    "VerifyResponse",
]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Point = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2, description="[x, y] in pixels")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInput(_Strict):
    """One image: an aligned crop, a photo with its 5 landmarks, or a photo for the detector."""

    data: str = Field(
        min_length=1,
        description="Base64 of a JPEG, PNG, WebP or BMP file (a `data:image/...;base64,` prefix is allowed).",
    )
    landmarks: Annotated[list[Point], Field(min_length=5, max_length=5)] | None = Field(
        default=None,
        description="5 points in image pixels, ArcFace order: left eye, right eye, nose tip, left and right "
        "mouth corner. The photo is aligned onto the ArcFace template exactly as evaluation aligns it.",
    )
    aligned: bool | None = Field(
        default=None,
        description="true: the image is an aligned crop of the model's input size, used as is. false: a photo "
        "(landmarks or detection). Absent: images of exactly the input size count as aligned crops.",
    )


class EmbeddingInput(_Strict):
    """An embedding computed earlier (normalised or not; it is L2-normalised before scoring)."""

    embedding: list[FiniteFloat] = Field(min_length=1, description="The model's embedding size of finite floats.")


MaxFaces = Annotated[int, Field(ge=1)]
MinFaceSize = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_MAX_FACES = "Photos in detection mode: embed at most this many faces per photo, the largest first."
_MIN_FACE_SIZE = "Photos in detection mode: smallest face to return, in pixels (the longer side of its box)."
_LARGEST_ONLY = "Photos in detection mode: only the largest face (max_faces=1)."


class DetectionOptions(_Strict):
    """Options of detection mode (photos without landmarks); absent: the detector's defaults."""

    max_faces: MaxFaces | None = Field(default=None, description=_MAX_FACES)
    min_face_size: MinFaceSize | None = Field(default=None, description=_MIN_FACE_SIZE)
    largest_only: bool = Field(default=False, description=_LARGEST_ONLY)


class EmbedRequest(DetectionOptions):
    """``POST /v1/embed`` as JSON."""

    images: list[ImageInput] = Field(min_length=1, description="Images to embed; each is answered on its own.")


class MultipartEmbedRequest(BaseModel):
    """``POST /v1/embed`` as ``multipart/form-data``."""

    images: list[bytes] = Field(
        description="One or more file parts named `images`: aligned crops, or photos for the detector."
    )
    aligned: bool | None = Field(default=None, description="As `aligned` of a JSON image, for every part.")
    max_faces: MaxFaces | None = Field(default=None, description=_MAX_FACES)
    min_face_size: MinFaceSize | None = Field(default=None, description=_MIN_FACE_SIZE)
    largest_only: bool = Field(default=False, description=_LARGEST_ONLY)


class EmbedEnvelope(DetectionOptions):
    """First validation step of ``/v1/embed``: the images are checked one by one afterwards."""

    images: list[Any] = Field(min_length=1)


class VerifyRequest(_Strict):
    """``POST /v1/verify``."""

    a: ImageInput | EmbeddingInput
    b: ImageInput | EmbeddingInput
    threshold: Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] | None = Field(
        default=None, description="Cosine threshold overriding the model's calibrated one."
    )


class VerifyEnvelope(_Strict):
    """First validation step of ``/v1/verify``: each side is checked on its own afterwards."""

    a: dict[str, Any]
    b: dict[str, Any]
    threshold: Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable error code, e.g. invalid_base64, image_too_large, overloaded.")
    message: str = Field(description="What went wrong, for people.")
    field: str = Field(description="The request field concerned, e.g. images[2].landmarks (empty if none).")


class ErrorResponse(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


class FaceResult(BaseModel):
    embedding: list[float] = Field(description="L2-normalised embedding.")
    norm: float = Field(description="Norm of the raw embedding (a quality signal).")
    uncertainty: float | None = Field(description="The model's uncertainty output, when it has one.")
    quality: float | None = Field(
        description="Face quality in [0, 1] (higher = fewer false non-matches), when the model has a quality "
        "output; its definition and scale are in /v1/info's model.quality (docs/quality.md)."
    )
    bbox: list[float] | None = Field(description="x1, y1, x2, y2 of the detected face (detection mode).")
    landmarks: list[list[float]] | None = Field(description="The 5 points the face was aligned from.")
    det_score: float | None = Field(description="Detector score (detection mode).")


class ImageOk(BaseModel):
    status: Literal["ok"]
    faces: list[FaceResult]


class ImageError(BaseModel):
    status: Literal["error"]
    error: ErrorDetail


class EmbedResponse(BaseModel):
    results: list[ImageOk | ImageError] = Field(description="One entry per image, in request order.")
    model: str
    timings_ms: dict[str, float] = Field(description="decode, queue, inference and total, in milliseconds.")


class VerifyResponse(BaseModel):
    score: float = Field(description="Cosine similarity of the two embeddings.")
    threshold: float
    match: bool = Field(description="score > threshold (the calibration's rule).")
    threshold_source: Literal["request", "calibration", "server"] = Field(
        description="request: the request's threshold; calibration: the model's calibrated threshold; "
        "server: the server's --threshold setting."
    )
    target_fpr: float | None = Field(description="The false positive rate the calibrated threshold was chosen for.")
    calibration_note: str | None = Field(
        default=None,
        description="Why the model's calibrated threshold was not applied (it was calibrated on templates, "
        "not single images); null when there is nothing to say.",
    )


class LiveResponse(BaseModel):
    status: Literal["ok"]
    uptime_s: float = Field(description="Seconds since the app was created.")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str
    inference_ms: float = Field(description="Time of the last background check's inference on the fixed probe.")
    cosine: float = Field(description="Cosine of that probe's embedding to its start-up reference (>= 0.9999).")
    detector: str | None = Field(description="The face detector's name (none loaded: null).")
    detector_ms: float | None = Field(description="Time of a detection on a fixed image (none loaded: null).")
    checked_s_ago: float = Field(description="Age of the last background check, in seconds.")
    queued_faces: int = Field(description="Faces waiting in the batching queue now.")
    max_queue: int = Field(description="The queue's bound; at it, readiness fails.")
