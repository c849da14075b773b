"""Rank-0 metrics: a progress line on stdout, a JSONL file and TensorBoard events."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from facevib.config import ConfigError

__all__ = ["MetricLogger", "format_duration"]


def format_duration(seconds: float) -> str:
    """``1:02:03`` style, for ETAs."""
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class MetricLogger:
    """Writes metrics on rank 0 only; every method is a no-op elsewhere.

    Args:
        output: run folder (``metrics.jsonl`` and ``tensorboard/`` go there).
        enabled: False on ranks other than 0.
        tensorboard: also write TensorBoard event files (needs the ``tensorboard`` package).
        stream: where progress lines go.
    """

    def __init__(self, output: str | Path, enabled: bool, tensorboard: bool = True, stream: TextIO | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(output / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # optional dependency (the `train` extra)
                raise ConfigError(
                    "run.tensorboard=true needs the tensorboard package: pip install 'facevib[train]' "
                    "or set run.tensorboard=false"
                ) from exc
            self._tb = SummaryWriter(log_dir=str(output / "tensorboard"))

    def info(self, message: str) -> None:
        """A plain line on stdout (rank 0)."""
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        """Append one JSONL record and the scalar (or per-element list) metrics to TensorBoard."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            return
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{name}", value, step)
            elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                for i, v in enumerate(value):
                    self._tb.add_scalar(f"{kind}/{name}/{i:03d}", v, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
