"""Cross-request micro-batching with the semantics of Triton's dynamic batcher.

Requests put arrays of ``n`` faces into one queue that counts faces. A single consumer
task takes queued items in arrival order and runs a batch as soon as ``max_batch`` faces
wait, or when the oldest item has waited ``max_delay`` -- whichever comes first. The
inference function runs in one dedicated thread, never on the event loop (a CUDA session
runs one stream, so more threads would not run it faster; batching does). The queue is
bounded (:class:`QueueFull` beyond ``max_queue`` faces; :class:`TooLarge` for an item that
could never fit), every item carries a deadline (:class:`DeadlineExceeded` once it passes),
and an item whose caller gave up (timed out, or went away and cancelled its future) leaves
the queue at once, so only live faces hold queue capacity. :meth:`Batcher.stop` resolves
every pending future, the batch in flight included, and waits for the inference thread off
the event loop.

The batcher knows nothing about HTTP or images: it batches numpy arrays along axis 0.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchResult", "Batcher", "BatcherStats", "DeadlineExceeded", "QueueFull", "TooLarge"]

logger = logging.getLogger("facevib.serve")

InferFn = Callable[[np.ndarray], Sequence[np.ndarray]]


class QueueFull(Exception):
    """The queue holds ``max_queue`` faces already; the caller should retry later."""


class TooLarge(ValueError):
    """An item has more rows than ``max_queue``: no amount of waiting makes it fit."""


class DeadlineExceeded(Exception):
    """An item's deadline passed before its batch ran (or finished)."""


@dataclass(frozen=True)
class BatchResult:
    """What one submitted item gets back.

    Attributes:
        outputs: the inference function's outputs, sliced to this item's rows.
        queue_s: time from submission until its batch started.
        infer_s: run time of the batch it was part of.
        batch_size: faces in that batch.
    """

    outputs: tuple[np.ndarray, ...]
    queue_s: float
    infer_s: float
    batch_size: int


