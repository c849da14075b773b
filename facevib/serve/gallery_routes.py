"""``/v1/galleries``: enroll faces by subject and search them (1:N identification, open set).

Every store call blocks (SQLite fsync, PostgreSQL round trips), so it runs in a worker thread,
never on the event loop. Errors of the gallery package become the server's error shape here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from facevib.gallery import GalleryConflict, GalleryError, GalleryNotFound, NewFace, UnknownFace, UnknownSubject
from facevib.gallery.store import check_gallery_name
from facevib.serve.auth import require_api_key
from facevib.serve.errors import ServeError, error_body
from facevib.serve.gallery_schemas import (
    DeleteResponse,
    EnrollEnvelope,
    EnrollResponse,
    FaceInput,
    GalleryList,
    GalleryRequest,
    GalleryResponse,
    SearchEnvelope,
    SearchResponse,
)
from facevib.serve.images import DetectOptions
from facevib.serve.intake import json_body, media_type
from facevib.serve.routes import _errors, _json_body_doc
from facevib.serve.schemas import ErrorResponse
from facevib.serve.service import Service, parse_image, parse_model, unit_embedding
from facevib.serve.state import server_state

__all__ = ["GALLERY_SCHEMAS", "gallery_router"]

# The bodies the handlers parse themselves, added to /openapi.json by the app.
GALLERY_SCHEMAS = ("GalleryRequest", "EnrollRequest", "SearchRequest")

gallery_router = APIRouter(prefix="/v1/galleries", dependencies=[Depends(require_api_key)], tags=["galleries"])

_CODES = {GalleryNotFound: "gallery_not_found", UnknownFace: "face_not_found", UnknownSubject: "subject_not_found"}
_FIELDS = {GalleryNotFound: "gallery", UnknownFace: "id", UnknownSubject: "subject", GalleryConflict: "gallery"}
_NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown gallery, face or subject (the error names it)"}}
_CONFLICT = {409: {"model": ErrorResponse, "description": "The gallery exists with other settings"}}

T = TypeVar("T")


async def _store(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a thread, gallery errors as ServeErrors naming the value."""
    try:
        return await asyncio.to_thread(call, *args)
    except GalleryError as err:
        code = "gallery_exists" if isinstance(err, GalleryConflict) else _CODES[type(err)]
        raise ServeError(code, str(err), _FIELDS[type(err)]) from None


def _name(gallery: str) -> str:
    try:
        return check_gallery_name(gallery)
    except ValueError as err:
        raise ServeError("validation_error", str(err), "gallery") from None


async def _json(request: Request) -> Any:
    if media_type(request) != "application/json":
        raise ServeError("unsupported_media_type", "send application/json", "content-type")
    return await json_body(request)


@gallery_router.put(
    "/{gallery}",
    response_model=GalleryResponse,
    status_code=200,
    responses={201: {"model": GalleryResponse, "description": "Created"}, **_errors(401, 422), **_CONFLICT},
    openapi_extra={"requestBody": {"required": False, **_json_body_doc("GalleryRequest")["requestBody"]}},
    summary="Create a gallery (idempotent)",
)
async def create_gallery(gallery: str, request: Request) -> JSONResponse:
    """201 when created, 200 when it already existed with the same metadata, 409 when with other metadata."""
    state = server_state(request)
    galleries = state.ready_galleries()
    name = _name(gallery)
    body = await request.body()
    settings = parse_model(GalleryRequest, await _json(request), "") if body.strip() else GalleryRequest()
    dim = state.ready_service().runtime.embedding_dim
    created = await _store(galleries.create, name, dim, settings.metadata)
    return JSONResponse(galleries.describe(name), status_code=201 if created else 200)


@gallery_router.get("", response_model=GalleryList, responses=_errors(401), summary="List galleries")
async def list_galleries(request: Request) -> dict[str, Any]:
    galleries = server_state(request).ready_galleries()
    out = []
    for name in galleries.names():
        try:
            out.append(galleries.describe(name))
        except GalleryNotFound:  # dropped between the two calls
            continue
    return {"galleries": out}


@gallery_router.get(
    "/{gallery}", response_model=GalleryResponse, responses={**_errors(401), **_NOT_FOUND}, summary="One gallery"
)
async def get_gallery(gallery: str, request: Request) -> dict[str, Any]:
    galleries = server_state(request).ready_galleries()
    return await _store(galleries.describe, gallery)


@gallery_router.delete(
    "/{gallery}", response_model=DeleteResponse, responses={**_errors(401), **_NOT_FOUND}, summary="Delete a gallery"
)
async def delete_gallery(gallery: str, request: Request) -> dict[str, Any]:
    galleries = server_state(request).ready_galleries()
    count = await _store(galleries.drop, gallery)
    return {"gallery": gallery, "deleted": [], "faces": count}


async def _enroll_vectors(
    service: Service, items: list[FaceInput | ServeError], dim: int, fields: list[str]
) -> list[np.ndarray | ServeError]:
    """Each face's unit embedding (images embedded together, largest face), or its error."""
    out: list[np.ndarray | ServeError] = []
    specs, where = [], []
    for i, (item, field) in enumerate(zip(items, fields, strict=True)):
        if isinstance(item, ServeError):
            out.append(item)
        elif item.embedding is not None:
            try:
                out.append(unit_embedding({"embedding": item.embedding}, dim, field))
            except ServeError as err:
                out.append(err)
        else:
            out.append(ServeError("internal_error", "not embedded"))  # replaced below
            try:
                specs.append(parse_image(item.image.model_dump(exclude_none=True), f"{field}.image"))
                where.append(i)
            except ServeError as err:
                out[i] = err
    if specs:
        outcome = await service.embed(specs, DetectOptions(max_faces=1))
        for i, result in zip(where, outcome.results, strict=True):
            out[i] = result if isinstance(result, ServeError) else np.asarray(result[0]["embedding"], np.float64)
    return out


