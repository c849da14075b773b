"""Cross-request micro-batching with the semantics of Triton's dynamic batcher.

Requests put arrays of ``n`` faces into one queue that counts faces. A single consumer
task takes queued items in arrival order and runs a batch as soon as ``max_batch`` faces
wait, or when the oldest item has waited ``max_delay`` -- whichever comes first. A batch
runs in two steps, each in its own dedicated thread and never on the event loop: ``stage``
(concatenate the parts; for a GPU session also copy them to the device) and ``infer`` (a
CUDA session runs one stream, so more inference threads would not run it faster; batching
does). With ``pipeline_depth`` 2 the next batch is staged while the current one runs, so
host-to-device copies overlap compute; it is taken early only when it is full (a partial
batch taken early would be smaller than one taken when the current batch ends, at no gain
in latency, since it waits for the model either way). The queue is
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
from typing import Any

import numpy as np

__all__ = ["BatchResult", "Batcher", "BatcherStats", "DeadlineExceeded", "QueueFull", "TooLarge", "concatenate"]

logger = logging.getLogger("facevib.serve")

StageFn = Callable[[list[np.ndarray]], Any]
InferFn = Callable[[Any], Sequence[np.ndarray]]


def concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """The default ``stage``: the parts as one array."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


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
        infer: ``stage``'s result for a batch of B rows -> sequence of arrays with leading
            dimension B; called from the batcher's inference thread with at most ``max_batch``
            rows.
        max_batch: faces per batch (1 runs every face alone).
        max_delay_s: longest time the oldest queued item waits for a fuller batch.
        max_queue: faces allowed to wait (in items not yet taken by a batch).
        stats: metric callbacks.
        stage: the batch's parts (the items' arrays, in order) -> ``infer``'s input; called
            from the batcher's staging thread. Default: :func:`concatenate`.
        pipeline_depth: batches in flight at once (staged or running): 1 runs them one after
            the other; 2 stages the next (full) batch while the current one runs.
        thread_factory: makes the two threads' executors from ``(name,)`` (a lower priority,
            say); default: plain single-thread executors.

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
        stage: StageFn = concatenate,
        pipeline_depth: int = 1,
        thread_factory: Callable[[str], concurrent.futures.ThreadPoolExecutor] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < max_batch or max_delay_s < 0 or pipeline_depth not in (1, 2):
            raise ValueError(
                "need max_batch >= 1, max_queue >= max_batch, max_delay_s >= 0, pipeline_depth 1 or 2; got "
                f"{max_batch}, {max_queue}, {max_delay_s}, {pipeline_depth}"
            )
        self.infer = infer
        self.stage = stage
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.pipeline_depth = pipeline_depth
        self.stats = stats or BatcherStats()
        self._queue = _Queue()
        self._wakeup: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()  # batches in flight (staging or running)
        self._running: set[concurrent.futures.Future] = set()  # their steps in the two threads
        factory = thread_factory or _single_thread
        self._stager = factory("facevib-stage")
        self._thread = factory("facevib-infer")

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
        batches, self._batches = self._batches, set()
        for task in batches:  # each fails its callers' futures as it is cancelled
            task.cancel()
        await asyncio.gather(*batches, return_exceptions=True)
        _fail(self._queue.items, DeadlineExceeded("server shutting down"))
        self._queue = _Queue()
        self._stager.shutdown(wait=False, cancel_futures=True)
        self._thread.shutdown(wait=False, cancel_futures=True)
        running, self._running = [f for f in self._running if not f.done()], set()
        if running:
            await asyncio.wait([asyncio.wrap_future(f) for f in running], timeout=drain_s)

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

    def _next_batch_due(self, now: float) -> tuple[bool, float | None]:
        """Whether to take a batch now; if not, how long to wait at most (None: until woken)."""
        if not self._queue.items or len(self._batches) >= self.pipeline_depth:
            return False, None
        if self._queue.faces >= self.max_batch:
            return True, None
        if self._batches:  # one is in flight: only a full batch is taken early
            return False, None
        wait = self._queue.items[0].enqueued + self.max_delay_s - now
        return wait <= 0, wait

    async def _consume(self) -> None:
        assert self._wakeup is not None
        while True:
            # Woken by a submission or by a batch ending; the event is cleared before the
            # state is read (all on the loop), so no wake-up is lost in between.
            self._wakeup.clear()
            self._drop_dead(time.monotonic())
            due, wait = self._next_batch_due(time.monotonic())
            if not due:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = self._take_batch()
            self.stats.on_depth(self._queue.faces)
            task = asyncio.get_running_loop().create_task(self._run(batch), name="facevib-batch")
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._batches.discard(task)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _step(self, executor: concurrent.futures.Executor, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` in ``executor``. A step still running when its batch is cancelled stays
        in ``_running``, so that stop() waits for it before the model is closed."""
        future = executor.submit(fn, *args)
        self._running.add(future)
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.done():
                self._running.discard(future)

    async def _run(self, batch: list[_Item]) -> None:
        faces = sum(item.size for item in batch)
        try:
            staged = await self._step(self._stager, self.stage, [item.inputs for item in batch])
            started = time.monotonic()  # the batch reaches the model (after the one before it)
            for item in batch:
                self.stats.on_queue_wait(started - item.enqueued)
            outputs = await self._step(self._thread, _call, self.infer, staged, faces)
        except asyncio.CancelledError:  # stop(): nobody will run this batch
            _fail(batch, DeadlineExceeded("server shutting down"))
            raise
        except Exception as err:  # the model failed: every caller of this batch learns why
            logger.error("inference failed on a batch of %d", faces, exc_info=err)
            _fail(batch, err)
            return
        seconds = time.monotonic() - started
        self.stats.on_batch(faces, seconds)
        start = 0
        for item in batch:
            rows = tuple(out[start : start + item.size] for out in outputs)
            start += item.size
            if not item.future.done():
                item.future.set_result(BatchResult(rows, started - item.enqueued, seconds, faces))


def _fail(items: Sequence[_Item], error: BaseException) -> None:
    """Resolve the items' pending futures with ``error`` (retrieved: a caller that already left
    is not logged as a lost exception)."""
    for item in items:
        item.queued = False
        if not item.future.done():
            item.future.set_exception(error)
            item.future.exception()


def _single_thread(name: str) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


def _call(infer: InferFn, staged: Any, rows: int) -> tuple[np.ndarray, ...]:
    outputs = tuple(infer(staged))
    for out in outputs:
        if len(out) != rows:
            raise RuntimeError(f"inference returned {len(out)} rows for {rows} inputs")
    return outputs
