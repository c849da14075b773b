"""The FastAPI app: ``create_app(settings)`` builds it; its lifespan loads the model once.

Endpoints (their schemas and error responses are in ``/openapi.json``):

* ``POST /v1/embed``: JSON ``{"images": [...]}`` or ``multipart/form-data`` file parts ``images``.
* ``POST /v1/verify``: two images or embeddings -> cosine score, threshold, decision.
* ``GET /health``: a real inference on a fixed input (no API key needed).
* ``GET /v1/info``: model metadata, providers in use, batching settings, versions.
* ``GET /metrics``: Prometheus text format.

The request body limit is enforced while the body streams in (413 before it is all read),
and every request is counted in the metrics by a pure ASGI middleware around the app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import platform
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import facevib
from facevib.serve.batcher import Batcher, DeadlineExceeded, QueueFull
from facevib.serve.errors import ServeError, error_body, install_error_handlers
from facevib.serve.images import DetectOptions, Detector, ImageSpec
from facevib.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from facevib.serve.runtime import ModelRuntime, cpu_count
from facevib.serve.schemas import (
    EmbedEnvelope,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    MultipartEmbedRequest,
    VerifyEnvelope,
    VerifyRequest,
    VerifyResponse,
)
from facevib.serve.service import Service, parse_image, parse_model
from facevib.serve.settings import ServeSettings

__all__ = ["ServerState", "create_app"]

logger = logging.getLogger("facevib.serve")

API_KEY_HEADER = "X-API-Key"


@dataclass
class ServerState:
    """What the app holds between requests (``app.state.serve``)."""

    settings: ServeSettings
    metrics: ServeMetrics
    detector: Detector | None = None  # the face detector slot (detection mode)
    runtime: ModelRuntime | None = None
    batcher: Batcher | None = None
    service: Service | None = None
    pool: concurrent.futures.ThreadPoolExecutor | None = None
    started_at: float = field(default_factory=time.time)

    def ready_service(self) -> Service:
        if self.service is None:
            raise ServeError(
                "unavailable", "the model is not loaded (starting up or shutting down)", headers={"Retry-After": "5"}
            )
        return self.service


def _state(request: Request) -> ServerState:
    return request.app.state.serve


# ---------------------------------------------------------------------------- middleware


class LimitsAndMetrics:
    """Body size limit (413) and per-request metrics, around the whole app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: ServeMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                error = ServeError("body_too_large", f"request body of {declared} bytes exceeds {limit}", "body")
                self.metrics.errors.labels(error.code).inc()
                await JSONResponse(error_body(error), status_code=error.status)(scope, receive, send_counting)
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise ServeError("body_too_large", f"request body exceeds {limit} bytes", "body")
                return message

            await self.app(scope, receive_limited, send_counting)
        finally:
            self.metrics.observe_request(scope.get("path", ""), status, time.perf_counter() - started)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------------------- auth


def require_api_key(request: Request) -> None:
    """The API-key dependency (no-op when the server has no key); constant-time comparison."""
    expected = _state(request).settings.api_key
    if expected is None:
        return
    given = request.headers.get(API_KEY_HEADER)
    if given is None:
        raise ServeError("unauthorized", f"missing {API_KEY_HEADER} header", API_KEY_HEADER)
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise ServeError("unauthorized", f"wrong {API_KEY_HEADER}", API_KEY_HEADER)


