"""The endpoints. Each handler reads its body (:mod:`facevib.serve.intake`), calls the service
and shapes the JSON; errors are raised as ServeError and answered in one place."""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

import facevib
from facevib.serve.auth import require_api_key
from facevib.serve.batcher import DeadlineExceeded, QueueFull
from facevib.serve.errors import ServeError, error_body
from facevib.serve.intake import embed_specs, json_body, media_type, until_disconnect
from facevib.serve.metrics import CONTENT_TYPE_LATEST
from facevib.serve.runtime import ModelRuntime
from facevib.serve.schemas import (
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    VerifyEnvelope,
    VerifyResponse,
)
from facevib.serve.service import parse_model
from facevib.serve.settings import ServeSettings
from facevib.serve.state import server_state

__all__ = ["health_router", "router"]

logger = logging.getLogger("facevib.serve")


_ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or multipart body",
        401: "Missing or wrong X-API-Key",
        413: "Body or image too large",
        415: "Unsupported content type",
        422: "Invalid field (the error names it)",
        503: "Overloaded (Retry-After) or not ready",
        504: "Deadline passed",
    }.items()
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _ERRORS[code] for code in codes}


def _json_body_doc(model: str, multipart: str | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"$ref": f"#/components/schemas/{multipart}"}}
    return {"requestBody": {"required": True, "content": content}}


router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/v1/embed",
    response_model=EmbedResponse,
    responses=_errors(400, 401, 413, 415, 422, 503, 504),
    openapi_extra=_json_body_doc("EmbedRequest", "MultipartEmbedRequest"),
    summary="Embed faces",
)
async def embed(request: Request) -> JSONResponse:
    """Embeddings of aligned crops, of photos with 5 landmarks, or of detected faces.

    Each image gets its own result (`ok` with its faces, or `error`). When every image fails
    the response is the first error, with its status, plus all results.
    """
    state = server_state(request)
    service = state.ready_service()
    specs, options = await embed_specs(request, state.settings)
    outcome = await until_disconnect(request, service.embed(specs, options))
    results = [
        {"status": "error", "error": r.to_dict()} if isinstance(r, ServeError) else {"status": "ok", "faces": r}
        for r in outcome.results
    ]
    errors = [r for r in outcome.results if isinstance(r, ServeError)]
    for err in errors:
        state.metrics.errors.labels(err.code).inc()
    body = {"results": results, "model": service.runtime.metadata.model_name, "timings_ms": outcome.timings_ms}
    if errors and len(errors) == len(results):
        return JSONResponse({**error_body(errors[0]), **body}, status_code=errors[0].status)
    return JSONResponse(body)


@router.post(
    "/v1/verify",
    response_model=VerifyResponse,
    responses=_errors(400, 401, 413, 415, 422, 503, 504),
    openapi_extra=_json_body_doc("VerifyRequest"),
    summary="Compare two faces",
)
async def verify(request: Request) -> JSONResponse:
    """Cosine similarity of two faces (images or embeddings) and the match decision.

    The threshold is the request's, else the model's calibrated one (from its metadata) when it
    was calibrated on single images, else the server's `--threshold`; `threshold_source` says
    which. A template-level calibration (IJB 1:1 templates) is never applied to these
    single-image scores: `calibration_note` says so.
    """
    state = server_state(request)
    service = state.ready_service()
    if media_type(request) != "application/json":
        raise ServeError("unsupported_media_type", "send application/json", "content-type")
    envelope = parse_model(VerifyEnvelope, await json_body(request), "")
    threshold, source, target_fpr, note = _threshold(envelope.threshold, service.runtime, state.settings)
    vectors = await until_disconnect(request, service.verify_embeddings({"a": envelope.a, "b": envelope.b}))
    score = float(np.clip(np.dot(vectors["a"], vectors["b"]), -1.0, 1.0))
    return JSONResponse(
        {
            "score": score,
            "threshold": threshold,
            "match": score > threshold,  # the calibration contract: accept iff cosine > threshold
            "threshold_source": source,
            "target_fpr": target_fpr,
            "calibration_note": note,
        }
    )


def _threshold(
    requested: float | None, runtime: ModelRuntime, settings: ServeSettings
) -> tuple[float, str, float | None, str | None]:
    """``(threshold, source, target_fpr, calibration_note)`` for one /v1/verify request."""
    calibration = runtime.metadata.calibration
    note = None
    if calibration is not None and not calibration.single_image:
        note = (
            f"the model's calibrated threshold {calibration.threshold:.4f} is for {calibration.protocol} scores "
            f"({calibration.source}), not for the cosine of two single images, so it is not applied here; "
            "recalibrate with python -m facevib.export --calibrate (protocol single_image)"
        )
    if requested is not None:
        return float(requested), "request", None, note
    if calibration is not None and calibration.single_image:
        return float(calibration.threshold), "calibration", float(calibration.target_fpr), None
    if settings.threshold is not None:
        return float(settings.threshold), "server", None, note
    raise ServeError(
        "no_threshold",
        (note + "; " if note else "the model has no calibrated threshold (export it with --calibrate) and ")
        + "the server has none (--threshold): pass one in the request",
        "threshold",
    )


