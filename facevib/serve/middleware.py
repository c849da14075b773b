"""Request body limit and request metrics: one pure ASGI middleware around the whole app.

The limit is checked against ``Content-Length`` first and then while the body streams in
(chunked uploads), so an oversized body gets 413 before it is all read.
"""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facevib.serve.errors import ServeError, error_body
from facevib.serve.metrics import ServeMetrics

__all__ = ["LimitsAndMetrics"]


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
