"""A small bounded thread pool per process, for calls of one task that can run side by side
(the sinks of one event, worker/tasks.py ``fan_out``).

Celery's threads pool runs each task in one thread; a task that waits on four sinks one after
the other makes the last note wait for the sum of their latencies. ``run_each`` runs the first
call in the caller's thread and the rest in this pool, each in a copy of the caller's
``contextvars`` context (Sentry's scope lives there), and returns each call's result or
exception: one call failing never stops or hides the others.

Hand-written rather than a library: ``concurrent.futures`` is the library; what is added is
the per-process lifetime (a pool inherited through ``fork`` has no threads, so the child makes
its own) and the outcome per call.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Threads per process. A worker runs 32 task threads; an event has a handful of sinks, and the
# caller's own thread takes one of them, so 16 extra threads cover several events' fan-outs at
# once. When they are all busy a call waits its turn: bounded, never refused.
POOL_THREADS = 16

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="fan-out")
        return _pool


def _forget_pool_after_fork() -> None:
    # The parent's threads do not exist in the child: its pool object would never run a call.
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def shutdown_pool() -> None:
    """Wait for the pool's calls and stop its threads (tests, process exit)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)


def run_each(calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
    """Run ``calls`` side by side; return each one's result or the exception it raised, in
    the order given."""
    if not calls:
        return []
    futures: list[Future[T]] = []
    if len(calls) > 1:
        pool = _shared_pool()
        for call in calls[1:]:
            # A copy per call: one context cannot be entered by two threads at once.
            context = contextvars.copy_context()
            futures.append(pool.submit(context.run, call))
    outcomes: list[T | BaseException] = []
    try:
        outcomes.append(calls[0]())
    except Exception as exc:
        outcomes.append(exc)
    for future in futures:
        # Every future is waited for, even after a failure: its sink's record is written by
        # the call itself, and the task must not end while a call is still posting.
        try:
            outcomes.append(future.result())
        except Exception as exc:
            outcomes.append(exc)
    return outcomes
