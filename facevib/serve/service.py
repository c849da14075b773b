"""What the endpoints do, apart from HTTP: images -> faces -> batched embeddings -> results.

Decoding and alignment run in a thread pool (OpenCV releases the GIL), never on the event
loop; all faces of one request go to the batcher as one item, so they share a batch with
other requests' faces. Errors of one image become that image's result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from facevib.contract import QUALITY_OUTPUT, UNCERTAINTY_OUTPUT
from facevib.serve.batcher import Batcher, DeadlineExceeded, QueueFull, TooLarge
from facevib.serve.errors import ServeError, validation_error
from facevib.serve.images import DetectOptions, Detector, FaceCrop, ImageSpec, normalise, prepare_faces
from facevib.serve.runtime import ModelRuntime
from facevib.serve.schemas import EmbeddingInput, ImageInput
from facevib.serve.settings import ServeSettings

__all__ = ["EmbedOutcome", "Prepared", "Service", "parse_image", "parse_model", "unit_embedding"]


def parse_model(model: type[BaseModel], value: Any, field: str) -> Any:
    """``model.model_validate(value)``, its first error as a 422 named under ``field``."""
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise validation_error(err.errors(include_url=False), prefix=field) from None


def parse_image(value: Any, field: str) -> ImageSpec:
    """A JSON image object -> :class:`ImageSpec` (base64 decoded), or a ServeError naming ``field``."""
    from facevib.serve.images import decode_base64

    image = parse_model(ImageInput, value, field)
    landmarks = np.asarray(image.landmarks, dtype=np.float64) if image.landmarks is not None else None
    return ImageSpec(decode_base64(image.data, f"{field}.data"), landmarks, image.aligned, field)


def unit_embedding(value: Any, dim: int, field: str) -> np.ndarray:
    """A JSON ``{"embedding": [...]}`` -> the unit vector, or a 422 naming ``field`` (size, NaN, zero)."""
    vector = np.asarray(parse_model(EmbeddingInput, value, field).embedding, dtype=np.float64)
    where = f"{field}.embedding" if field else "embedding"
    if vector.shape != (dim,):
        raise ServeError("invalid_embedding", f"embedding has {vector.size} values, the model's have {dim}", where)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise ServeError("invalid_embedding", f"embedding norm is {norm}", where)
    return vector / norm


@dataclass(frozen=True)
class Prepared:
    """One image after decoding and alignment."""

    mode: str
    faces: list[FaceCrop]


@dataclass
class EmbedOutcome:
    """Per image either a list of face dicts or an error; plus timings in milliseconds."""

    results: list[list[dict[str, Any]] | ServeError]
    timings_ms: dict[str, float]


class Service:
    """The embedding pipeline of one app."""

    def __init__(
        self,
        settings: ServeSettings,
        runtime: ModelRuntime,
        batcher: Batcher,
        pool: concurrent.futures.Executor,
        detector: Callable[[], Detector | None],
        count_faces: Callable[[str, int], None],
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.batcher = batcher
        self.pool = pool
        self._detector = detector
        self._count_faces = count_faces
        preprocess = runtime.metadata.preprocess
        self._normalise = functools.partial(
            normalise, mean=preprocess["mean"], std=preprocess["std"], bgr=preprocess["color"] == "BGR"
        )

    # ------------------------------------------------------------------ stages

    def _prepare(self, spec: ImageSpec | ServeError, options: DetectOptions | None) -> Prepared | ServeError:
        if isinstance(spec, ServeError):
            return spec
        try:
            mode, faces = prepare_faces(
                spec,
                input_size=self.runtime.input_size,
                max_pixels=self.settings.max_image_pixels,
                detector=self._detector(),
                options=options,
            )
        except ServeError as err:
            return err
        return Prepared(mode, faces)

    async def _prepare_all(
        self, specs: Sequence[ImageSpec | ServeError], options: DetectOptions | None
    ) -> list[Prepared | ServeError]:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self.pool, self._prepare, spec, options) for spec in specs]
        return list(await asyncio.gather(*jobs))

    async def _infer(self, crops: list[np.ndarray], deadline: float) -> tuple[tuple[np.ndarray, ...], float, float]:
        """Embeddings (and uncertainty) of ``crops`` through the batcher; (outputs, queue_s, infer_s)."""
        loop = asyncio.get_running_loop()
        inputs = await loop.run_in_executor(self.pool, self._normalise, np.stack(crops))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServeError("timeout", f"request deadline of {self.settings.request_timeout_s:g} s passed")
        try:
            result = await self.batcher.submit(inputs, timeout_s=remaining)
        except TooLarge as err:  # retrying cannot help: not a 503
            raise ServeError("too_many_faces", f"{err}; send fewer images or faces per request") from None
        except QueueFull as err:
            raise ServeError(
                "overloaded", f"server overloaded ({err}); retry shortly", headers={"Retry-After": "1"}
            ) from None
        except DeadlineExceeded as err:
            raise ServeError("timeout", f"no result within the request deadline ({err})") from None
        return result.outputs, result.queue_s, result.infer_s

    # ------------------------------------------------------------------ endpoints

    async def embed(
        self, specs: Sequence[ImageSpec | ServeError], options: DetectOptions | None = None
    ) -> EmbedOutcome:
        """Embed every face of every image; one image's error does not fail the others."""
        started = time.monotonic()
        deadline = started + self.settings.request_timeout_s
        prepared = await self._prepare_all(specs, options)
        decoded = time.monotonic()
        crops = [face.crop for item in prepared if isinstance(item, Prepared) for face in item.faces]
        queue_s = infer_s = 0.0
        outputs: tuple[np.ndarray, ...] = ()
        if crops:
            outputs, queue_s, infer_s = await self._infer(crops, deadline)
        results: list[list[dict[str, Any]] | ServeError] = []
        row = 0
        for item, spec in zip(prepared, specs, strict=True):
            if isinstance(item, ServeError):
                results.append(item)
                continue
            try:
                names = self.runtime.output_names
                results.append([_face_result(face, outputs, names, row + i) for i, face in enumerate(item.faces)])
                self._count_faces(item.mode, len(item.faces))
            except ServeError as err:
                assert isinstance(spec, ImageSpec)
                results.append(ServeError(err.code, err.message, spec.field))
            row += len(item.faces)
        total = time.monotonic() - started
        timings = {
            "decode": 1e3 * (decoded - started),
            "queue": 1e3 * queue_s,
            "inference": 1e3 * infer_s,
            "total": 1e3 * total,
        }
        return EmbedOutcome(results, {k: round(v, 3) for k, v in timings.items()})

    async def verify_embeddings(self, sides: dict[str, Any]) -> dict[str, np.ndarray]:
        """``{"a": json, "b": json}`` -> unit embeddings; images embedded together in one submission."""
        vectors: dict[str, np.ndarray] = {}
        images: dict[str, ImageSpec] = {}
        for name, value in sides.items():
            if isinstance(value, dict) and "embedding" in value:
                vectors[name] = unit_embedding(value, self.runtime.embedding_dim, name)
            else:
                images[name] = parse_image(value, name)
        if images:
            outcome = await self.embed(list(images.values()), DetectOptions(max_faces=1))
            for name, result in zip(images, outcome.results, strict=True):
                if isinstance(result, ServeError):
                    raise result
                vectors[name] = np.asarray(result[0]["embedding"], dtype=np.float64)  # largest face
        return vectors


def _per_face(outputs: tuple[np.ndarray, ...], names: list[str], name: str, row: int) -> float | None:
    """Output ``name`` of face ``row`` as a float; None when the model has no such output or gave NaN/inf."""
    if name not in names:
        return None
    value = float(outputs[names.index(name)][row])
    return value if math.isfinite(value) else None


def _face_result(face: FaceCrop, outputs: tuple[np.ndarray, ...], names: list[str], row: int) -> dict[str, Any]:
    raw = outputs[0][row].astype(np.float64)
    norm = float(np.linalg.norm(raw))
    if not math.isfinite(norm) or norm == 0.0:
        # The model, not the client, produced this: say so without failing the other images.
        raise ServeError("internal_error", f"the model produced an embedding of norm {norm}")
    return {
        "embedding": (raw / norm).astype(np.float32),  # float32 array: encoded at its own precision
        "norm": norm,
        "uncertainty": _per_face(outputs, names, UNCERTAINTY_OUTPUT, row),
        "quality": _per_face(outputs, names, QUALITY_OUTPUT, row),
        "bbox": face.bbox,
        "landmarks": face.landmarks,
        "det_score": face.det_score,
    }
