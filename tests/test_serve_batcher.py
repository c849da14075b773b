"""The micro-batcher alone (no HTTP): Triton's dynamic-batching semantics, bounds, deadlines, drops.

No test bounds a duration from above, so a busy machine cannot fail them: "at once" is tested
with a max delay far beyond the callers' deadlines (waiting for it would raise DeadlineExceeded),
and waits are only bounded from below, which scheduling delays can only lengthen.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from facevib.serve.batcher import Batcher, BatcherStats, DeadlineExceeded, QueueFull


class Recorder:
    """An inference function that records its batches (and optionally blocks until released)."""

    def __init__(self, block: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.threads: set[int] = set()
        self.release = threading.Event()
        self.entered = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.entered.set()
        self.threads.add(threading.get_ident())
        self.release.wait(10)
        self.batches.append(x.copy())
        return x * 2.0, x.sum(axis=1)


def rows(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.float32)[:, None].repeat(3, axis=1)


async def _until(condition, limit: int = 100_000) -> None:
    """Yield to the event loop until ``condition()`` holds (a count of turns, not a clock)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def with_batcher(infer, test, **kwargs):
    drops: list[str] = []
    stats = BatcherStats(on_drop=drops.append)
    batcher = Batcher(infer, stats=stats, **kwargs)
    await batcher.start()
    try:
        return await test(batcher, drops)
    finally:
        await batcher.stop()


def test_full_batch_runs_at_once_and_each_caller_gets_its_rows() -> None:
    infer = Recorder()

    async def test(batcher: Batcher, drops: list) -> None:
        sizes = [1, 2, 1]  # 4 faces = max_batch: run without waiting out the 1-hour delay
        inputs = [rows(10 * i, n) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(batcher.submit(x, timeout_s=60) for x in inputs))
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result.outputs[0], x * 2)
            np.testing.assert_array_equal(result.outputs[1], x.sum(axis=1))
            assert result.batch_size == 4
        # One run, rows in arrival order.
        assert len(infer.batches) == 1
        np.testing.assert_array_equal(infer.batches[0], np.concatenate(inputs))

    asyncio.run(with_batcher(infer, test, max_batch=4, max_delay_s=3600.0, max_queue=16))
    assert threading.get_ident() not in infer.threads and len(infer.threads) == 1  # never the loop's thread


def test_partial_batch_runs_after_max_delay() -> None:
    infer = Recorder()

    async def test(batcher: Batcher, drops: list) -> None:
        started = time.monotonic()
        results = await asyncio.gather(*(batcher.submit(rows(i, 1), timeout_s=5) for i in range(3)))
        waited = time.monotonic() - started
        assert waited >= 0.2  # the batch waited for more faces (a lower bound: load only adds)
        assert [len(b) for b in infer.batches] == [3]
        assert all(r.queue_s >= 0.19 for r in results)

    asyncio.run(with_batcher(infer, test, max_batch=8, max_delay_s=0.2, max_queue=16))


def test_items_larger_than_max_batch_are_split_and_reassembled() -> None:
    infer = Recorder()

    async def test(batcher: Batcher, drops: list) -> None:
        x = rows(0, 5)
        result = await batcher.submit(x, timeout_s=5)
        np.testing.assert_array_equal(result.outputs[0], x * 2)
        assert [len(b) for b in infer.batches] == [2, 2, 1]

    asyncio.run(with_batcher(infer, test, max_batch=2, max_delay_s=0.0, max_queue=8))


def test_full_queue_is_refused_and_queue_drains_afterwards() -> None:
    infer = Recorder(block=True)

    async def test(batcher: Batcher, drops: list) -> None:
        first = asyncio.ensure_future(batcher.submit(rows(0, 2), timeout_s=5))
        await asyncio.to_thread(infer.entered.wait, 5)  # the first batch is running (blocked)
        queued = [asyncio.ensure_future(batcher.submit(rows(10 + 2 * i, 2), timeout_s=5)) for i in range(2)]
        await _until(lambda: batcher.queued_faces == 4)
        with pytest.raises(QueueFull):
            await batcher.submit(rows(99, 1), timeout_s=5)
        infer.release.set()
        results = await asyncio.gather(first, *queued)
        np.testing.assert_array_equal(results[2].outputs[0], rows(12, 2) * 2)
        assert batcher.queued_faces == 0

    asyncio.run(with_batcher(infer, test, max_batch=2, max_delay_s=0.0, max_queue=4))


def test_deadline_and_cancelled_items_never_reach_the_model() -> None:
    infer = Recorder(block=True)

    async def test(batcher: Batcher, drops: list) -> None:
        running = asyncio.ensure_future(batcher.submit(rows(0, 1), timeout_s=5))
        await asyncio.to_thread(infer.entered.wait, 5)
        late = asyncio.ensure_future(batcher.submit(rows(100, 1), timeout_s=0.1))
        gone = asyncio.ensure_future(batcher.submit(rows(200, 1), timeout_s=5))
        kept = asyncio.ensure_future(batcher.submit(rows(300, 1), timeout_s=5))
        await _until(lambda: batcher.queued_faces == 3)
        gone.cancel()  # the client went away
        with pytest.raises(DeadlineExceeded):
            await late
        infer.release.set()
        await running
        np.testing.assert_array_equal((await kept).outputs[0], rows(300, 1) * 2)
        seen = np.concatenate(infer.batches)[:, 0].tolist()
        assert seen == [0.0, 300.0]  # neither the late nor the cancelled row ran
        assert sorted(drops) == ["cancelled", "deadline"]

    asyncio.run(with_batcher(infer, test, max_batch=4, max_delay_s=0.0, max_queue=8))


def test_inference_errors_reach_every_caller_and_the_batcher_keeps_going() -> None:
    calls = []

    def infer(x: np.ndarray) -> tuple[np.ndarray]:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("model broke")
        return (x + 1,)

    async def test(batcher: Batcher, drops: list) -> None:
        outcomes = await asyncio.gather(
            *(batcher.submit(rows(i, 1), timeout_s=5) for i in range(2)), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) and "model broke" in str(o) for o in outcomes)
        result = await batcher.submit(rows(7, 1), timeout_s=5)
        np.testing.assert_array_equal(result.outputs[0], rows(7, 1) + 1)

    asyncio.run(with_batcher(infer, test, max_batch=2, max_delay_s=1.0, max_queue=4))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_queue >= max_batch"):
        Batcher(Recorder(), max_batch=8, max_delay_s=0.0, max_queue=4)
