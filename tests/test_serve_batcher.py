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

from facevib.serve.batcher import Batcher, BatcherStats, DeadlineExceeded, QueueFull, TooLarge


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


def test_an_item_that_can_never_fit_is_too_large_not_full() -> None:
    async def test(batcher: Batcher, drops: list) -> None:
        with pytest.raises(TooLarge, match="5 faces in one request; the queue holds at most 4"):
            await batcher.submit(rows(0, 5), timeout_s=5)
        assert (await batcher.submit(rows(0, 4), timeout_s=5)).outputs[0].shape == (4, 3)  # 4 fit

    asyncio.run(with_batcher(Recorder(), test, max_batch=2, max_delay_s=0.0, max_queue=4))


def test_timed_out_and_cancelled_items_release_queue_capacity_at_once() -> None:
    """Only live faces count: a caller that gave up frees its room before the consumer (blocked
    here on a running batch) ever reaches its item."""
    infer = Recorder(block=True)

    async def test(batcher: Batcher, drops: list) -> None:
        running = asyncio.ensure_future(batcher.submit(rows(0, 2), timeout_s=10))
        await asyncio.to_thread(infer.entered.wait, 5)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(10, 4), timeout_s=0.05)
        assert batcher.queued_faces == 0 and drops == ["deadline"] * 2  # 4 faces: two parts of max_batch
        gone = asyncio.ensure_future(batcher.submit(rows(20, 4), timeout_s=10))
        while batcher.queued_faces < 4:
            await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued_faces == 0 and drops == ["deadline"] * 2 + ["cancelled"] * 2
        kept = asyncio.ensure_future(batcher.submit(rows(30, 4), timeout_s=10))  # the whole queue is free again
        infer.release.set()
        await running
        np.testing.assert_array_equal((await kept).outputs[0], rows(30, 4) * 2)
        assert np.concatenate(infer.batches)[:, 0].tolist() == [0.0, 1.0, 30.0, 31.0, 32.0, 33.0]

    asyncio.run(with_batcher(infer, test, max_batch=2, max_delay_s=0.0, max_queue=4))


def test_stop_resolves_every_future_and_leaves_the_loop_running() -> None:
    """The batch in flight and the queued one both fail with DeadlineExceeded; while stop()
    waits for the inference thread the loop keeps running (here: the coroutine that releases
    the blocked model runs during stop(), which would deadlock if stop() blocked the loop)."""
    infer = Recorder(block=True)

    async def main() -> None:
        batcher = Batcher(infer, max_batch=2, max_delay_s=0.0, max_queue=8)
        await batcher.start()
        in_flight = asyncio.ensure_future(batcher.submit(rows(0, 2), timeout_s=30))
        await asyncio.to_thread(infer.entered.wait, 5)
        queued = asyncio.ensure_future(batcher.submit(rows(10, 2), timeout_s=30))
        while batcher.queued_faces < 2:
            await asyncio.sleep(0)

        async def release_when_resolved() -> None:
            await asyncio.wait([in_flight, queued])  # resolved by stop(), with the model still blocked
            assert not infer.release.is_set()
            infer.release.set()

        releaser = asyncio.ensure_future(release_when_resolved())
        await batcher.stop(drain_s=30)
        await releaser
        for future in (in_flight, queued):
            with pytest.raises(DeadlineExceeded, match="shutting down"):
                future.result()
        assert batcher.queued_faces == 0 and len(infer.batches) == 1  # the queued batch never ran
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(rows(0, 1), timeout_s=1)

    asyncio.run(main())


