"""The delivery protocol against real Redis: per-sink state, exactly-once effect under
redelivery, retries that leave delivered sinks alone, dead letters and replay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import ClassVar

import pytest
from delivery_support import LocalSink, accepted_event, runtime_for_test

from config import Settings
from worker.errors import AuthFailed, Throttled, Unavailable
from worker.events import Event
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.runtime import Runtime
from worker.sink import DeliveryResult, Note
from worker.store import SinkRecord, overall_state
from worker.tasks import deliver


class RecordingSink(LocalSink):
    """A sink whose destination is a Python list: what it holds is what was posted."""

    name = "recording"
    label = "Recording"
    can_look: ClassVar[bool] = True

    def __init__(self, settings: Settings, limiter: SharedRateLimiter) -> None:
        super().__init__(settings, limiter)
        self.posted: list[str] = []
        self.failures: list[Exception] = []

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if self.failures:
            raise self.failures.pop(0)
        self.posted.append(event.marker)
        return DeliveryResult(external_id=str(len(self.posted)))

    def already_delivered(self, event: Event) -> bool | None:
        return event.marker in self.posted if self.can_look else None


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with runtime_for_test("delivery") as rt:
        rt.sinks = {"recording": RecordingSink(rt.settings, rt.limiter)}
        yield rt


def _event(rt: Runtime) -> tuple[Event, JourneyContext]:
    event, context = accepted_event(rt)
    rt.store.plan_sinks(event.id, {"recording": SinkRecord()}, {})
    return event, context


def _sink(rt: Runtime) -> RecordingSink:
    sink = rt.sinks["recording"]
    assert isinstance(sink, RecordingSink)
    return sink


def _record(rt: Runtime, event: Event) -> SinkRecord:
    record = rt.store.sink_record(event.id, "recording")
    assert record is not None
    return record


def test_delivers_once_and_records_it(runtime: Runtime) -> None:
    event, context = _event(runtime)
    assert deliver(runtime, event, context, "recording") is None
    record = _record(runtime, event)
    assert (record.state, record.attempts, record.external_id) == ("delivered", 1, "1")
    assert _sink(runtime).posted == [event.marker]


def test_crash_after_post_before_record_does_not_post_again(runtime: Runtime) -> None:
    event, context = _event(runtime)
    sink = _sink(runtime)
    # The first run posted, then the worker died before writing "delivered": the record
    # still says "posting".
    sink.posted.append(event.marker)
    runtime.store.save_sink(event.id, "recording", SinkRecord(state="posting", attempts=1))
    assert deliver(runtime, event, context, "recording") is None
    assert sink.posted == [event.marker]
    record = _record(runtime, event)
    assert record.state == "delivered"
    assert record.reason == "found in the sink after a restart"


def test_crash_before_post_posts_on_redelivery(runtime: Runtime) -> None:
    event, context = _event(runtime)
    sink = _sink(runtime)
    runtime.store.save_sink(event.id, "recording", SinkRecord(state="posting", attempts=1))
    assert deliver(runtime, event, context, "recording") is None
    assert sink.posted == [event.marker]


def test_sink_that_cannot_look_posts_again_after_a_crash(runtime: Runtime) -> None:
    """The documented residual risk for sinks without a lookup (Slack)."""
    event, context = _event(runtime)
    sink = _sink(runtime)
    sink.can_look = False
    sink.posted.append(event.marker)
    runtime.store.save_sink(event.id, "recording", SinkRecord(state="posting", attempts=1))
    deliver(runtime, event, context, "recording")
    assert sink.posted == [event.marker, event.marker]


def test_retryable_failure_is_retried_then_dead_lettered(runtime: Runtime) -> None:
    event, context = _event(runtime)
    sink = _sink(runtime)
    sink.failures = [Unavailable("503 down", service="recording", status_code=503)] * 3
    countdowns = []
    for _ in range(3):
        countdowns.append(deliver(runtime, event, context, "recording"))
    assert all(c is not None and 0 <= c <= runtime.settings.max_countdown for c in countdowns[:2])
    assert countdowns[2] is None  # gave up after MAX_RETRIES=2 retries
    record = _record(runtime, event)
    assert record.state == "dead" and record.attempts == 3
    letters = runtime.store.dead_letters()
    assert [(d.event_id, d.sink) for d in letters] == [(event.id, "recording")]
    assert "503 down" in letters[0].reason
    assert sink.posted == []


def test_retry_after_is_respected_in_the_countdown(runtime: Runtime) -> None:
    event, context = _event(runtime)
    sink = _sink(runtime)
    from worker.errors import RateLimited

    sink.failures = [RateLimited("429", service="recording", status_code=429, retry_after=3.0)]
    countdown = deliver(runtime, event, context, "recording")
    assert countdown is not None and countdown >= 3.0


def test_timeout_after_sending_keeps_posting_so_the_next_attempt_looks(runtime: Runtime) -> None:
    event, context = _event(runtime)
    sink = _sink(runtime)
    sink.failures = [Unavailable("read timeout", service="recording", effect_possible=True)]
    assert deliver(runtime, event, context, "recording") is not None
    assert _record(runtime, event).state == "posting"


def test_throttled_does_not_use_an_attempt(runtime: Runtime) -> None:
    event, context = _event(runtime)
    sink = _sink(runtime)
    sink.failures = [Throttled("held", service="recording", retry_after=1.5)]
    assert deliver(runtime, event, context, "recording") == 1.5
    record = _record(runtime, event)
    # Throttled means nothing was sent: the record is as before and no attempt is used up.
    assert (record.state, record.attempts) == ("pending", 0)


def test_permanent_failure_is_not_retried(runtime: Runtime) -> None:
    event, context = _event(runtime)
    sink = _sink(runtime)
    sink.failures = [AuthFailed("401 bad token", service="recording", status_code=401)]
    assert deliver(runtime, event, context, "recording") is None
    record = _record(runtime, event)
    assert record.state == "failed" and "401 bad token" in (record.reason or "")


def test_replay_of_a_dead_letter_twice_posts_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import replay as replay_module
    from worker import tasks

    event, context = _event(runtime)
    sink = _sink(runtime)
    sink.failures = [Unavailable("down", service="recording")] * 3
    for _ in range(3):
        deliver(runtime, event, context, "recording")
    assert _record(runtime, event).state == "dead"

    queued: list[tuple[str, str]] = []
    monkeypatch.setattr(
        tasks.deliver_to_sink, "apply_async", lambda args, queue: queued.append(tuple(args))
    )
    letter = runtime.store.dead_letters()[0]
    assert replay_module.replay(runtime, letter).endswith("queued")
    assert queued == [(event.id, "recording")]
    assert runtime.store.dead_letters() == []
    # The queued task runs (twice: a duplicate redelivery); the sink has recovered.
    monkeypatch.setattr(tasks, "get_runtime", lambda: runtime)
    tasks.deliver_to_sink(event.id, "recording")
    tasks.deliver_to_sink(event.id, "recording")
    assert sink.posted == [event.marker]
    # Replaying the same letter again finds it delivered and posts nothing.
    assert replay_module.replay(runtime, letter).endswith("already delivered")
    assert sink.posted == [event.marker]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["delivered", "skipped"], "delivered"),
        (["delivered", "failed"], "partially_delivered"),
        (["delivered", "dead"], "partially_delivered"),
        (["failed", "skipped"], "failed"),
        (["dead", "failed"], "dead"),
        (["delivered", "pending"], None),
        (["posting"], None),
    ],
)
def test_overall_state(states: list[str], expected: str | None) -> None:
    records = {str(i): SinkRecord(state=s) for i, s in enumerate(states)}  # type: ignore[arg-type]
    assert overall_state(records) == expected


class FlakySink(RecordingSink):
    """A second destination, to see that one sink's retry leaves the other alone."""

    name = "flaky"
    label = "Flaky"


