"""Reading request bodies: content type, JSON, multipart parts, per-image specs, disconnects.

The handlers parse bodies themselves (rather than through FastAPI's body parameters) so that
one endpoint takes JSON and multipart, and so that each image is validated on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from facevib.serve.errors import ServeError
from facevib.serve.images import DetectOptions, ImageSpec
from facevib.serve.schemas import DetectionOptions, EmbedEnvelope
from facevib.serve.service import parse_image, parse_model
from facevib.serve.settings import ServeSettings

__all__ = ["embed_specs", "json_body", "media_type", "until_disconnect"]

logger = logging.getLogger("facevib.serve")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def json_body(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ServeError("invalid_json", f"request body is not valid JSON ({err})", "body") from None


def _detect_options(options: DetectionOptions) -> DetectOptions:
    max_faces = 1 if options.largest_only else options.max_faces
    return DetectOptions(max_faces=max_faces, min_face_size=options.min_face_size)


async def embed_specs(request: Request, settings: ServeSettings) -> tuple[list[ImageSpec | ServeError], DetectOptions]:
    """The request's images as specs (or per-image errors) and its detection options, from JSON or multipart."""
    media = media_type(request)
    if media == "application/json":
        envelope = parse_model(EmbedEnvelope, await json_body(request), "")
        images = envelope.images
        _check_count(len(images), settings)
        specs: list[ImageSpec | ServeError] = []
        for i, value in enumerate(images):
            try:
                specs.append(parse_image(value, f"images[{i}]"))
            except ServeError as err:
                specs.append(err)
        return specs, _detect_options(envelope)
    if media == "multipart/form-data":
        return await _multipart_specs(request, settings)
    raise ServeError(
        "unsupported_media_type",
        f"content type {media or 'none'!r}: send application/json or multipart/form-data",
        "content-type",
    )


async def _multipart_specs(
    request: Request, settings: ServeSettings
) -> tuple[list[ImageSpec | ServeError], DetectOptions]:
    try:
        form = await request.form(max_files=settings.max_images, max_fields=settings.max_images + 8)
    except StarletteHTTPException as err:
        raise ServeError("invalid_multipart", f"malformed multipart body: {err.detail}", "body") from None
    try:  # the form's temporary files are closed on every path, errors included
        return await _form_specs(form, settings)
    finally:
        await form.close()


async def _form_specs(form: Any, settings: ServeSettings) -> tuple[list[ImageSpec | ServeError], DetectOptions]:
    aligned: bool | None = None
    parts = []
    detection: dict[str, str] = {}
    for name, value in form.multi_items():
        if name == "aligned" and isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ServeError("validation_error", f"aligned must be true or false, got {value!r}", "aligned")
            aligned = value.lower() == "true"
        elif name == "images":
            parts.append(value)
        elif name in DetectionOptions.model_fields and isinstance(value, str):
            detection[name] = value
        else:
            expected = ", ".join(["images", "aligned", *DetectionOptions.model_fields])
            raise ServeError("validation_error", f"unknown form field {name!r} (expected {expected})", name)
    options = _detect_options(parse_model(DetectionOptions, detection, ""))
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
    return specs, options


def _check_count(count: int, settings: ServeSettings) -> None:
    if count > settings.max_images:
        raise ServeError("validation_error", f"{count} images; at most {settings.max_images} per request", "images")


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
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