class Stager:
    """A staging function that records the batches it staged and the threads it ran in."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.threads: set[int] = set()
        self.staged = [threading.Event() for _ in range(8)]  # staged[i]: batch i is staged

    def __call__(self, parts: list[np.ndarray]) -> np.ndarray:
        self.threads.add(threading.get_ident())
        self.batches.append(np.concatenate(parts))
        self.staged[len(self.batches) - 1].set()
        return self.batches[-1]


def test_depth_2_stages_the_next_full_batch_while_one_runs() -> None:
    """With pipeline_depth 2 a full batch is staged (in its own thread) while the one before it
    is still in the model; a partial one waits for the model to be free, although its max
    delay (0) has passed, and is taken early once it fills up."""
    infer, stage = Recorder(block=True), Stager()

    async def test(batcher: Batcher, drops: list) -> None:
        first = asyncio.ensure_future(batcher.submit(rows(0, 2), timeout_s=30))
        await asyncio.to_thread(infer.entered.wait, 10)  # batch 0 is in the (blocked) model
        partial = asyncio.ensure_future(batcher.submit(rows(10, 1), timeout_s=30))
        await asyncio.sleep(0.05)  # many loop turns: the consumer has seen it
        assert batcher.queued_faces == 1 and len(stage.batches) == 1  # not taken, not staged
        filler = asyncio.ensure_future(batcher.submit(rows(20, 1), timeout_s=30))
        assert await asyncio.to_thread(stage.staged[1].wait, 10)  # now full: staged early
        assert batcher.queued_faces == 0 and len(infer.batches) == 0 and not first.done()
        np.testing.assert_array_equal(stage.batches[1], np.concatenate([rows(10, 1), rows(20, 1)]))
        infer.release.set()
        results = await asyncio.gather(first, partial, filler)
        for result, x in zip(results, (rows(0, 2), rows(10, 1), rows(20, 1)), strict=True):
            np.testing.assert_array_equal(result.outputs[0], x * 2)
        assert [b[:, 0].tolist() for b in infer.batches] == [[0.0, 1.0], [10.0, 20.0]]

    asyncio.run(with_batcher(infer, test, max_batch=2, max_delay_s=0.0, max_queue=8, stage=stage, pipeline_depth=2))
    loop_thread = threading.get_ident()
    assert len(stage.threads) == 1 and len(infer.threads) == 1
    assert loop_thread not in stage.threads | infer.threads and stage.threads != infer.threads


def test_stop_resolves_a_staged_batch_and_the_one_in_the_model() -> None:
    infer, stage = Recorder(block=True), Stager()

    async def main() -> None:
        batcher = Batcher(infer, max_batch=2, max_delay_s=0.0, max_queue=8, stage=stage, pipeline_depth=2)
        await batcher.start()
        in_model = asyncio.ensure_future(batcher.submit(rows(0, 2), timeout_s=30))
        await asyncio.to_thread(infer.entered.wait, 10)
        staged = asyncio.ensure_future(batcher.submit(rows(10, 2), timeout_s=30))
        assert await asyncio.to_thread(stage.staged[1].wait, 10)
        stopping = asyncio.ensure_future(batcher.stop(drain_s=30))
        await asyncio.wait([in_model, staged])  # resolved with the model still blocked
        infer.release.set()
        await stopping
        for future in (in_model, staged):
            with pytest.raises(DeadlineExceeded, match="shutting down"):
                future.result()
        assert len(infer.batches) == 1  # the staged batch never ran

    asyncio.run(main())


def test_a_failing_stage_reaches_its_callers_and_the_batcher_keeps_going() -> None:
    calls = []

    def stage(parts: list[np.ndarray]) -> np.ndarray:
        calls.append(len(parts))
        if len(calls) == 1:
            raise RuntimeError("copy to the device failed")
        return np.concatenate(parts)

    async def test(batcher: Batcher, drops: list) -> None:
        with pytest.raises(RuntimeError, match="copy to the device failed"):
            await batcher.submit(rows(0, 1), timeout_s=30)
        result = await batcher.submit(rows(5, 1), timeout_s=30)
        np.testing.assert_array_equal(result.outputs[0], rows(5, 1) * 2)

    asyncio.run(with_batcher(Recorder(), test, max_batch=4, max_delay_s=0.0, max_queue=8, stage=stage))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_queue >= max_batch"):
        Batcher(Recorder(), max_batch=8, max_delay_s=0.0, max_queue=4)
    with pytest.raises(ValueError, match="pipeline_depth 1 or 2"):
        Batcher(Recorder(), max_batch=8, max_delay_s=0.0, max_queue=8, pipeline_depth=3)
