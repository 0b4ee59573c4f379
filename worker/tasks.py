"""The two tasks: ``enrich_event`` fetches the journey once and fans out; ``deliver_to_sink``
posts it to one sink. Each sink is retried on its own, so one failing sink never re-posts to
those that succeeded.

Both tasks are idempotent: they take an event id, read the state from Redis and do only what
is not recorded as done. With ``acks_late`` a task killed mid-way runs again from the top.

Exactly-once effect per (event, sink): before the call the sink's record goes to ``posting``;
after it, to ``delivered``. A redelivered task that finds ``posting`` first asks the sink
whether ``event.marker`` is already there (``Sink.already_delivered``) and posts only if not.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task

from worker.app import app
from worker.errors import EnrichmentError, Throttled, UpstreamError, VisitorNotFound
from worker.events import Event
from worker.intake import ENRICH_EVENT_TASK
from worker.journey import JourneyContext
from worker.livechat import complete_livechat_event
from worker.retry import retry_countdown
from worker.runtime import Runtime, get_runtime
from worker.score import ScoreWeights, estimate_score
from worker.sinks import Sink
from worker.store import FINAL_EVENT_STATES, SinkRecord

log = logging.getLogger(__name__)


def _reschedule(task: Task, countdown: float) -> Exception:
    # Our own attempt counters decide when to give up; Celery's limit is off.
    return task.retry(countdown=max(0.05, countdown), max_retries=None)  # type: ignore[no-any-return]


# Fetching --------------------------------------------------------------------------------


def fetch_context(rt: Runtime, event: Event) -> JourneyContext:
    """The journey for the event's visitor; ``VisitorNotFound`` becomes an honest empty one."""
    source = rt.source
    label = rt.source_class.label
    if source is None:
        raise EnrichmentError(
            f"the {label} source is not configured (set its API key)", service=rt.settings.source
        )
    if not event.visitor_id and event.livechat_visitor_id:
        # A livechat event may name only the chat visitor: look its DataFast id up.
        event, missing = complete_livechat_event(rt, event)
        if missing:
            return JourneyContext.not_found(label, "", missing)
    if not event.visitor_id:
        return JourneyContext.not_found(label, "", "no datafast_visitor_id on the event")
    try:
        context = source.fetch_journey(event.visitor_id)
    except VisitorNotFound as exc:
        return JourneyContext.not_found(label, event.visitor_id, f"{label} answered {exc.message}")
    if context.found and context.prediction is None:
        # The provider gave no score: estimate one, marked as such (worker/score.py).
        weights = ScoreWeights.from_settings(rt.settings)
        estimate = estimate_score(context, weights, datetime.now(UTC))
        context = context.model_copy(update={"prediction": estimate})
    return context


def plan(rt: Runtime, event: Event, context: JourneyContext) -> tuple[list[str], dict[str, str]]:
    planned, skipped = [], {}
    for name, sink in rt.sinks.items():
        reason = sink.skip_reason(event, context)
        if reason is None:
            planned.append(name)
        else:
            skipped[name] = reason
    return planned, skipped


@app.task(bind=True, name=ENRICH_EVENT_TASK, acks_late=True, reject_on_worker_lost=True)
def enrich_event(self: Task, event_id: str) -> None:
    rt = get_runtime()
    store, settings = rt.store, rt.settings
    event = store.load_event(event_id)
    if event is None:
        log.warning("event not found; expired or withdrawn", extra={"event_id": event_id})
        return
    context = store.load_context(event_id)
    if context is None:
        if store.get_field(event_id, "state") in ("failed", "dead"):
            return
        store.set_state(event_id, "enriching")
        store.add_step(event_id, "fetching", rt.source_class.label)
        try:
            context = fetch_context(rt, event)
        except Throttled as exc:
            raise _reschedule(self, min(exc.retry_after, settings.max_countdown)) from None
        except UpstreamError as exc:
            if not exc.retryable:
                _give_up_on_source(rt, event_id, "failed", str(exc))
                return
            attempts = store.incr_source_attempts(event_id)
            if attempts > settings.max_retries:
                _give_up_on_source(rt, event_id, "dead", f"{exc} (after {attempts} attempts)")
                return
            countdown = retry_countdown(attempts, exc.retry_after, settings)
            store.add_step(
                event_id, "source_retry", str(exc), attempt=attempts, countdown=round(countdown, 2)
            )
            log.info(
                "source failed, retrying",
                extra={
                    "event_id": event_id,
                    "attempt": attempts,
                    "countdown": round(countdown, 2),
                    "error": str(exc),
                },
            )
            raise _reschedule(self, countdown) from None
        except EnrichmentError as exc:
            _give_up_on_source(rt, event_id, "failed", str(exc))
            return
        except Exception as exc:
            # A bug or an answer no model foresaw: end the event visibly (and replayably)
            # instead of leaving it "enriching" forever.
            log.exception("unexpected error while fetching", extra={"event_id": event_id})
            _give_up_on_source(rt, event_id, "failed", unexpected(exc))
            return
        store.save_context(event_id, context)
        store.add_step(
            event_id,
            "journey_found" if context.found else "journey_not_found",
            context.missing_reason,
        )
        if not context.found and context.missing_reason:
            # The sinks may still post a "no journey" note; the event says why there is none.
            store.set_state(event_id, "enriching", context.missing_reason)
    fan_out(rt, event, context)


