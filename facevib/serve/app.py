"""The FastAPI app: ``create_app(settings)`` builds it; its lifespan loads the model once.

Endpoints (their schemas and error responses are in ``/openapi.json``; handlers in
:mod:`facevib.serve.routes`):

* ``POST /v1/embed``: JSON ``{"images": [...]}`` or ``multipart/form-data`` file parts ``images``.
* ``POST /v1/verify``: two images or embeddings -> cosine score, threshold, decision.
* ``GET /health/live``: the process answers (no inference). ``GET /health/ready`` (alias
  ``/health``): model loaded, last background inference check passed, queue below its bound
  (:mod:`facevib.serve.health`). No API key needed.
* ``GET /v1/info``: model metadata, providers in use, batching settings, versions.
* ``GET /metrics``: Prometheus text format.
* ``/v1/galleries``: 1:N galleries (:mod:`facevib.serve.gallery_routes`), with ``--gallery-db`` or
  ``--gallery-url``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema

import facevib
from facevib.gallery import Galleries, open_store
from facevib.serve.auth import require_api_key
from facevib.serve.batcher import Batcher
from facevib.serve.errors import install_error_handlers
from facevib.serve.gallery_routes import gallery_router
from facevib.serve.gallery_schemas import EnrollRequest, GalleryRequest, SearchRequest
from facevib.serve.health import HealthMonitor
from facevib.serve.images import Detector
from facevib.serve.liveness import LiveProbe
from facevib.serve.metrics import ServeMetrics
from facevib.serve.middleware import LimitsAndMetrics
from facevib.serve.routes import health_router, router
from facevib.serve.runtime import ModelRuntime, cpu_count
from facevib.serve.schemas import EmbedRequest, ErrorResponse, MultipartEmbedRequest, VerifyRequest
from facevib.serve.service import Service
from facevib.serve.settings import ServeSettings
from facevib.serve.state import ServerState
from facevib.serve.threads import worker_pool

__all__ = ["create_app"]

logger = logging.getLogger("facevib.serve")


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema plus the request bodies the handlers parse themselves."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, extra = models_json_schema(
                [
                    (m, "validation")
                    for m in (
                        EmbedRequest,
                        MultipartEmbedRequest,
                        VerifyRequest,
                        ErrorResponse,
                        GalleryRequest,
                        EnrollRequest,
                        SearchRequest,
                    )
                ],
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
        ValueError: no model given, or a gallery store that cannot be opened for writing (named).
        FileNotFoundError: the model file does not exist.
    """
    settings = settings or ServeSettings.from_env()
    if not settings.model:
        raise ValueError("no model: pass --model PATH or set FACEVIB_MODEL")
    if not Path(settings.model).is_file():
        raise FileNotFoundError(f"model {settings.model} does not exist")
    detector_spec = settings.detector.strip()
    if detector is None and detector_spec.lower() not in ("none", "mtcnn") and not Path(detector_spec).is_file():
        raise FileNotFoundError(f"detector {detector_spec} does not exist (mtcnn, none or an SCRFD .onnx file)")
    if settings.gallery_db or settings.gallery_url:
        # Fail here, in one line naming the file or URL, rather than at the first enrollment.
        open_store(db=settings.gallery_db, url=settings.gallery_url).close()
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
    app.include_router(gallery_router)
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_middleware(LimitsAndMetrics, max_body_bytes=settings.max_body_bytes, metrics=state.metrics)
    app.add_middleware(LiveProbe, started_at=state.started_at)  # added last: outside the metrics
    return app


async def _start(state: ServerState) -> None:
    settings = state.settings
    nice = settings.worker_nice
    # Loaded in a thread at the workers' priority: ONNX Runtime's intra-op threads, created
    # with the session, inherit it (facevib.serve.threads).
    loader = worker_pool(1, "facevib-load", nice)
    try:
        runtime = await asyncio.get_running_loop().run_in_executor(
            loader,
            functools.partial(
                ModelRuntime.load,
                settings.model,
                device=settings.device,
                intra_op_threads=settings.intra_op_threads,
                max_batch=settings.max_batch,
                spinning=settings.ort_spinning,
            ),
        )
    finally:
        loader.shutdown(wait=False)
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
        runtime.run,
        stage=runtime.stage,
        pipeline_depth=settings.pipeline_depth or runtime.pipeline_depth,
        thread_factory=lambda name: worker_pool(1, name, nice),
        max_batch=settings.max_batch,
        max_delay_s=settings.max_delay_ms / 1e3,
        max_queue=settings.max_queue,
        stats=state.metrics.batcher_stats(),
    )
    # Everything started so far is owned by state at once, so a failure below (a detector
    # that does not load, say) is cleaned up by _stop instead of leaking a task and threads.
    state.runtime, state.batcher = runtime, batcher
    try:
        await batcher.start()
        if state.detector is None and settings.detector.strip().lower() != "none":
            from facevib.detect import load_detector

            # One ONNX Runtime thread per call: detections run in parallel in the decoding threads.
            state.detector = await asyncio.to_thread(
                load_detector, settings.detector.strip(), threads=1, device=settings.device
            )
            described = state.detector.describe()
            logger.info("face detector: %s", described)
            for warning in described.get("warnings", []):
                logger.warning("%s", warning)
        workers = settings.decode_workers or cpu_count()  # decoding and alignment scale with the cores
        state.pool = worker_pool(workers, "facevib-decode", nice)
        state.health = HealthMonitor(runtime, state.detector, settings.health_interval_s, nice=nice)
        await state.health.start()
    except BaseException:
        await _stop(state)
        raise
    pool = state.pool
    assert pool is not None
    state.service = Service(
        settings,
        runtime,
        batcher,
        pool,
        detector=lambda: state.detector,
        count_faces=lambda mode, n: state.metrics.faces.labels(mode).inc(n),
    )
    if settings.gallery_db or settings.gallery_url:
        galleries = Galleries(
            open_store(db=settings.gallery_db, url=settings.gallery_url),
            exact_limit=settings.gallery_exact_limit,
            poll_s=settings.gallery_poll_s,
        )
        await asyncio.to_thread(galleries.start)
        state.galleries = galleries


async def _stop(state: ServerState) -> None:
    state.service = None
    if state.health is not None:
        await state.health.stop()
    if state.galleries is not None:
        await asyncio.to_thread(state.galleries.stop)
        state.galleries = None
    if state.batcher is not None:
        await state.batcher.stop()
    if state.pool is not None:  # running decodes finish, in a thread: the loop keeps answering
        await asyncio.to_thread(state.pool.shutdown, True)
    state.batcher = state.pool = state.runtime = state.health = None
