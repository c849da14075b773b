"""Prometheus metrics of one app (its own registry, so several apps can live in one process).

Names follow Prometheus conventions: base unit seconds, counters end in ``_total``, labels
take few values (endpoint is the route, not the URL; status is the HTTP code). Operators
used to Triton find the same quantities: ``facevib_batch_size``'s ``_count`` is the number
of inference runs (``nv_inference_exec_count``), its ``_sum`` the faces inferred
(``nv_inference_count``), so their ratio is the mean batch size.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from facevib.serve.batcher import BatcherStats

__all__ = ["CONTENT_TYPE_LATEST", "ENDPOINTS", "ServeMetrics"]

# Routes with their own label value; every other path counts as "other".
ENDPOINTS = (
    "/v1/embed",
    "/v1/verify",
    "/health",
    "/health/live",
    "/health/ready",
    "/v1/info",
    "/metrics",
    "/openapi.json",
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """Every metric the server exports, in one registry."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "facevib_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "facevib_request_duration_seconds",
            "Time from request to response, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("facevib_errors", "Errors answered, by error code", ["code"], registry=r)
        self.faces = Counter(
            "facevib_faces", "Faces embedded, by mode (aligned, landmarks, detect)", ["mode"], registry=r
        )
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch_size = Histogram(
            "facevib_batch_size",
            "Faces per inference run",
            buckets=[b for b in batch_buckets if b <= max_batch],
            registry=r,
        )
        self.inference_seconds = Histogram(
            "facevib_inference_duration_seconds",
            "Run time of one inference batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "facevib_queue_duration_seconds",
            "Time a face waited in the batching queue",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("facevib_queue_depth", "Faces waiting in the batching queue", registry=r)
        self.dropped = Counter(
            "facevib_dropped",
            "Queued items dropped before inference (cancelled: client gone; deadline)",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "facevib_model_info", "The model served (value 1)", ["model", "provider", "embedding_dim"], registry=r
        )

    def batcher_stats(self) -> BatcherStats:
        """Callbacks that feed the batcher's events into these metrics."""

        def on_batch(size: int, seconds: float) -> None:
            self.batch_size.observe(size)
            self.inference_seconds.observe(seconds)

        return BatcherStats(
            on_batch=on_batch,
            on_queue_wait=self.queue_seconds.observe,
            on_depth=self.queue_depth.set,
            on_drop=lambda reason: self.dropped.labels(reason).inc(),
        )

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