@gallery_router.post(
    "/{gallery}/faces",
    response_model=EnrollResponse,
    responses={**_errors(400, 401, 413, 415, 422, 503, 504), **_NOT_FOUND},
    openapi_extra=_json_body_doc("EnrollRequest"),
    summary="Enroll faces",
)
async def enroll(gallery: str, request: Request) -> JSONResponse:
    """Enroll faces (images or embeddings) under their subjects.

    Each face gets its own result; the answer arrives after every ok face is committed
    durably. When every face fails, the response is the first error, with its status, plus all results.
    """
    state = server_state(request)
    galleries, service = state.ready_galleries(), state.ready_service()
    dim = await _store(galleries.embedding_dim, gallery)
    envelope = parse_model(EnrollEnvelope, await _json(request), "")
    if len(envelope.faces) > state.settings.max_images:
        raise ServeError("validation_error", f"at most {state.settings.max_images} faces per request", "faces")
    fields = [f"faces[{i}]" for i in range(len(envelope.faces))]
    items: list[FaceInput | ServeError] = []
    for value, field in zip(envelope.faces, fields, strict=True):
        try:
            items.append(parse_model(FaceInput, value, field))
        except ServeError as err:
            items.append(err)
    vectors = await _enroll_vectors(service, items, dim, fields)
    new = [
        NewFace(item.subject, vector.astype(np.float32), item.metadata)
        for item, vector in zip(items, vectors, strict=True)
        if not isinstance(vector, ServeError) and isinstance(item, FaceInput)
    ]
    ids = iter(await _store(galleries.enroll, gallery, new) if new else [])
    results: list[dict[str, Any]] = []
    for item, vector in zip(items, vectors, strict=True):
        if isinstance(vector, ServeError):
            state.metrics.errors.labels(vector.code).inc()
            results.append({"status": "error", "error": vector.to_dict()})
        else:
            assert isinstance(item, FaceInput)
            results.append({"status": "ok", "id": next(ids), "subject": item.subject})
    if not new:
        first = next(v for v in vectors if isinstance(v, ServeError))
        return JSONResponse({**error_body(first), "faces": results}, status_code=first.status)
    return JSONResponse({"faces": results})


@gallery_router.delete(
    "/{gallery}/faces/{face_id}",
    response_model=DeleteResponse,
    responses={**_errors(401), **_NOT_FOUND},
    summary="Delete one face",
)
async def delete_face(gallery: str, face_id: str, request: Request) -> dict[str, Any]:
    galleries = server_state(request).ready_galleries()
    await _store(galleries.remove_face, gallery, face_id)
    return {"gallery": gallery, "deleted": [face_id], "faces": 1}


@gallery_router.delete(
    "/{gallery}/subjects/{subject}",
    response_model=DeleteResponse,
    responses={**_errors(401), **_NOT_FOUND},
    summary="Delete every face of a subject",
)
async def delete_subject(gallery: str, subject: str, request: Request) -> dict[str, Any]:
    galleries = server_state(request).ready_galleries()
    ids = await _store(galleries.remove_subject, gallery, subject)
    return {"gallery": gallery, "deleted": ids, "faces": len(ids)}


async def _query_vector(service: Service, envelope: SearchEnvelope, dim: int) -> np.ndarray:
    if envelope.embedding is not None:
        return unit_embedding({"embedding": envelope.embedding}, dim, "")
    assert envelope.image is not None
    outcome = await service.embed([parse_image(envelope.image, "image")], DetectOptions(max_faces=1))
    (result,) = outcome.results
    if isinstance(result, ServeError):
        raise result
    return np.asarray(result[0]["embedding"], np.float64)


def _decision(requested: float | None, service: Service) -> tuple[float | None, str, float | None]:
    if requested is not None:
        return float(requested), "request", None
    calibration = service.runtime.metadata.identification
    if calibration is not None:
        return float(calibration.threshold), "calibration", float(calibration.target_fpir)
    return None, "none", None


@gallery_router.post(
    "/{gallery}/search",
    response_model=SearchResponse,
    responses={**_errors(400, 401, 413, 415, 422, 503, 504), **_NOT_FOUND},
    openapi_extra=_json_body_doc("SearchRequest"),
    summary="Search a gallery (1:N, open set)",
)
async def search(gallery: str, request: Request) -> JSONResponse:
    """The `top_k` best subjects, each scored by its best face (max cosine over the subject's faces),
    and the open-set decision: the best subject when its score > threshold, else null.

    The threshold is the request's, else the model's identification calibration (its metadata);
    `threshold_source` says which (`none`: no decision is made).
    """
    state = server_state(request)
    galleries, service = state.ready_galleries(), state.ready_service()
    envelope = parse_model(SearchEnvelope, await _json(request), "")
    dim = await _store(galleries.embedding_dim, gallery)
    vector = await _query_vector(service, envelope, dim)
    matches = await _store(galleries.search, gallery, vector.astype(np.float32), envelope.top_k)
    threshold, source, target = _decision(envelope.threshold, service)
    subject = None
    if threshold is not None and matches and matches[0].score > threshold:
        subject = matches[0].subject
    return JSONResponse(
        {
            "matches": [{"subject": m.subject, "id": m.face_id, "score": m.score} for m in matches],
            "decision": {"subject": subject, "threshold": threshold, "threshold_source": source, "target_fpir": target},
        }
    )
