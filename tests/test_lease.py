"""Leases and the sweep (worker/lease.py) against real Redis: what a live worker holds or
what has a retry due is left alone; what nobody vouched for within a lease is queued again,
unless its task message still waits in the queue; sink locks live as long as their holder
renews them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from harness import cleanup_redis, new_prefix, new_queue

from config import load_settings
from worker import lease
from worker.events import Event
from worker.intake import (
    DELIVER_TO_SINK_TASK,
    ENRICH_EVENT_TASK,
    queued_event_id,
    task_message,
)
from worker.ratelimit import SharedRateLimiter
from worker.runtime import Runtime
from worker.store import EventStore

LEASE = 4.0


@pytest.fixture
def runtime(redis_server: str) -> Iterator[Runtime]:
    prefix, queue = new_prefix(), new_queue()
    settings = load_settings(
        redis_key_prefix=prefix, celery_queue=queue, worker_lease_seconds=LEASE
    )
    client = redis.Redis.from_url(settings.redis_url)
    rt = Runtime(
        settings=settings,
        redis=client,
        limiter=SharedRateLimiter(client, prefix),
        store=EventStore(client, prefix, settings.event_retention_seconds),
    )
    yield rt
    cleanup_redis(client, prefix, queue)
    client.close()


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], str]]:
    """What the sweep publishes, instead of publishing it."""
    sent: list[tuple[str, tuple[Any, ...], str]] = []
    monkeypatch.setattr(
        lease.app,
        "send_task",
        lambda name, args, queue: sent.append((name, tuple(args), queue)),
    )
    return sent


def _accepted(rt: Runtime, idle: float = 0.0) -> Event:
    event = Event(id=f"evt_{uuid.uuid4().hex[:12]}", type="signup", visitor_id=str(uuid.uuid4()))
    assert rt.store.accept(event)
    if idle:
        rt.redis.zadd(f"{rt.store.prefix}inflight", {event.id: time.time() - idle})
    return event


def _seen_abandoned_long_ago(rt: Runtime, *events: Event) -> None:
    rt.store.remember_sightings({e.id: time.time() - 60 for e in events})


def test_queued_event_id_reads_both_tasks_and_ignores_the_rest() -> None:
    assert queued_event_id(task_message(ENRICH_EVENT_TASK, ("evt_1",), "q")) == "evt_1"
    deliver = task_message(DELIVER_TO_SINK_TASK, ("evt_2", "zendesk"), "q")
    assert queued_event_id(deliver.encode()) == "evt_2"
    assert queued_event_id(task_message("visitor_enrich.poll_realtime", ("x",), "q")) is None
    assert queued_event_id(b"not json") is None
    assert queued_event_id(b'{"headers": {"task": "visitor_enrich.enrich_event"}}') is None
    assert (
        queued_event_id(b'{"headers": {"task": "visitor_enrich.enrich_event"}, "body": "!"}')
        is None
    )


def test_abandoned_event_is_queued_again_once(
    runtime: Runtime, published: list[tuple[str, tuple[Any, ...], str]]
) -> None:
    lost = _accepted(runtime, idle=2 * LEASE)
    # Found abandoned once: not yet queued again (its task may have just left the queue).
    assert lease.requeue_abandoned(runtime) == 0
    assert published == []
    # Found so again a renewal period and a half later: queued again.
    gap = lease.SIGHTING_GAP * lease.renewal_interval(LEASE)
    time.sleep(gap / 2)
    assert lease.requeue_abandoned(runtime) == 0
    time.sleep(gap / 2 + 0.1)
    assert lease.requeue_abandoned(runtime) == 1
    assert published == [(ENRICH_EVENT_TASK, (lost.id,), runtime.settings.celery_queue)]
    status = runtime.store.describe(lost.id)
    assert status is not None and status["steps"][-1]["step"] == "requeued"
    # Re-queueing vouches for it: the next sweep leaves it alone for another lease.
    assert lease.requeue_abandoned(runtime) == 0
    assert len(published) == 1


def test_final_events_leave_the_index_and_recent_ones_stay(
    runtime: Runtime, published: list[tuple[str, tuple[Any, ...], str]]
) -> None:
    done = _accepted(runtime, idle=2 * LEASE)
    fresh = _accepted(runtime)
    # An event with its last progress just under a lease ago is not abandoned yet.
    recent = _accepted(runtime, idle=LEASE - 1)
    runtime.store.redis.hset(f"{runtime.store.prefix}event:{done.id}", "state", "delivered")
    _seen_abandoned_long_ago(runtime, done, fresh, recent)
    assert lease.requeue_abandoned(runtime) == 0
    assert published == []
    assert done.id not in runtime.store.stuck_events(0.0)
    assert {fresh.id, recent.id} <= set(runtime.store.stuck_events(0.0))


def test_event_whose_task_waits_in_the_queue_is_left_there(
    runtime: Runtime, published: list[tuple[str, tuple[Any, ...], str]]
) -> None:
    """A backlog is not abandonment: the message is still in the queue."""
    waiting = _accepted(runtime, idle=2 * LEASE)
    retrying = _accepted(runtime, idle=2 * LEASE)
    queue = runtime.settings.celery_queue
    runtime.redis.lpush(queue, task_message(ENRICH_EVENT_TASK, (waiting.id,), queue))
    runtime.redis.lpush(queue, task_message(DELIVER_TO_SINK_TASK, (retrying.id, "hubspot"), queue))
    _seen_abandoned_long_ago(runtime, waiting, retrying)
    assert lease.requeue_abandoned(runtime) == 0
    assert published == []


def test_a_long_queue_is_a_backlog_and_nothing_is_judged(
    runtime: Runtime, published: list[tuple[str, tuple[Any, ...], str]]
) -> None:
    _accepted(runtime, idle=2 * LEASE)
    queue = runtime.settings.celery_queue
    runtime.redis.lpush(queue, *[b"{}"] * 3)
    assert lease.waiting_in_queue(runtime.redis, queue, limit=2) is None
    assert lease.waiting_in_queue(runtime.redis, queue, limit=3) == set()


def test_held_events_and_due_retries_are_not_abandoned(
    runtime: Runtime, published: list[tuple[str, tuple[Any, ...], str]]
) -> None:
    held = _accepted(runtime, idle=2 * LEASE)
    due = _accepted(runtime, idle=2 * LEASE)
    runtime.store.touch_inflight([held.id])
    runtime.store.expect_progress(due.id, 3 * LEASE)
    # Progress on the event does not move its due retry back (the score only goes up).
    runtime.store.add_step(due.id, "sink_retry")
    _seen_abandoned_long_ago(runtime, held, due)
    assert lease.requeue_abandoned(runtime) == 0
    score = runtime.redis.zscore(f"{runtime.store.prefix}inflight", due.id)
    assert score is not None and score > time.time() + 2 * LEASE
    # Vouching never brings back an event that has left the index (a final one).
    gone = _accepted(runtime)
    runtime.store.set_state(gone.id, "delivered")
    runtime.store.touch_inflight([gone.id])
    runtime.store.expect_progress(gone.id, 1)
    assert gone.id not in runtime.store.stuck_events(-60)


def test_held_events_are_the_event_tasks_celery_has_taken_and_not_finished() -> None:
    from celery.worker import state

    class FakeRequest:
        def __init__(self, name: str, args: tuple[str, ...]) -> None:
            self.name, self.args = name, args

    event_id = f"evt_{uuid.uuid4().hex[:12]}"
    waiting = FakeRequest(ENRICH_EVENT_TASK, (event_id,))  # taken, waiting for a thread
    running = FakeRequest(DELIVER_TO_SINK_TASK, (event_id, "zendesk"))
    other = FakeRequest("visitor_enrich.poll_realtime", ("evt_other",))
    before = set(lease.held_events())
    state.reserved_requests.add(waiting)
    state.reserved_requests.add(other)
    state.active_requests.add(running)
    try:
        assert set(lease.held_events()) - before == {event_id}
        state.reserved_requests.discard(waiting)
        assert event_id in lease.held_events()  # the sink retry still runs
        state.active_requests.discard(running)
        assert set(lease.held_events()) == before
    finally:
        for request in (waiting, other, running):
            state.reserved_requests.discard(request)
            state.active_requests.discard(request)


def test_sink_locks_live_while_renewed_and_only_their_holder_renews(runtime: Runtime) -> None:
    store = runtime.store
    event = _accepted(runtime)
    mine = store.claim_sink(event.id, "zendesk", ttl_seconds=1)
    assert mine is not None
    store.renew_sink_locks(30)
    assert runtime.redis.pttl(mine.key) > 20_000
    # A lock that expired and was taken by another worker is not renewed by this one.
    theirs = store.claim_sink(event.id, "slack", ttl_seconds=1)
    assert theirs is not None
    runtime.redis.set(theirs.key, "another-worker", px=1000)
    store.renew_sink_locks(30)
    assert runtime.redis.pttl(theirs.key) <= 1000
    store.release_sink(mine)
    store.release_sink(theirs)  # not ours any more: left alone
    assert runtime.redis.exists(mine.key) == 0
    assert runtime.redis.get(theirs.key) == b"another-worker"
    store.renew_sink_locks(30)
    assert runtime.redis.pttl(theirs.key) <= 1000


def test_keeper_renews_and_sweeps_and_survives_a_redis_outage(
    runtime: Runtime, published: list[tuple[str, tuple[Any, ...], str]]
) -> None:
    held = _accepted(runtime, idle=2 * LEASE)
    lost = _accepted(runtime, idle=2 * LEASE)
    _seen_abandoned_long_ago(runtime, held, lost)
    keeper = lease.LeaseKeeper(runtime, lambda: [held.id])
    # The first tick after Redis answers again renews only; the next one may sweep.
    assert keeper.tick(sweep=False) is True
    assert published == []
    assert keeper.tick(sweep=True) is True
    assert [args for _, args, _ in published] == [(lost.id,)]
    # Only one process sweeps per period: the turn is taken.
    lost_again = _accepted(runtime, idle=2 * LEASE)
    _seen_abandoned_long_ago(runtime, lost_again)
    assert keeper.tick(sweep=True) is True
    assert lost_again.id not in [args[0] for _, args, _ in published]

    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    down = Runtime(
        settings=runtime.settings,
        redis=unreachable,
        limiter=runtime.limiter,
        store=EventStore(unreachable, runtime.store.prefix, 60),
    )
    assert lease.LeaseKeeper(down, lambda: [held.id]).tick(sweep=True) is False
