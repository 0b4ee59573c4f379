"""Leases: what a live worker works on is vouched for in Redis; what nobody does is queued again.

Redis's visibility timeout hands a dead worker's task to another only after
``BROKER_VISIBILITY_TIMEOUT`` (60 s), and a message popped by BRPOP at the instant Redis stops
is never handed out again. Instead, recovery takes seconds:

- A worker *holds* an event from the moment it takes one of its tasks off the queue until
  the task has ended: the task is among Celery's reserved or active requests of that worker
  (``held_events``), whether it runs or waits for a free thread.
  A thread in each worker process (``LeaseKeeper``) renews, every quarter of
  ``WORKER_LEASE_SECONDS``, the in-flight score of the events it holds and the sink locks it
  holds (``EventStore.touch_inflight``, ``renew_sink_locks``). A killed worker renews nothing:
  its sink locks expire within a lease, and its events' scores stop moving.
- A task re-scheduled with a countdown promises progress by then
  (``EventStore.expect_progress``), so a retry that is only waiting is not abandoned.
- The same thread, in one worker at a time (``EventStore.take_sweep_turn``), queues
  ``enrich_event`` again for every event not final whose score is older than a lease: no live
  worker held it, it made no progress and no retry is due (``requeue_abandoned``), unless its
  task message is still waiting in the queue. An event must be found so twice, a renewal
  period and a half apart: a task that has just taken its message off the queue holds the
  event before its worker's next renewal shows it.

The sweep runs in every worker rather than only in beat, so the bound holds while beat is
down; the lock keeps it to one sweep per period. The tasks are idempotent and each sink has
its claim and ``posting`` record (worker/tasks.py), so a re-queued event whose task was in
fact still somewhere (a worker too slow to renew, kombu restoring the unacked message later)
only finds its work done.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import worker_process_init, worker_ready
from celery.worker import state as worker_state

from worker.app import app
from worker.intake import ENRICH_EVENT_TASK, EVENT_TASKS, queued_event_id
from worker.runtime import Runtime, get_runtime
from worker.store import FINAL_EVENT_STATES

log = logging.getLogger(__name__)

# An abandoned-looking event is queued again only when found so this many renewal periods
# after it was first found so (see the module's docstring).
SIGHTING_GAP = 1.5
# A longer queue is a backlog: events not yet taken may be waiting anywhere in it, and reading
# it all every few seconds would cost more than it saves. They are judged once it is shorter.
QUEUE_SCAN_LIMIT = 2_000


def held_events() -> list[str]:
    """The events of the tasks this worker process has taken and not finished: Celery's own
    bookkeeping (``celery.worker.state``), which it clears when the broker connection is lost
    (those messages go back to Redis, and the sweep judges their events)."""
    for _ in range(3):
        try:
            requests = [*worker_state.reserved_requests, *worker_state.active_requests]
        except RuntimeError:  # the sets changed while being read by this thread: read again
            continue
        return sorted({e for r in requests if (e := _event_of(r.name, r.args))})
    return []


def _event_of(task_name: str | None, args: Any) -> str | None:
    if task_name in EVENT_TASKS and args and isinstance(args[0], str):
        return str(args[0])
    return None


# Sweeping ---------------------------------------------------------------------------------


def waiting_in_queue(
    client: redis.Redis, queue: str, limit: int = QUEUE_SCAN_LIMIT
) -> set[str] | None:
    """The events whose task message waits in ``queue``; None when it holds more than
    ``limit`` messages (see ``QUEUE_SCAN_LIMIT``)."""
    if int(client.llen(queue)) > limit:
        return None
    raws = client.lrange(queue, 0, limit - 1)
    return {event_id for raw in raws if (event_id := queued_event_id(raw))}


def requeue_abandoned(rt: Runtime) -> int:
    """Queue ``enrich_event`` again for each event not final that nothing vouched for within
    a lease (see the module's docstring); returns how many."""
    store, settings = rt.store, rt.settings
    lease = settings.worker_lease_seconds
    candidates = store.stuck_events(lease)
    if not candidates:
        return 0
    waiting = waiting_in_queue(rt.redis, settings.celery_queue)
    if waiting is None:
        return 0
    first_seen = store.sightings([e for e in candidates if e not in waiting])
    due_before = time.time() - SIGHTING_GAP * renewal_interval(lease)
    later = {e: at for e, at in first_seen.items() if at > due_before}
    store.remember_sightings(later)
    count = 0
    for event_id in first_seen.keys() - later.keys():
        state = store.get_field(event_id, "state")
        if state is None or state in FINAL_EVENT_STATES:
            store.drop_inflight(event_id)
            continue
        # The step comes first and moves the score to now: should the publish fail, the
        # event is abandoned again a lease later and this is tried again.
        store.add_step(event_id, "requeued", f"no worker held it for {lease:g}s")
        app.send_task(ENRICH_EVENT_TASK, (event_id,), queue=settings.celery_queue)
        log.warning("requeued an abandoned event", extra={"event_id": event_id})
        count += 1
    return count


def renewal_interval(lease: float) -> float:
    """How often a worker renews what it holds: four times per lease, so that a renewal late
    by up to three periods (a busy machine) still comes before the lease lapses."""
    return lease / 4


class LeaseKeeper:
    """The thread that renews this process's holdings and sink locks and takes its turn at
    the sweep, every quarter of a lease."""

    def __init__(self, runtime: Runtime, held: Callable[[], list[str]] = held_events) -> None:
        self.runtime = runtime
        self.held = held
        self.lease = runtime.settings.worker_lease_seconds
        self.interval = renewal_interval(self.lease)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        reached = False
        while not self._stopping.wait(self.interval):
            # Sweep only when Redis answered the tick before too: after an outage, every
            # worker has then renewed what it holds before anyone judges it abandoned.
            reached = self.tick(sweep=reached)

    def tick(self, *, sweep: bool) -> bool:
        """Renew, and sweep when asked and it is this process's turn; False when Redis did
        not answer."""
        store = self.runtime.store
        try:
            store.touch_inflight(self.held())
            store.renew_sink_locks(self.lease)
            if sweep and store.take_sweep_turn(self.interval * 0.9):
                requeue_abandoned(self.runtime)
        except redis.RedisError as exc:
            log.info("lease renewal: Redis did not answer (%s)", type(exc).__name__)
            return False
        except Exception:
            # A bug here must not end the thread: the leases would lapse with it.
            log.exception("lease renewal failed")
        return True


_keepers: dict[int, LeaseKeeper] = {}


@worker_ready.connect
@worker_process_init.connect
def start_keeper(**_: Any) -> None:
    """One keeper per worker process: the main one, which knows the requests it took, and
    with the prefork pool each child too, which holds the sink locks its tasks claim. A
    daemon thread: it renews until the process ends, including while a warm shutdown waits
    for running tasks."""
    pid = os.getpid()
    if pid not in _keepers:
        _keepers[pid] = LeaseKeeper(get_runtime()).start()