@router.get("/v1/info", responses=_errors(401), summary="Model, providers, batching, versions")
async def info(request: Request) -> dict[str, Any]:
    """Model metadata, the ONNX Runtime providers in use (and a warning when CUDA was asked for
    and is not active), batching settings and versions."""
    state = server_state(request)
    runtime = state.ready_service().runtime
    import cv2
    import fastapi
    import onnxruntime

    settings = state.settings
    return {
        "model": runtime.metadata.as_dict(),
        "runtime": runtime.info(),
        "batching": {
            "max_batch": settings.max_batch,
            "max_delay_ms": settings.max_delay_ms,
            "max_queue": settings.max_queue,
            "request_timeout_s": settings.request_timeout_s,
            "queued_faces": state.batcher.queued_faces if state.batcher else 0,
        },
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_images": settings.max_images,
        },
        "detector": _describe(state.detector),
        "auth": settings.api_key is not None,
        "uptime_s": round(time.time() - state.started_at, 1),
        "warnings": runtime.warnings,
        "versions": {
            "facevib": facevib.__version__,
            "onnxruntime": onnxruntime.__version__,
            "fastapi": fastapi.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "python": platform.python_version(),
        },
    }


@router.get("/metrics", response_class=Response, responses=_errors(401), summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: requests, latencies, batch sizes, queue depth, faces, errors."""
    state = server_state(request)
    if state.batcher is not None:
        state.metrics.queue_depth.set(state.batcher.queued_faces)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


health_router = APIRouter()


@health_router.get(
    "/health", response_model=HealthResponse, responses=_errors(503), summary="Liveness with a real inference"
)
async def health(request: Request) -> JSONResponse:
    """Runs the model on a fixed input through the batcher and checks the output against the one
    computed at start-up; 503 while loading, overloaded or broken. Needs no API key."""
    state = server_state(request)
    service = state.ready_service()
    runtime = service.runtime
    started = time.perf_counter()
    try:
        result = await service.batcher.submit(
            runtime.fixed_input(), timeout_s=min(10.0, state.settings.request_timeout_s)
        )
    except QueueFull:
        raise ServeError("overloaded", "queue full", headers={"Retry-After": "1"}) from None
    except DeadlineExceeded:
        raise ServeError("unavailable", "health inference timed out") from None
    except Exception as err:  # the runtime itself failed: unhealthy, not a client error
        logger.error("health inference failed", exc_info=err)
        raise ServeError("unavailable", f"inference failed ({type(err).__name__})") from None
    assert runtime.reference_output is not None
    if not np.allclose(result.outputs[0][0], runtime.reference_output, rtol=1e-3, atol=1e-4):
        raise ServeError("unavailable", "inference on the fixed input no longer matches its start-up output")
    inference_ms = round(1e3 * (time.perf_counter() - started), 3)
    detector_ms = await _check_detector(state.detector, service.pool)
    return JSONResponse(
        {
            "status": "ok",
            "model": runtime.metadata.model_name,
            "inference_ms": inference_ms,
            "detector": _detector_name(state.detector),
            "detector_ms": detector_ms,
        }
    )


# A fixed, face-free image: a working detector finds nothing in it.
_HEALTH_IMAGE = np.full((96, 128, 3), 127, dtype=np.uint8)


async def _check_detector(detector: Any, pool: Any) -> float | None:
    """Milliseconds of a detection on :data:`_HEALTH_IMAGE` in the decoding pool, or 503 when it fails."""
    if detector is None:
        return None
    started = time.perf_counter()
    try:
        faces = await asyncio.get_running_loop().run_in_executor(pool, detector.detect, _HEALTH_IMAGE)
    except Exception as err:  # the detector itself failed: unhealthy, not a client error
        logger.error("health detection failed", exc_info=err)
        raise ServeError("unavailable", f"face detector failed ({type(err).__name__})") from None
    if faces:
        raise ServeError("unavailable", f"face detector found {len(faces)} faces in a blank image")
    return round(1e3 * (time.perf_counter() - started), 3)


def _detector_name(detector: Any) -> str | None:
    if detector is None:
        return None
    return str(getattr(detector, "name", type(detector).__name__))


def _describe(detector: Any) -> dict[str, Any] | None:
    if detector is None:
        return None
    describe = getattr(detector, "describe", None)
    return describe() if describe is not None else {"name": _detector_name(detector)}