@dataclass
class BatcherStats:
    """Callbacks the batcher reports to (metrics); each defaults to doing nothing."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None  # faces, inference time
    on_queue_wait: Callable[[float], None] = lambda seconds: None
    on_depth: Callable[[int], None] = lambda faces: None
    on_drop: Callable[[str], None] = lambda reason: None  # "cancelled" or "deadline"


@dataclass(eq=False)  # compared by identity: the queue removes one item, not an equal one
class _Item:
    inputs: np.ndarray
    future: asyncio.Future
    enqueued: float
    deadline: float
    queued: bool = True  # still in the queue (not taken by a batch, not dropped)

    @property
    def size(self) -> int:
        return len(self.inputs)


@dataclass
class _Queue:
    items: collections.deque = field(default_factory=collections.deque)
    faces: int = 0


class Batcher:
    """Batches ``infer`` calls across concurrent callers of :meth:`submit`.

    Args:
        infer: ``(B, ...) array -> sequence of arrays with leading dimension B``; called from
            the batcher's own thread with at most ``max_batch`` rows.
        max_batch: faces per batch (1 runs every face alone).
        max_delay_s: longest time the oldest queued item waits for a fuller batch.
        max_queue: faces allowed to wait (in items not yet taken by a batch).
        stats: metric callbacks.

    Use inside a running event loop: ``await batcher.start()`` ... ``await batcher.stop()``.
    """

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        stats: BatcherStats | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < max_batch or max_delay_s < 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= max_batch, max_delay_s >= 0; got {max_batch}, {max_queue}, "
                f"{max_delay_s}"
            )
        self.infer = infer
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.stats = stats or BatcherStats()
        self._queue = _Queue()
        self._wakeup: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        self._in_flight: list[_Item] = []  # the items of the batch now running
        self._running: concurrent.futures.Future | None = None  # that batch in the inference thread
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="facevib-infer")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the consumer task on the running loop."""
        if self._consumer is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._consumer = asyncio.get_running_loop().create_task(self._consume(), name="facevib-batcher")

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop the consumer and fail every pending future (queued and in flight) with
        ``DeadlineExceeded``; then wait up to ``drain_s`` for a batch still running in the
        inference thread (off the event loop), so the model is not closed under it."""
        if self._consumer is not None:
            self._consumer.cancel()
            try:
                await self._consumer
            except asyncio.CancelledError:
                pass
            self._consumer = None
        for item in [*self._in_flight, *self._queue.items]:
            item.queued = False
            if not item.future.done():
                item.future.set_exception(DeadlineExceeded("server shutting down"))
                item.future.exception()  # retrieved here: a caller that already left is not logged as lost
        self._in_flight = []
        self._queue = _Queue()
        self._thread.shutdown(wait=False, cancel_futures=True)
        running, self._running = self._running, None
        if running is not None and not running.done():
            await asyncio.wait([asyncio.wrap_future(running)], timeout=drain_s)

    @property
    def queued_faces(self) -> int:
        """Faces waiting (not yet taken by a batch)."""
        return self._queue.faces

    # ------------------------------------------------------------------ producer side

    async def submit(self, inputs: np.ndarray, *, timeout_s: float) -> BatchResult:
        """Queue ``inputs`` (``n`` rows) and wait for their outputs.

        Items of more than ``max_batch`` rows are split into parts that may run in different
        batches. Raises :class:`QueueFull` at once when the rows do not fit in the queue, and
        :class:`DeadlineExceeded` when ``timeout_s`` passes first. Cancelling the caller
        (a client that went away) drops its rows that have not run yet.
        """
        count = len(inputs)
        if count == 0:
            raise ValueError("submit needs at least one row")
        if self._consumer is None or self._wakeup is None:
            raise RuntimeError("batcher is not running")
        if count > self.max_queue:
            raise TooLarge(f"{count} faces in one request; the queue holds at most {self.max_queue} (--max-queue)")
        if self._queue.faces + count > self.max_queue:
            raise QueueFull(f"{self._queue.faces} faces queued, room for {self.max_queue - self._queue.faces}")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + timeout_s
        parts = []
        for start in range(0, count, self.max_batch):
            item = _Item(inputs[start : start + self.max_batch], loop.create_future(), now, deadline)
            self._queue.items.append(item)
            self._queue.faces += item.size
            parts.append(item)
        self.stats.on_depth(self._queue.faces)
        self._wakeup.set()
        futures = [p.future for p in parts]
        timed_out = False
        try:
            done, _ = await asyncio.wait(futures, timeout=timeout_s)
            timed_out = len(done) < len(futures)
        finally:
            # Timed out or cancelled (the client went away): pending parts leave the queue now,
            # so they stop holding capacity; a part already running finishes unread.
            for part in parts:
                if part.future.done():
                    continue
                if timed_out:
                    part.future.set_exception(DeadlineExceeded(f"no result within {timeout_s:g} s"))
                    part.future.exception()  # retrieved here, so asyncio does not log it as lost
                else:
                    part.future.cancel()
                self._discard(part, "deadline" if timed_out else "cancelled")
        if timed_out:
            raise DeadlineExceeded(f"no result within {timeout_s:g} s")
        results = [fut.result() for fut in futures]  # re-raises the inference error, if any
        if len(results) == 1:
            return results[0]
        outputs = tuple(np.concatenate(rows) for rows in zip(*(r.outputs for r in results), strict=True))
        return BatchResult(
            outputs,
            queue_s=max(r.queue_s for r in results),
            infer_s=sum(r.infer_s for r in results),
            batch_size=max(r.batch_size for r in results),
        )

    # ------------------------------------------------------------------ consumer side

    def _discard(self, item: _Item, reason: str) -> None:
        """Take a still-queued item out of the queue (its caller gave up)."""
        if not item.queued:
            return
        item.queued = False
        self._queue.items.remove(item)
        self._queue.faces -= item.size
        self.stats.on_drop(reason)
        self.stats.on_depth(self._queue.faces)

    def _drop_dead(self, now: float) -> None:
        """Remove items whose deadline passed while they waited (their caller has not woken yet)."""
        kept: collections.deque = collections.deque()
        for item in self._queue.items:
            if item.future.done() or item.deadline > now:
                kept.append(item)
                continue
            item.queued = False
            item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            self.stats.on_drop("deadline")
            self._queue.faces -= item.size
        self._queue.items = kept

    def _take_batch(self) -> list[_Item]:
        """Items in arrival order while they fit in ``max_batch`` faces (at least one)."""
        batch, faces = [], 0
        while self._queue.items and faces + self._queue.items[0].size <= self.max_batch:
            item = self._queue.items.popleft()
            item.queued = False
            batch.append(item)
            faces += item.size
        self._queue.faces -= faces
        return batch

    async def _consume(self) -> None:
        assert self._wakeup is not None
        while True:
            self._drop_dead(time.monotonic())
            if not self._queue.items:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait for a full batch or until the oldest item has waited max_delay.
            run_at = self._queue.items[0].enqueued + self.max_delay_s
            while self._queue.faces < self.max_batch:
                remaining = run_at - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            self._drop_dead(time.monotonic())
            batch = self._take_batch()
            self.stats.on_depth(self._queue.faces)
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        for item in batch:
            self.stats.on_queue_wait(started - item.enqueued)
        faces = sum(item.size for item in batch)
        # stop() resolves these if it cancels the consumer while the batch runs.
        self._in_flight = batch
        # The batch is concatenated in the inference thread too, not on the event loop.
        self._running = self._thread.submit(_call, self.infer, [item.inputs for item in batch])
        try:
            outputs = await asyncio.wrap_future(self._running)
        except Exception as err:  # the model failed: every caller of this batch learns why
            self._in_flight = []
            logger.error("inference failed on a batch of %d", faces, exc_info=err)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        self._in_flight = []
        seconds = time.monotonic() - started
        self.stats.on_batch(faces, seconds)
        start = 0
        for item in batch:
            rows = tuple(out[start : start + item.size] for out in outputs)
            start += item.size
            if not item.future.done():
                item.future.set_result(BatchResult(rows, started - item.enqueued, seconds, faces))


def _call(infer: InferFn, parts: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    inputs = parts[0] if len(parts) == 1 else np.concatenate(parts)
    outputs = tuple(infer(inputs))
    for out in outputs:
        if len(out) != len(inputs):
            raise RuntimeError(f"inference returned {len(out)} rows for {len(inputs)} inputs")
    return outputs
