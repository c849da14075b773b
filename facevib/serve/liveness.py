"""``GET /health/live`` answered at the ASGI layer, before routing and the rest of the app.

A liveness probe asks one thing: does the process still answer? Routing it through FastAPI
(request object, dependency resolution, the metrics middleware, JSON rendering) adds work on
the event loop for no information, and the probe then waits behind whatever else the loop
does. This middleware sits outside everything but Starlette's error handler and answers from
two preformatted header lists; the FastAPI route of the same path only documents it in
``/openapi.json``. Liveness requests are therefore not counted in ``/metrics``.
"""

from __future__ import annotations

import time

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LIVE_PATH", "LiveProbe", "live_payload"]

LIVE_PATH = "/health/live"


def live_payload(started_at: float) -> dict[str, object]:
    """The body of ``/health/live``: the process answers, and since when."""
    return {"status": "ok", "uptime_s": round(time.time() - started_at, 3)}


class LiveProbe:
    """Answers ``GET``/``HEAD /health/live`` itself; passes every other request to ``app``."""

    def __init__(self, app: ASGIApp, *, started_at: float) -> None:
        self.app = app
        self.started_at = started_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != LIVE_PATH or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = orjson.dumps(live_payload(self.started_at))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