def unexpected(exc: Exception) -> str:
    return f"unexpected error: {type(exc).__name__}: {str(exc)[:200]}"


def _give_up_on_source(rt: Runtime, event_id: str, state: Any, reason: str) -> None:
    rt.store.set_state(event_id, state, reason)
    rt.store.add_step(event_id, state, reason)
    attempts = int(rt.store.get_field(event_id, "source_attempts") or 0)
    rt.store.add_dead_letter(event_id, None, reason, attempts)
    log.warning("event %s", state, extra={"event_id": event_id, "reason": reason})


def fan_out(rt: Runtime, event: Event, context: JourneyContext) -> None:
    """Plan the sinks once and queue one delivery task for each that is not done."""
    planned, skipped = plan(rt, event, context)
    rt.store.plan_sinks(event.id, planned, skipped)
    records = rt.store.sink_records(event.id)
    if not records:
        rt.store.set_state(event.id, "delivered", "no sink is configured")
        rt.store.add_step(event.id, "delivered", "no sink is configured")
        return
    for name, reason in skipped.items():
        rt.store.add_step(event.id, "sink_skipped", reason, sink=name)
    pending = [name for name, record in records.items() if not record.terminal]
    for name in pending:
        deliver_to_sink.apply_async((event.id, name), queue=rt.settings.celery_queue)
    if not pending:
        _finish(rt, event.id)


# Delivering ------------------------------------------------------------------------------


@app.task(
    bind=True, name="visitor_enrich.deliver_to_sink", acks_late=True, reject_on_worker_lost=True
)
def deliver_to_sink(self: Task, event_id: str, sink_name: str) -> None:
    rt = get_runtime()
    store, settings = rt.store, rt.settings
    record = store.sink_record(event_id, sink_name)
    if record is None or record.terminal:
        return
    sink = rt.sinks.get(sink_name)
    event = store.load_event(event_id)
    context = store.load_context(event_id)
    if sink is None or event is None or context is None:
        reason = (
            f"sink {sink_name} is not configured on this worker"
            if sink is None
            else "event data expired"
        )
        store.save_sink(
            event_id, sink_name, record.model_copy(update={"state": "failed", "reason": reason})
        )
        _finish(rt, event_id)
        return
    # The lock outlives no task: a task still running after the visibility timeout is handed
    # to another worker anyway, and a worker killed mid-call must not block its successor long.
    lock_ttl = settings.broker_visibility_timeout
    with store.sink_lock(event_id, sink_name, lock_ttl) as locked:
        if not locked:
            # Another worker is delivering this pair right now (a duplicate delivery).
            raise _reschedule(self, 2.0)
        record = store.sink_record(event_id, sink_name) or record
        if record.terminal:
            return
        countdown = _attempt(rt, sink, event, context, record)
    if countdown is None:
        _finish(rt, event_id)
    else:
        raise _reschedule(self, countdown)


