"""One error type and one JSON error shape for every failure the server reports.

Every client mistake becomes a :class:`ServeError` with a stable ``code``, a message for
people and the ``field`` it concerns (``images[2].landmarks``, ``a.embedding``, ``body``),
and leaves the server as ``{"error": {"code", "message", "field"}}`` with the HTTP status
of its code. :func:`install_error_handlers` maps every exception type the framework can
raise onto that shape in one place, so no handler formats errors itself and no traceback
ever reaches a response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ERROR_STATUS", "ServeError", "error_body", "format_loc", "install_error_handlers"]

logger = logging.getLogger("facevib.serve")

# code -> HTTP status. Clients branch on the code; the status follows HTTP semantics.
ERROR_STATUS: dict[str, int] = {
    "invalid_json": 400,
    "invalid_multipart": 400,
    "unauthorized": 401,
    "not_found": 404,
    "gallery_not_found": 404,
    "face_not_found": 404,
    "subject_not_found": 404,
    "galleries_disabled": 404,
    "method_not_allowed": 405,
    "gallery_exists": 409,
    "body_too_large": 413,
    "image_too_large": 413,
    "too_many_faces": 413,  # more faces in one request than the queue can ever hold
    "unsupported_media_type": 415,
    "validation_error": 422,
    "invalid_base64": 422,
    "invalid_image": 422,
    "unsupported_image_format": 422,
    "wrong_crop_size": 422,
    "invalid_landmarks": 422,
    "invalid_embedding": 422,
    "no_landmarks": 422,
    "no_face": 422,
    "no_threshold": 422,
    "client_disconnected": 499,  # nginx's code: the client closed the connection first
    "internal_error": 500,
    "overloaded": 503,
    "unavailable": 503,
    "timeout": 504,
}


class ServeError(Exception):
    """A failure with a stable ``code`` (a key of :data:`ERROR_STATUS`), a message and a field.

    ``headers`` are added to the HTTP response (``Retry-After`` on 503).
    """

    def __init__(self, code: str, message: str, field: str = "", *, headers: dict[str, str] | None = None) -> None:
        if code not in ERROR_STATUS:
            raise KeyError(f"unknown error code {code!r}")  # a programming error, not a client one
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    @property
    def status(self) -> int:
        """The HTTP status of this error's code."""
        return ERROR_STATUS[self.code]

    def to_dict(self) -> dict[str, str]:
        """``{"code", "message", "field"}``: the inner part of the JSON error shape."""
        return {"code": self.code, "message": self.message, "field": self.field}

    def with_prefix(self, prefix: str) -> ServeError:
        """The same error with ``field`` placed under ``prefix`` (``images[2]`` + ``landmarks``)."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return ServeError(self.code, self.message, field, headers=self.headers)


def error_body(error: ServeError) -> dict[str, Any]:
    """The response body for ``error``."""
    return {"error": error.to_dict()}


def format_loc(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a field path: ``("images", 2, "landmarks")`` -> ``images[2].landmarks``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out += f".{part}" if out else str(part)
    return out


def validation_error(errors: Sequence[dict[str, Any]], *, prefix: str = "") -> ServeError:
    """The first of pydantic's ``errors()`` as a 422 naming its field (under ``prefix``)."""
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    field = format_loc(loc)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = str(first.get("msg", "invalid value"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    code = "invalid_json" if first.get("type") == "json_invalid" else "validation_error"
    return ServeError(code, message, field or "body")


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception onto the JSON error shape.

    ``app.state.on_error``, when set, is called with each error answered (the metrics count them).
    """

    def respond(request: Request, error: ServeError) -> JSONResponse:
        hook = getattr(request.app.state, "on_error", None)
        if hook is not None:
            hook(error)
        return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)

    async def serve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return respond(request, exc)

    async def request_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return respond(request, validation_error(exc.errors()))

    async def http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}
        code = codes.get(exc.status_code, "validation_error" if exc.status_code < 500 else "internal_error")
        error = ServeError(code, str(exc.detail), "")
        response = respond(request, error)
        response.status_code = exc.status_code  # keep the framework's status (e.g. 404 vs 405)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A server bug: log it with its traceback here, never in the response.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(request, ServeError("internal_error", "internal server error (logged on the server)"))

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_exception)
    app.add_exception_handler(Exception, unexpected)
