"""The endpoints. Each handler reads its body (:mod:`facevib.serve.intake`), calls the service
and shapes the JSON; errors are raised as ServeError and answered in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
import platform
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

import facevib
from facevib.serve.auth import require_api_key
from facevib.serve.errors import ServeError, error_body
from facevib.serve.intake import embed_specs, json_body, media_type, until_disconnect
from facevib.serve.liveness import live_payload
from facevib.serve.metrics import CONTENT_TYPE_LATEST
from facevib.serve.runtime import ModelRuntime
from facevib.serve.schemas import (
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    LiveResponse,
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
async def embed(request: Request) -> Response:
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
        return await _json_off_loop(service.pool, {**error_body(errors[0]), **body}, errors[0].status)
    return await _json_off_loop(service.pool, body)


async def _json_off_loop(pool: Any, body: dict[str, Any], status_code: int = 200) -> Response:
    """``body`` as JSON, encoded by orjson in the decoding pool: a 64-image answer is 32k floats,
    too much work for the event loop. Embeddings are float32 arrays, written at float32
    precision (shortest round-trip digits, ~10 characters a value instead of ~20)."""
    encode = functools.partial(orjson.dumps, body, option=orjson.OPT_SERIALIZE_NUMPY)
    content = await asyncio.get_running_loop().run_in_executor(pool, encode)
    return Response(content, status_code=status_code, media_type="application/json")


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


@health_router.get("/health/live", response_model=LiveResponse, summary="Liveness: the process answers")
async def health_live(request: Request) -> JSONResponse:
    """No inference, no queue, no lock: answers as long as the event loop runs (a Kubernetes
    liveness probe). Needs no API key. Served by :class:`facevib.serve.liveness.LiveProbe` in
    front of the app; this route documents it (and answers if the app is mounted without it)."""
    return JSONResponse(live_payload(server_state(request).started_at))


@health_router.get(
    "/health/ready", response_model=HealthResponse, responses=_errors(503), summary="Readiness: able to serve"
)
async def health_ready(request: Request) -> JSONResponse:
    """200 when the model is loaded, the last background inference check passed (and is
    recent) and the queue is below its bound; else 503 saying why (a Kubernetes readiness
    probe). Reads the background check's result: never waits behind traffic. Needs no API key."""
    state = server_state(request)
    service = state.ready_service()
    health, batcher = state.health, service.batcher
    assert health is not None
    last = health.last
    if last is None:
        raise ServeError("unavailable", "no health check has finished yet", headers={"Retry-After": "5"})
    if not last.ok:
        raise ServeError("unavailable", f"last health check failed: {last.problem}", headers={"Retry-After": "5"})
    age = time.time() - last.checked_at
    # A check that hangs (a stuck GPU, say) must not leave the last good answer standing.
    if age > 3 * health.interval_s + state.settings.request_timeout_s:
        raise ServeError("unavailable", f"no health check finished in the last {age:.0f} s")
    if batcher.queued_faces >= batcher.max_queue:
        raise ServeError(
            "overloaded",
            f"queue full ({batcher.queued_faces} of {batcher.max_queue} faces)",
            headers={"Retry-After": "1"},
        )
    return JSONResponse(
        {
            "status": "ok",
            "model": service.runtime.metadata.model_name,
            "inference_ms": last.inference_ms,
            "cosine": last.cosine,
            "detector": _detector_name(state.detector),
            "detector_ms": last.detector_ms,
            "checked_s_ago": round(age, 3),
            "queued_faces": batcher.queued_faces,
            "max_queue": batcher.max_queue,
        }
    )


# /health stays what it was for existing probes and scripts: readiness.
health_router.add_api_route(
    "/health",
    health_ready,
    methods=["GET"],
    response_model=HealthResponse,
    responses=_errors(503),
    summary="Alias of /health/ready",
)


def _detector_name(detector: Any) -> str | None:
    if detector is None:
        return None
    return str(getattr(detector, "name", type(detector).__name__))


def _describe(detector: Any) -> dict[str, Any] | None:
    if detector is None:
        return None
    describe = getattr(detector, "describe", None)
    return describe() if describe is not None else {"name": _detector_name(detector)}