def _attempt(
    rt: Runtime, sink: Sink, event: Event, context: JourneyContext, record: SinkRecord
) -> float | None:
    """One delivery attempt; returns a countdown when it must be retried, else None."""
    store, settings = rt.store, rt.settings
    extra = {"event_id": event.id, "sink": sink.name, "attempt": record.attempts + 1}
    before = record
    try:
        if record.state == "posting" and sink.already_delivered(event):
            store.save_sink(
                event.id,
                sink.name,
                record.model_copy(
                    update={"state": "delivered", "reason": "found in the sink after a restart"}
                ),
            )
            store.add_step(
                event.id, "sink_delivered", "found in the sink after a restart", sink=sink.name
            )
            log.info("already delivered", extra=extra)
            return None
        record = record.model_copy(
            update={"state": "posting", "attempts": record.attempts + 1, "reason": None}
        )
        store.save_sink(event.id, sink.name, record)
        result = sink.deliver(event, context)
    except Throttled as exc:
        # Nothing was sent: back to the state before this attempt, without using one up.
        store.save_sink(event.id, sink.name, before.model_copy(update={"reason": str(exc)}))
        return min(exc.retry_after, settings.max_countdown)
    except UpstreamError as exc:
        if not exc.retryable:
            _fail(rt, event.id, sink.name, record, "failed", str(exc))
            return None
        if record.attempts > settings.max_retries:
            _fail(
                rt, event.id, sink.name, record, "dead", f"{exc} (after {record.attempts} attempts)"
            )
            return None
        state = "posting" if exc.effect_possible else "pending"
        store.save_sink(
            event.id, sink.name, record.model_copy(update={"state": state, "reason": str(exc)})
        )
        countdown = retry_countdown(record.attempts, exc.retry_after, settings)
        store.add_step(
            event.id,
            "sink_retry",
            str(exc),
            sink=sink.name,
            attempt=record.attempts,
            countdown=round(countdown, 2),
        )
        log.info(
            "sink failed, retrying",
            extra={**extra, "countdown": round(countdown, 2), "error": str(exc)},
        )
        return countdown
    except EnrichmentError as exc:
        _fail(rt, event.id, sink.name, record, "failed", str(exc))
        return None
    except Exception as exc:
        # Never leave a sink "posting" forever: record the failure; replay can retry it.
        log.exception("unexpected error while delivering", extra=extra)
        _fail(rt, event.id, sink.name, record, "failed", unexpected(exc))
        return None
    store.save_sink(
        event.id,
        sink.name,
        record.model_copy(
            update={
                "state": "delivered",
                "external_id": result.external_id,
                "reason": result.detail,
            }
        ),
    )
    store.add_step(event.id, "sink_delivered", result.detail, sink=sink.name)
    log.info("delivered", extra=extra)
    return None


def _fail(
    rt: Runtime, event_id: str, sink: str, record: SinkRecord, state: Any, reason: str
) -> None:
    rt.store.save_sink(event_id, sink, record.model_copy(update={"state": state, "reason": reason}))
    rt.store.add_step(event_id, f"sink_{state}", reason, sink=sink)
    rt.store.add_dead_letter(event_id, sink, reason, record.attempts)
    log.warning("sink %s", state, extra={"event_id": event_id, "sink": sink, "reason": reason})


def _finish(rt: Runtime, event_id: str) -> None:
    state = rt.store.refresh_state(event_id)
    if state is not None:
        rt.store.add_step(event_id, state)


# Recovering lost tasks -------------------------------------------------------------------


@app.task(name="visitor_enrich.requeue_stuck_events", acks_late=True, ignore_result=True)
def requeue_stuck_events() -> int:
    """Queue ``enrich_event`` again for events that made no progress for a while.

    The Redis transport takes a message off the queue before it records it as unacknowledged;
    a broker outage at that instant loses the task while the event stays ``queued``. Running
    the (idempotent) task again finishes such an event: a journey already fetched is not
    fetched again, and a delivered sink is not posted again.
    """
    rt = get_runtime()
    store, settings = rt.store, rt.settings
    count = 0
    for event_id in store.stuck_events(settings.stuck_event_seconds):
        state = store.get_field(event_id, "state")
        if state is None or state in FINAL_EVENT_STATES:
            store.drop_inflight(event_id)
            continue
        idle = round(settings.stuck_event_seconds)
        store.add_step(event_id, "requeued", f"no progress for {idle}s")
        enrich_event.apply_async((event_id,), queue=settings.celery_queue)
        log.warning("requeued a stuck event", extra={"event_id": event_id})
        count += 1
    return count
