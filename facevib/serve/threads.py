"""Worker threads that yield the CPU to the event loop: each runs at a lower priority (a nice value).

The event loop is the one thread that must answer at once (``/health/live``, accepting
connections, writing responses), and its work is small; inference, decoding and the health
check are the bulk of the CPU time. On a machine with few cores these compete with the loop,
and a probe then waits for the scheduler rather than for the server. Linux keeps a nice value
per thread, and a thread inherits its creator's: a worker that raises its own nice value
(allowed without privileges) also lowers every thread it creates, such as the ONNX Runtime
intra-op pool of a session built in it. The loop keeps the process's priority.

Elsewhere (macOS, Windows) the nice value is per process, so nothing is changed there.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import threading

__all__ = ["lower_priority", "thread_nice", "worker_pool"]

logger = logging.getLogger("facevib.serve")


def _per_thread_nice() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def lower_priority(increment: int) -> None:
    """Raise the calling thread's nice value by ``increment`` (0: leave it as it is).

    Only the calling thread changes (Linux); a failure is logged, never raised: a worker at
    normal priority still works.
    """
    if increment <= 0 or not _per_thread_nice():
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as err:  # e.g. a seccomp profile that forbids it
        logger.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, err)


def thread_nice() -> int | None:
    """The calling thread's nice value (None where nice values are per process)."""
    if not _per_thread_nice():
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def worker_pool(workers: int, name: str, increment: int) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool whose threads run ``increment`` nice levels below their creator."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix=name, initializer=lower_priority, initargs=(increment,)
    )
