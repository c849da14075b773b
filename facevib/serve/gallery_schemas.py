"""Request and response models of ``/v1/galleries``: what ``/openapi.json`` documents.

As for ``/v1/embed``, an enrollment is validated in two steps: the envelope (``faces`` is a
list), then each face on its own, its errors named under its position (``faces[2].subject``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from facevib.serve.schemas import ErrorDetail, FiniteFloat, ImageInput, _Strict

__all__ = [
    "DeleteResponse",
    "EnrollEnvelope",
    "EnrollRequest",
    "EnrollResponse",
    "FaceInput",
    "GalleryList",
    "GalleryRequest",
    "GalleryResponse",
    "SearchDecision",
    "SearchEnvelope",
    "SearchRequest",
    "SearchResponse",
]

Subject = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
Threshold = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
_IMAGE = "A face image as in /v1/embed (aligned crop, photo with landmarks, or photo for the detector: "
_IMAGE += "the largest face is used)."


class GalleryRequest(_Strict):
    """Body of ``PUT /v1/galleries/{gallery}`` (optional)."""

    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free JSON kept with the gallery; a later PUT must repeat it."
    )


class GalleryResponse(BaseModel):
    name: str
    faces: int = Field(description="Faces enrolled.")
    subjects: int = Field(description="Distinct subjects among them.")
    embedding_dim: int
    index: Literal["exact", "hamming"] = Field(
        description="How searches run now: exact, or a Hamming shortlist rescored exactly (from the size limit)."
    )
    metadata: dict[str, Any]


class GalleryList(BaseModel):
    galleries: list[GalleryResponse]


class FaceInput(_Strict):
    """One face to enroll: an image or an embedding, its subject, optional metadata."""

    subject: Subject = Field(description="Who this is (non-empty; surrounding spaces are dropped).")
    image: ImageInput | None = Field(default=None, description=_IMAGE)
    embedding: list[FiniteFloat] | None = Field(
        default=None, min_length=1, description="An embedding of the model's size (normalised here)."
    )
    metadata: dict[str, Any] | None = Field(default=None, description="Free JSON stored with the face.")

    @model_validator(mode="after")
    def _one_source(self) -> FaceInput:
        if (self.image is None) == (self.embedding is None):
            raise ValueError("give exactly one of image and embedding")
        return self


class EnrollRequest(_Strict):
    """``POST /v1/galleries/{gallery}/faces``."""

    faces: list[FaceInput] = Field(min_length=1, description="Faces to enroll; each is answered on its own.")


class EnrollEnvelope(_Strict):
    faces: list[Any] = Field(min_length=1)


class EnrolledFace(BaseModel):
    status: Literal["ok"]
    id: str = Field(description="The new face's id (for DELETE .../faces/{id}).")
    subject: str


class FailedFace(BaseModel):
    status: Literal["error"]
    error: ErrorDetail


class EnrollResponse(BaseModel):
    faces: list[EnrolledFace | FailedFace] = Field(
        description="One entry per face, in request order; every ok face is durable when this arrives."
    )


class DeleteResponse(BaseModel):
    gallery: str
    deleted: list[str] = Field(description="Ids of the faces deleted (for a gallery: empty, see `faces`).")
    faces: int = Field(description="Number of faces deleted.")


class SearchRequest(_Strict):
    """``POST /v1/galleries/{gallery}/search``: one face, as an image or an embedding."""

    image: ImageInput | None = Field(default=None, description=_IMAGE)
    embedding: list[FiniteFloat] | None = Field(default=None, min_length=1)
    top_k: int = Field(default=5, ge=1, le=1000, description="Subjects to return, best first.")
    threshold: Threshold | None = Field(
        default=None, description="Open-set cosine threshold overriding the model's calibrated one."
    )


class SearchEnvelope(_Strict):
    image: dict[str, Any] | None = None
    embedding: Any = None
    top_k: int = Field(default=5, ge=1, le=1000)
    threshold: Threshold | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SearchEnvelope:
        if (self.image is None) == (self.embedding is None):
            raise ValueError("give exactly one of image and embedding")
        return self


class Match(BaseModel):
    subject: str
    id: str = Field(description="The subject's best-scoring face.")
    score: float = Field(description="The subject's score: the highest cosine over its faces.")


class SearchDecision(BaseModel):
    subject: str | None = Field(description="The best subject when its score > threshold, else null (unknown).")
    threshold: float | None = Field(description="null: no threshold known (no decision made).")
    threshold_source: Literal["request", "calibration", "none"] = Field(
        description="request: the request's; calibration: the model's, calibrated at target_fpir "
        "(python -m facevib.export --calibrate-identification); none: neither."
    )
    target_fpir: float | None = Field(description="The FPIR the calibrated threshold was chosen for.")


class SearchResponse(BaseModel):
    matches: list[Match]
    decision: SearchDecision