def _accepted_with_journey(rt: Runtime) -> tuple[Event, JourneyContext]:
    """An event whose journey is already fetched: ``enrich_event`` goes straight to the sinks."""
    event = Event(
        id=f"evt_{uuid.uuid4().hex[:10]}", type="support_ticket", ticket_id="7", visitor_id="v"
    )
    assert rt.store.accept(event)
    context = JourneyContext(provider="DataFast", visitor_id="v")
    rt.store.save_context(event.id, context)
    return event, context


def test_enrich_event_delivers_inline_and_queues_a_task_only_for_the_sink_that_failed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import tasks

    flaky = FlakySink(runtime.settings, runtime.limiter)
    flaky.failures = [Unavailable("503 down", service="flaky", status_code=503)]
    runtime.sinks["flaky"] = flaky
    event, _ = _accepted_with_journey(runtime)
    queued: list[tuple[tuple[str, ...], float]] = []
    monkeypatch.setattr(tasks, "get_runtime", lambda: runtime)
    monkeypatch.setattr(
        tasks.deliver_to_sink,
        "apply_async",
        lambda args, countdown, queue: queued.append((tuple(args), countdown)),
    )

    tasks.enrich_event(event.id)

    assert _sink(runtime).posted == [event.marker]  # delivered in the task itself
    assert [args for args, _ in queued] == [(event.id, "flaky")]
    assert 0 < queued[0][1] <= runtime.settings.max_countdown
    status = runtime.store.describe(event.id)
    assert status is not None and status["state"] == "queued"  # not final while one retries
    assert status["sinks"]["recording"]["state"] == "delivered"
    assert status["sinks"]["flaky"]["state"] == "pending"

    # The same task delivered again (acks_late after a crash) posts nothing twice, and the
    # queued retry finishes the event.
    queued.clear()
    tasks.enrich_event(event.id)
    tasks.deliver_to_sink(event.id, "flaky")
    assert _sink(runtime).posted == [event.marker]
    assert flaky.posted == [event.marker]
    status = runtime.store.describe(event.id)
    assert status is not None and status["state"] == "delivered"
    assert [s["step"] for s in status["steps"]].count("delivered") == 1


