"""What the app holds between requests: settings, metrics, the loaded model and its batcher."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field

from fastapi import Request

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
    started_at: float = field(default_factory=time.time)

    def ready_service(self) -> Service:
        if self.service is None:
            raise ServeError(
                "unavailable", "the model is not loaded (starting up or shutting down)", headers={"Retry-After": "5"}
            )
        return self.service


def server_state(request: Request) -> ServerState:
    """The state of the app serving ``request``."""
    return request.app.state.serve