# ---------------------------------------------------------------------------- request bodies


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _json_body(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ServeError("invalid_json", f"request body is not valid JSON ({err})", "body") from None


async def _embed_specs(request: Request, settings: ServeSettings) -> list[ImageSpec | ServeError]:
    """The request's images as specs (or per-image errors), from JSON or multipart."""
    media = _media_type(request)
    if media == "application/json":
        envelope = parse_model(EmbedEnvelope, await _json_body(request), "")
        images = envelope.images
        _check_count(len(images), settings)
        specs: list[ImageSpec | ServeError] = []
        for i, value in enumerate(images):
            try:
                specs.append(parse_image(value, f"images[{i}]"))
            except ServeError as err:
                specs.append(err)
        return specs
    if media == "multipart/form-data":
        return await _multipart_specs(request, settings)
    raise ServeError(
        "unsupported_media_type",
        f"content type {media or 'none'!r}: send application/json or multipart/form-data",
        "content-type",
    )


async def _multipart_specs(request: Request, settings: ServeSettings) -> list[ImageSpec | ServeError]:
    try:
        form = await request.form(max_files=settings.max_images, max_fields=settings.max_images + 8)
    except StarletteHTTPException as err:
        raise ServeError("invalid_multipart", f"malformed multipart body: {err.detail}", "body") from None
    aligned: bool | None = None
    parts = []
    for name, value in form.multi_items():
        if name == "aligned" and isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ServeError("validation_error", f"aligned must be true or false, got {value!r}", "aligned")
            aligned = value.lower() == "true"
        elif name == "images":
            parts.append(value)
        else:
            raise ServeError("validation_error", f"unknown form field {name!r} (expected images, aligned)", name)
    if not parts:
        raise ServeError("validation_error", "no file parts named 'images'", "images")
    _check_count(len(parts), settings)
    specs: list[ImageSpec | ServeError] = []
    for i, part in enumerate(parts):
        field = f"images[{i}]"
        if not isinstance(part, UploadFile):
            specs.append(ServeError("validation_error", "must be a file part, not a text field", field))
            continue
        data = await part.read()
        if not data:
            specs.append(ServeError("invalid_image", "empty file part", f"{field}.data"))
        else:
            specs.append(ImageSpec(data, None, aligned, field))
    await form.close()
    return specs


def _check_count(count: int, settings: ServeSettings) -> None:
    if count > settings.max_images:
        raise ServeError("validation_error", f"{count} images; at most {settings.max_images} per request", "images")


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run ``work``; if the client disconnects first, cancel it (its queued faces are dropped)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        logger.debug("client went away during %s", request.url.path)
        raise ServeError("client_disconnected", "client disconnected")  # nobody reads this answer
    return task.result()


# ---------------------------------------------------------------------------- endpoints

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
    state = _state(request)
    service = state.ready_service()
    specs = await _embed_specs(request, state.settings)
    outcome = await _until_disconnect(request, service.embed(specs, DetectOptions()))
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

    The threshold is the request's, else the model's calibrated one (from its metadata),
    else the server's `--threshold`; `threshold_source` says which.
    """
    state = _state(request)
    service = state.ready_service()
    if _media_type(request) != "application/json":
        raise ServeError("unsupported_media_type", "send application/json", "content-type")
    envelope = parse_model(VerifyEnvelope, await _json_body(request), "")
    threshold, source, target_fpr = _threshold(envelope.threshold, service.runtime, state.settings)
    vectors = await _until_disconnect(request, service.verify_embeddings({"a": envelope.a, "b": envelope.b}))
    score = float(np.clip(np.dot(vectors["a"], vectors["b"]), -1.0, 1.0))
    return JSONResponse(
        {
            "score": score,
            "threshold": threshold,
            "match": score > threshold,  # the calibration contract: accept iff cosine > threshold
            "threshold_source": source,
            "target_fpr": target_fpr,
        }
    )


def _threshold(
    requested: float | None, runtime: ModelRuntime, settings: ServeSettings
) -> tuple[float, str, float | None]:
    if requested is not None:
        return float(requested), "request", None
    calibration = runtime.metadata.calibration
    if calibration is not None:
        return float(calibration.threshold), "calibration", float(calibration.target_fpr)
    if settings.threshold is not None:
        return float(settings.threshold), "server", None
    raise ServeError(
        "no_threshold",
        "the model has no calibrated threshold (export it with --calibrate) and the server none (--threshold): "
        "pass one in the request",
        "threshold",
    )


@router.get("/v1/info", responses=_errors(401), summary="Model, providers, batching, versions")
async def info(request: Request) -> dict[str, Any]:
    """Model metadata, the ONNX Runtime providers in use (and a warning when CUDA was asked for
    and is not active), batching settings and versions."""
    state = _state(request)
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
        "detector": type(state.detector).__name__ if state.detector is not None else None,
        "auth": settings.api_key is not None,
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
    state = _state(request)
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
    state = _state(request)
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
    return JSONResponse(
        {
            "status": "ok",
            "model": runtime.metadata.model_name,
            "inference_ms": round(1e3 * (time.perf_counter() - started), 3),
        }
    )


# ---------------------------------------------------------------------------- app


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema plus the request bodies the handlers parse themselves."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, extra = models_json_schema(
                [(m, "validation") for m in (EmbedRequest, MultipartEmbedRequest, VerifyRequest, ErrorResponse)],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(extra.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def create_app(settings: ServeSettings | None = None, *, detector: Detector | None = None) -> FastAPI:
    """The server app. ``settings`` default to ``FACEVIB_*`` environment variables
    (:meth:`ServeSettings.from_env`); ``detector`` fills the detection slot.

    Nothing is loaded here: the lifespan opens the model, the batcher and the decoding threads
    once, when the server starts, and closes them on shutdown.

    Raises:
        ValueError: no model given. FileNotFoundError: the model file does not exist.
    """
    settings = settings or ServeSettings.from_env()
    if not settings.model:
        raise ValueError("no model: pass --model PATH or set FACEVIB_MODEL")
    if not Path(settings.model).is_file():
        raise FileNotFoundError(f"model {settings.model} does not exist")
    logger.setLevel(settings.log_level.upper())
    state = ServerState(settings=settings, metrics=ServeMetrics(settings.max_batch), detector=detector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(state)
        try:
            yield
        finally:
            await _stop(state)

    app = FastAPI(
        title="facevib",
        version=facevib.__version__,
        description="Face embeddings and verification with cross-request micro-batching.",
        lifespan=lifespan,
        openapi_url=None,  # served below, behind the API key
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    app.state.on_error = lambda error: state.metrics.errors.labels(error.code).inc()
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(health_router)
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_middleware(LimitsAndMetrics, max_body_bytes=settings.max_body_bytes, metrics=state.metrics)
    return app


async def _start(state: ServerState) -> None:
    settings = state.settings
    runtime = await asyncio.to_thread(
        ModelRuntime.load,
        settings.model,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads,
        max_batch=settings.max_batch,
    )
    for warning in runtime.warnings:
        logger.warning("%s", warning)
    meta = runtime.metadata
    message = (
        f"facevib serving {meta.model_name} ({runtime.path.name}, {meta.embedding_dim}-d, input {meta.input_size}) "
        f"on providers {runtime.providers}; batching max_batch={settings.max_batch} "
        f"max_delay={settings.max_delay_ms:g} ms max_queue={settings.max_queue}"
    )
    logger.info("%s", message)
    print(message, file=sys.stderr, flush=True)  # also when no logging is configured
    state.metrics.model_info.labels(meta.model_name, runtime.providers[0], str(meta.embedding_dim)).set(1)
    batcher = Batcher(
        runtime.infer,
        max_batch=settings.max_batch,
        max_delay_s=settings.max_delay_ms / 1e3,
        max_queue=settings.max_queue,
        stats=state.metrics.batcher_stats(),
    )
    await batcher.start()
    workers = settings.decode_workers or min(4, cpu_count())
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facevib-decode")
    state.runtime, state.batcher, state.pool = runtime, batcher, pool
    state.service = Service(
        settings,
        runtime,
        batcher,
        pool,
        detector=lambda: state.detector,
        count_faces=lambda mode, n: state.metrics.faces.labels(mode).inc(n),
    )


async def _stop(state: ServerState) -> None:
    state.service = None
    if state.batcher is not None:
        await state.batcher.stop()
    if state.pool is not None:
        state.pool.shutdown(wait=True)
    state.batcher = state.pool = state.runtime = None