def test_a_pair_another_worker_is_delivering_is_tried_again_later(runtime: Runtime) -> None:
    from worker.tasks import LOCKED_RETRY_SECONDS

    event, context = _event(runtime)
    claim = runtime.store.claim_sink(event.id, "recording", 30)
    assert claim is not None and claim.record is not None and claim.record.state == "pending"
    assert runtime.store.claim_sink(event.id, "recording", 30) is None
    assert deliver(runtime, event, context, "recording") == LOCKED_RETRY_SECONDS
    assert _sink(runtime).posted == []
    runtime.store.release_sink(claim)
    assert deliver(runtime, event, context, "recording") is None
    assert _sink(runtime).posted == [event.marker]


def test_a_sink_this_worker_does_not_have_fails_visibly(runtime: Runtime) -> None:
    event, context = _event(runtime)
    runtime.store.plan_sinks(event.id, {"gone": SinkRecord()}, {})
    assert deliver(runtime, event, context, "gone") is None
    record = runtime.store.sink_record(event.id, "gone")
    assert record is not None and record.state == "failed"
    assert "not configured on this worker" in (record.reason or "")
    assert [d.sink for d in runtime.store.dead_letters()] == ["gone"]


def test_a_batch_sends_its_writes_together_and_nothing_when_it_raises(runtime: Runtime) -> None:
    event, _ = _event(runtime)
    with pytest.raises(RuntimeError), runtime.store.batch() as batch:
        batch.set_state(event.id, "failed", "never written")
        raise RuntimeError("boom")
    assert runtime.store.get_field(event.id, "state") == "queued"
    with runtime.store.batch() as batch:
        batch.set_state(event.id, "enriching", "written")
        batch.add_step(event.id, "fetching")
        assert runtime.store.get_field(event.id, "state") == "queued"  # not sent yet
    snapshot = runtime.store.snapshot(event.id)
    assert snapshot is not None and snapshot.state == "enriching"
    assert snapshot.event == event and snapshot.context is not None
    assert set(snapshot.sinks) == {"recording"}
    assert runtime.store.snapshot("evt_unknown") is None


def test_the_tasks_reschedule_without_celerys_retry_limit() -> None:
    """``_reschedule`` passes ``max_retries=None``, which Celery reads as the task's own limit:
    the tasks must have none, or a pair throttled (or waiting for Redis replicas) a fourth time
    would end with MaxRetriesExceededError instead of being tried again."""
    from worker.tasks import deliver_to_sink, enrich_event

    assert enrich_event.max_retries is None
    assert deliver_to_sink.max_retries is None
