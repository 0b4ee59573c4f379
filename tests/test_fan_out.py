"""The sinks of one event are delivered side by side (worker/tasks.py ``fan_out``,
worker/parallel.py): the event takes as long as its slowest sink, each sink is recorded on
its own, and one that fails or raises never holds up or hides the others."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sentry_sdk
from delivery_support import LocalSink, accepted_event, runtime_for_test

from config import Settings
from worker import tasks
from worker.errors import Unavailable
from worker.events import Event
from worker.journey import JourneyContext
from worker.parallel import run_each
from worker.ratelimit import SharedRateLimiter
from worker.runtime import Runtime
from worker.sink import DeliveryResult, Note

SINK_SECONDS = 0.4
# The caller's context, which each sink must see (Celery's and Sentry's state live there).
REQUEST = contextvars.ContextVar("request", default="")


class SlowSink(LocalSink):
    """Takes ``SINK_SECONDS`` per delivery and notes what it saw while delivering."""

    label = "Slow"

    def __init__(self, name: str, settings: Settings, limiter: SharedRateLimiter) -> None:
        self.name = name
        super().__init__(settings, limiter)
        self.posted: list[str] = []
        self.fail_with: Exception | None = None
        self.seen: dict[str, Any] = {}

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        self.seen = {
            "thread": threading.get_ident(),
            "request": REQUEST.get(),
            "tags": dict(sentry_sdk.get_current_scope()._tags),
        }
        time.sleep(SINK_SECONDS)
        if self.fail_with is not None:
            raise self.fail_with
        self.posted.append(event.marker)
        return DeliveryResult(external_id=f"{self.name}-1")


NAMES = ("one", "two", "three", "four")


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with runtime_for_test("fanout") as rt:
        rt.sinks = {name: SlowSink(name, rt.settings, rt.limiter) for name in NAMES}
        yield rt


@pytest.fixture
def scheduled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """``deliver_to_sink`` tasks the fan-out would queue, recorded instead of published."""
    calls: list[tuple[Any, ...]] = []

    def apply_async(args: tuple[Any, ...], **options: Any) -> None:
        calls.append((*args, options.get("countdown")))

    monkeypatch.setattr(tasks.deliver_to_sink, "apply_async", apply_async)
    return calls


def _fan_out(rt: Runtime, event: Event, context: JourneyContext) -> float:
    with rt.store.batch() as batch:
        records = tasks._plan(rt, batch, event, context)
    started = time.monotonic()
    REQUEST.set(f"task-for-{event.id}")
    tasks.fan_out(rt, event, context, records)
    return time.monotonic() - started


def _sink(rt: Runtime, name: str) -> SlowSink:
    sink = rt.sinks[name]
    assert isinstance(sink, SlowSink)
    return sink


def test_four_sinks_take_about_as_long_as_the_slowest(
    runtime: Runtime, scheduled: list[tuple[Any, ...]]
) -> None:
    event, context = accepted_event(runtime)
    elapsed = _fan_out(runtime, event, context)
    # One after the other would be 4 x 0.4 s; side by side about 0.4 s (a loaded machine
    # gets some slack, but far from the sum).
    assert SINK_SECONDS <= elapsed < 2.5 * SINK_SECONDS, elapsed
    records = runtime.store.sink_records(event.id)
    assert {name: r.state for name, r in records.items()} == dict.fromkeys(NAMES, "delivered")
    assert {name: r.external_id for name, r in records.items()} == {n: f"{n}-1" for n in NAMES}
    assert all(_sink(runtime, n).posted == [event.marker] for n in NAMES)
    assert runtime.store.get_field(event.id, "state") == "delivered"
    assert scheduled == []
    # Really on several threads, each seeing the task's context and its own sink on the scope.
    assert len({_sink(runtime, n).seen["thread"] for n in NAMES}) == len(NAMES)
    for name in NAMES:
        seen = _sink(runtime, name).seen
        assert seen["request"] == f"task-for-{event.id}"
        assert seen["tags"] == {"event_id": event.id, "sink": name}


def test_a_failing_sink_does_not_block_the_others(
    runtime: Runtime, scheduled: list[tuple[Any, ...]]
) -> None:
    event, context = accepted_event(runtime)
    _sink(runtime, "two").fail_with = Unavailable("503 down", service="slow", status_code=503)
    elapsed = _fan_out(runtime, event, context)
    assert elapsed < 2.5 * SINK_SECONDS, elapsed
    records = runtime.store.sink_records(event.id)
    assert records["two"].state == "pending" and records["two"].attempts == 1
    assert {n: records[n].state for n in ("one", "three", "four")} == dict.fromkeys(
        ("one", "three", "four"), "delivered"
    )
    # Only the failed sink is tried again, by a task of its own.
    assert [(eid, name) for eid, name, _ in scheduled] == [(event.id, "two")]
    assert runtime.store.get_field(event.id, "state") == "queued"  # not final yet


def test_a_sink_whose_bookkeeping_raises_leaves_the_others_delivered(
    runtime: Runtime, scheduled: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error outside the sink's own error handling (here Redis refusing the claim of one
    sink) fails the task, but only after every other sink was delivered and recorded."""
    event, context = accepted_event(runtime)
    claim = runtime.store.claim_sink

    def flaky_claim(event_id: str, sink: str, ttl: float) -> Any:
        if sink == "three":
            raise redis.ConnectionError("connection reset")
        return claim(event_id, sink, ttl)

    monkeypatch.setattr(runtime.store, "claim_sink", flaky_claim)
    with pytest.raises(redis.ConnectionError):
        _fan_out(runtime, event, context)
    records = runtime.store.sink_records(event.id)
    assert records["three"].state == "pending" and records["three"].attempts == 0
    for name in ("one", "two", "four"):
        assert records[name].state == "delivered", name
        assert _sink(runtime, name).posted == [event.marker]


def test_run_each_returns_every_outcome_in_order() -> None:
    def boom() -> int:
        raise ValueError("boom")

    def slow(value: int) -> int:
        time.sleep(0.05)
        return value

    outcomes = run_each([lambda: slow(1), boom, lambda: slow(3)])
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], ValueError)
    assert run_each([]) == []
