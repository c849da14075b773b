"""Health for orchestrators: a background inference check, apart from traffic.

``GET /health/live`` only says the process answers (no inference, no lock). ``GET
/health/ready`` (and its alias ``/health``) reads what :class:`HealthMonitor` last found:
the model is loaded, the last background check passed, and the queue is below its bound.

The check runs the model's fixed probe **directly on the session**, in its own thread, at
the batch size the reference was computed with (1): it never waits in the batching queue,
so a busy server stays ready, and it runs the same kernels as the reference, so it is
compared by cosine (>= :data:`MIN_COSINE`), which TF32 or another thread count on the GPU
keeps, instead of an elementwise tolerance. A configured face detector is checked too:
it must find nothing in a blank image.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from facevib.serve.runtime import ModelRuntime
from facevib.serve.threads import worker_pool

__all__ = ["MIN_COSINE", "CheckResult", "HealthMonitor"]

logger = logging.getLogger("facevib.serve")

MIN_COSINE = 0.9999  # cosine of the probe's embedding to its start-up reference

# A fixed, face-free image: a working detector finds nothing in it.
_BLANK_IMAGE = np.full((96, 128, 3), 127, dtype=np.uint8)


@dataclass(frozen=True)
class CheckResult:
    """One background check: ``ok``, why not (``problem``), its timings and wall-clock time."""

    ok: bool
    problem: str | None
    cosine: float | None
    inference_ms: float | None
    detector_ms: float | None
    checked_at: float  # time.time() of the check


class HealthMonitor:
    """Runs :meth:`check` every ``interval_s`` seconds in the background and keeps the last result.

    Args:
        runtime: the loaded model (its ``reference_output`` is the probe's expected embedding).
        detector: the face detector, or None.
        interval_s: seconds between checks.
        nice: nice levels below the event loop of the checking thread (:mod:`facevib.serve.threads`).
    """

    def __init__(self, runtime: ModelRuntime, detector: Any, interval_s: float, *, nice: int = 0) -> None:
        if not interval_s > 0:
            raise ValueError(f"health interval must be > 0 s, got {interval_s}")
        self.runtime = runtime
        self.detector = detector
        self.interval_s = float(interval_s)
        self.last: CheckResult | None = None
        self._task: asyncio.Task | None = None
        # Its own thread: the check never queues behind the batcher's inference thread.
        self._thread = worker_pool(1, "facevib-health", nice)

    def check(self) -> CheckResult:
        """Run the probe on the session and the detector on a blank image, now (blocking)."""
        started = time.perf_counter()
        cosine = inference_ms = detector_ms = None
        problem = None
        try:
            embedding = np.asarray(self.runtime.infer(self.runtime.fixed_input())[0][0], dtype=np.float64)
            inference_ms = round(1e3 * (time.perf_counter() - started), 3)
            reference = np.asarray(self.runtime.reference_output, dtype=np.float64)
            cosine = float(embedding @ reference / (np.linalg.norm(embedding) * np.linalg.norm(reference)))
            if not cosine >= MIN_COSINE:  # also catches NaN
                problem = f"the probe's embedding has cosine {cosine:.6f} to its start-up reference (< {MIN_COSINE})"
        except Exception as err:  # the runtime itself failed: not ready, and the log says why
            logger.error("health inference failed", exc_info=err)
            problem = f"inference failed ({type(err).__name__}: {err})"
        if problem is None and self.detector is not None:
            detected = time.perf_counter()
            try:
                faces = self.detector.detect(_BLANK_IMAGE)
                detector_ms = round(1e3 * (time.perf_counter() - detected), 3)
                if faces:
                    problem = f"face detector found {len(faces)} faces in a blank image"
            except Exception as err:  # the detector itself failed
                logger.error("health detection failed", exc_info=err)
                problem = f"face detector failed ({type(err).__name__}: {err})"
        result = CheckResult(problem is None, problem, cosine, inference_ms, detector_ms, time.time())
        if problem is not None and (self.last is None or self.last.ok):
            logger.warning("not ready: %s", problem)
        self.last = result
        return result

    async def check_async(self) -> CheckResult:
        """:meth:`check` in the monitor's thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.check)

    async def start(self) -> None:
        """Run one check now (so readiness is known when serving starts), then every ``interval_s``."""
        await self.check_async()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="facevib-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check_async()

    async def stop(self) -> None:
        """Stop the periodic checks (a check still running finishes in its thread)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._thread.shutdown(wait=False, cancel_futures=True)
