"""Training machinery: builders, the task (what is optimised), data order, optimisation,
checkpoints, callbacks and the loop.

Entry points (``train/arcface.py``) parse arguments and call :class:`Trainer`; nothing
here parses arguments or starts processes. The names below are imported on first use, so
that :mod:`facevib.engine.checkpoint` (read by the model loader) does not pull in the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FaceRecognitionTask", "TaskBatch", "Trainer"]

_HOMES = {"FaceRecognitionTask": "task", "TaskBatch": "task", "Trainer": "trainer"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'facevib.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"facevib.engine.{_HOMES[name]}"), name)
