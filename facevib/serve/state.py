"""What the app holds between requests: settings, metrics, the loaded model, its batcher, the galleries."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field

from fastapi import Request

from facevib.gallery import Galleries
from facevib.serve.batcher import Batcher
from facevib.serve.errors import ServeError
from facevib.serve.health import HealthMonitor
from facevib.serve.images import Detector
from facevib.serve.metrics import ServeMetrics
from facevib.serve.runtime import ModelRuntime
from facevib.serve.service import Service
from facevib.serve.settings import ServeSettings

__all__ = ["ServerState", "server_state"]


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
    health: HealthMonitor | None = None
    galleries: Galleries | None = None  # 1:N galleries (--gallery-db / --gallery-url)
    started_at: float = field(default_factory=time.time)

    def ready_service(self) -> Service:
        if self.service is None:
            raise ServeError(
                "unavailable", "the model is not loaded (starting up or shutting down)", headers={"Retry-After": "5"}
            )
        return self.service

    def ready_galleries(self) -> Galleries:
        if self.galleries is None:
            if self.settings.gallery_db or self.settings.gallery_url:
                raise ServeError("unavailable", "the galleries are not loaded yet", headers={"Retry-After": "5"})
            raise ServeError(
                "galleries_disabled",
                "this server keeps no galleries: start it with --gallery-db PATH or --gallery-url postgresql://...",
            )
        return self.galleries


def server_state(request: Request) -> ServerState:
    """The state of the app serving ``request``."""
    return request.app.state.serve
