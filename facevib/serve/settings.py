"""Server settings: one typed object, read from ``FACEVIB_*`` environment variables or the CLI.

``python serve/app.py --max-batch 16`` and ``FACEVIB_MAX_BATCH=16 uvicorn --factory
facevib.serve:create_app`` reach the same field through the same conversion and checks
(:meth:`ServeSettings.from_strings`); the CLI flag names and environment variable names are
derived from the field names, and each field's help text is its ``metadata["help"]``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ENV_PREFIX", "ServeSettings", "env_name", "flag_name"]

ENV_PREFIX = "FACEVIB_"


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class ServeSettings:
    """Everything the server can be told. Validated on construction (``ValueError`` naming the field)."""

    model: str = _help("the ONNX file to serve (written by `python -m facevib.export`)", default="")
    host: str = _help("address to bind", default="127.0.0.1")
    port: int = _help("port to bind", default=8000)
    api_key: str | None = _help("if set, every endpoint except /health* needs header X-API-Key: KEY", default=None)
    device: str = _help("auto (CUDA when onnxruntime has it), cpu, cuda or cuda:N", default="auto")
    # Triton's dynamic batcher semantics: a batch runs when max_batch faces wait, or when the
    # oldest has waited max_delay_ms; the queue holds at most max_queue faces (503 beyond).
    max_batch: int = _help("faces per inference run (1 disables batching across requests)", default=32)
    max_delay_ms: float = _help("longest wait of the oldest queued face before a partial batch runs", default=5.0)
    max_queue: int = _help("faces allowed to wait; beyond, requests get 503 with Retry-After", default=512)
    request_timeout_s: float = _help("deadline of a request in the queue and inference (504 beyond)", default=30.0)
    max_body_mb: float = _help("largest request body (413 beyond)", default=32.0)
    max_image_pixels: int = _help(
        "largest image, width x height, read from its header (413 beyond)", default=40_000_000
    )
    max_images: int = _help("largest number of images in one /v1/embed request", default=64)
    threshold: float | None = _help(
        "cosine threshold of /v1/verify for models without a calibrated one in their metadata", default=None
    )
    detector: str = _help(
        "face detector for photos sent without landmarks: mtcnn (built in), the path of an SCRFD det_*.onnx, "
        "or none (such photos then get no_landmarks)",
        default="mtcnn",
    )
    intra_op_threads: int = _help("ONNX Runtime threads per inference (0: the cores this process may use)", default=0)
    # Measured in docs/results.md (Serving throughput): on a busy CPU spinning threads and
    # workers at the loop's priority delay /health/live; neither costs throughput when off.
    ort_spinning: bool = _help(
        "let ONNX Runtime's intra-op threads spin-wait between operators (its default; off leaves the CPU "
        "to the event loop and the decoders)",
        default=False,
    )
    worker_nice: int = _help(
        "nice levels by which inference, staging, decoding and health-check threads (and ONNX Runtime's) "
        "run below the event loop, so probes and responses are not kept waiting (Linux; 0: same priority)",
        default=10,
    )
    pipeline_depth: int = _help(
        "batches in flight at once: 2 copies the next batch to the GPU while one computes (0: 2 on CUDA, 1 on the CPU)",
        default=0,
    )
    decode_workers: int = _help(
        "threads decoding and aligning images (0: one per core this process may use)", default=0
    )
    log_level: str = _help("logging level of the facevib.serve logger", default="info")
    health_interval_s: float = _help(
        "seconds between background inference checks; /health/ready reports the last one", default=10.0
    )
    gallery_db: str | None = _help(
        "SQLite file holding the 1:N galleries (created if absent); enables /v1/galleries", default=None
    )
    gallery_url: str | None = _help(
        "postgresql:// URL of galleries shared by several servers (instead of --gallery-db)", default=None
    )
    gallery_poll_s: float = _help(
        "how often a server reads the galleries' change log (writes of other servers appear within this)",
        default=0.25,
    )
    gallery_exact_limit: int = _help(
        "gallery size from which search scans Hamming sign codes (facevib[gallery-ann]) instead of exact search",
        default=50_000,
    )

    def __post_init__(self) -> None:
        positive = ("max_batch", "max_queue", "max_images", "max_image_pixels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "max_body_mb", "health_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.max_delay_ms <= 10_000:
            raise ValueError(f"max_delay_ms must be in [0, 10000], got {self.max_delay_ms}")
        if self.max_queue < self.max_batch:
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_batch ({self.max_batch})")
        if self.max_queue < self.max_images:
            # A request's faces enter the queue together: a smaller queue could never take it.
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_images ({self.max_images})")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("intra_op_threads", "decode_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.worker_nice <= 19:
            raise ValueError(f"worker_nice must be in 0..19, got {self.worker_nice}")
        if self.pipeline_depth not in (0, 1, 2):
            raise ValueError(f"pipeline_depth must be 0 (auto), 1 or 2, got {self.pipeline_depth}")
        device = self.device.lower()
        if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if not self.detector.strip():
            raise ValueError("detector must be mtcnn, none or the path of an SCRFD .onnx file, got an empty string")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty (leave it unset to disable authentication)")
        if self.gallery_db and self.gallery_url:
            raise ValueError("give one of gallery_db and gallery_url, not both")
        if not 0 < self.gallery_poll_s <= 60:
            raise ValueError(f"gallery_poll_s must be in (0, 60], got {self.gallery_poll_s}")
        if self.gallery_exact_limit < 1:
            raise ValueError(f"gallery_exact_limit must be >= 1, got {self.gallery_exact_limit}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be debug, info, warning, error or critical, got {self.log_level!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def wants_cuda(self) -> bool:
        """Whether the CUDA provider was asked for explicitly (``cuda`` or ``cuda:N``)."""
        return self.device.lower().startswith("cuda")

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Each field's scalar type (``str | None`` -> ``str``), for converting strings."""
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                hint = next(a for a in typing.get_args(hint) if a is not type(None))
            out[f.name] = hint
        return out

    @classmethod
    def from_strings(cls, values: Mapping[str, str | None], base: ServeSettings | None = None) -> ServeSettings:
        """Settings from field name -> string (``None`` keeps ``base``'s value); the one place
        strings become typed values. Raises ``ValueError`` naming the field."""
        kinds = cls.field_types()
        changes: dict[str, Any] = {}
        for name, raw in values.items():
            if name not in kinds:
                raise ValueError(f"unknown setting {name!r}; known: {', '.join(kinds)}")
            if raw is None:
                continue
            kind = kinds[name]
            try:
                changes[name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                expected = "true or false" if kind is bool else kind.__name__
                raise ValueError(f"{name} must be {expected}, got {raw!r}") from None
        return dataclasses.replace(base or cls(), **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Settings from ``FACEVIB_<FIELD>`` variables (``FACEVIB_MAX_BATCH=16``); unset or empty ones
        keep their defaults (so ``FACEVIB_API_KEY=`` in a compose file means no key)."""
        environ = os.environ if environ is None else environ
        values = {f.name: environ.get(env_name(f.name)) or None for f in dataclasses.fields(cls)}
        return cls.from_strings(values)

    def public(self) -> dict[str, Any]:
        """The settings without the API key (for ``/v1/info`` and logs)."""
        out = dataclasses.asdict(self)
        out["api_key"] = "set" if self.api_key else None
        if self.gallery_url:
            from facevib.gallery.postgres_store import redact_url

            out["gallery_url"] = redact_url(self.gallery_url)
        return out


def _parse_bool(raw: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off); ``bool("false")`` would be True."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def env_name(name: str) -> str:
    """``max_batch`` -> ``FACEVIB_MAX_BATCH``."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """``max_batch`` -> ``--max-batch``."""
    return "--" + name.replace("_", "-")
