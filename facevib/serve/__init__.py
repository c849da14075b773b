"""The HTTP embedding and verification server (FastAPI + ONNX Runtime, no torch).

``uvicorn --factory facevib.serve:create_app`` (configured by ``FACEVIB_*`` variables) or
``python serve/app.py --model model.onnx``. See :mod:`facevib.serve.app` for the endpoints.
The app is imported on first use, so the batcher and image helpers load without FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from facevib.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from facevib.serve.settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module 'facevib.serve' has no attribute {name!r}")
