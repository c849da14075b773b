"""Optional API key: a FastAPI dependency on every route except ``/health``."""

from __future__ import annotations

import hmac

from fastapi import Request

from facevib.serve.errors import ServeError
from facevib.serve.state import server_state

__all__ = ["API_KEY_HEADER", "require_api_key"]

API_KEY_HEADER = "X-API-Key"


def require_api_key(request: Request) -> None:
    """The API-key dependency (no-op when the server has no key); constant-time comparison."""
    expected = server_state(request).settings.api_key
    if expected is None:
        return
    given = request.headers.get(API_KEY_HEADER)
    if given is None:
        raise ServeError("unauthorized", f"missing {API_KEY_HEADER} header", API_KEY_HEADER)
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise ServeError("unauthorized", f"wrong {API_KEY_HEADER}", API_KEY_HEADER)
