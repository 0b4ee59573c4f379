"""The two tasks: ``enrich_event`` fetches the journey once and delivers it to each sink;
``deliver_to_sink`` tries one sink again. Each sink is retried on its own, so one failing sink
never re-posts to those that succeeded.

Both tasks are idempotent: they take an event id, read the state from Redis and do only what
is not recorded as done. With ``acks_late`` a task killed mid-way runs again from the top.

Exactly-once effect per (event, sink): before the call the sink's record goes to ``posting``;
after it, to ``delivered``. A redelivered task that finds ``posting`` first asks the sink
whether ``event.marker`` is already there (``Sink.already_delivered``) and posts only if not.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sentry_sdk
from celery import Task

from worker import metrics
from worker.app import app
from worker.errors import EnrichmentError, Throttled, UpstreamError, VisitorNotFound
from worker.events import Event, is_uuid
from worker.intake import DELIVER_TO_SINK_TASK, ENRICH_EVENT_TASK
from worker.integrations import integration
from worker.journey import JourneyContext
from worker.lease import requeue_abandoned
from worker.parallel import run_each
from worker.profiles import CachedFetch
from worker.retry import retry_countdown
from worker.runtime import Runtime, get_runtime
from worker.score import ScoreWeights, estimate_score
from worker.sink import Sink
from worker.store import EventStore, SinkRecord

log = logging.getLogger(__name__)


def _reschedule(task: Task, event_id: str, countdown: float) -> Exception:
    countdown = max(0.05, countdown)
    # Waiting for the countdown is progress: the event is not abandoned before it is due.
    get_runtime().store.expect_progress(event_id, countdown)
    # Our own attempt counters decide when to give up; Celery's limit is off.
    return task.retry(countdown=countdown, max_retries=None)  # type: ignore[no-any-return]


# Fetching --------------------------------------------------------------------------------


def fetch_context(rt: Runtime, event: Event) -> JourneyContext:
    """The journey for the event's visitor; ``VisitorNotFound`` becomes an honest empty one."""
    return fetch_journey(rt, event).context


def fetch_journey(rt: Runtime, event: Event) -> CachedFetch:
    """``fetch_context``, saying whether the journey came from the profile cache (shared with
    the visitor's other events, worker/profiles.py) and how old it was."""
    source = rt.source
    label = rt.source_class.label
    if source is None:
        raise EnrichmentError(
            f"the {label} source is not configured (set its API key)", service=rt.settings.source
        )
    if event.lookup:
        # The sender's webhook lacked the visitor id or the email: ask its API first.
        event, missing = complete_event(rt, event)
        if missing:
            return CachedFetch(JourneyContext.not_found(label, event.visitor_id or "", missing))
    visitor_id, website = event.visitor_id, event.website
    if not visitor_id:
        reason = event.missing_reason or "no datafast_visitor_id on the event"
        return CachedFetch(JourneyContext.not_found(label, "", reason))
    try:
        fetched = rt.profiles.journey(
            source.cache_identity(website),
            visitor_id,
            lambda: source.fetch_journey(visitor_id, website),
        )
    except VisitorNotFound as exc:
        return CachedFetch(
            JourneyContext.not_found(label, visitor_id, f"{label} answered {exc.message}")
        )
    context = fetched.context
    if context.found and context.prediction is None:
        # The provider gave no score: estimate one, marked as such (worker/score.py). Not
        # cached: it depends on the time of this event.
        weights = ScoreWeights.from_settings(rt.settings)
        estimate = estimate_score(context, weights, datetime.now(UTC))
        context = context.model_copy(update={"prediction": estimate})
    return CachedFetch(context, fetched.age)


def complete_event(rt: Runtime, event: Event) -> tuple[Event, str | None]:
    """Complete an event through a lookup in the system that sent it (``event.lookup``).

    Returns the completed event and None, or the event and the reason no journey can be
    fetched. The completed event is stored without its lookup, so ``GET /v1/events/{id}``
    shows what was found and a redelivered task does not ask again.
    """
    assert event.lookup is not None
    system = event.lookup
    sink = rt.sinks.get(system)
    if sink is None:
        found = integration(system)
        label = found.label if found else system
        return event, (
            f"the event needs a lookup in {label}, which is not configured on the worker "
            "(set its API credentials)"
        )
    completion = sink.complete_event(event)
    if completion.missing:
        # What was found (the email of a contact without the visitor id) still names the
        # person in the "no journey" note.
        if completion.event != event and rt.store.load_event(event.id) is not None:
            rt.store.replace_event(completion.event)
        return completion.event, completion.missing
    completed = completion.event.model_copy(update={"lookup": None})
    visitor_id = completed.visitor_id
    if visitor_id and rt.source_class.requires_uuid and not is_uuid(visitor_id):
        what = completion.detail or f"the {sink.label} visitor id"
        return event, f"{what} {visitor_id[:60]!r} is not a UUID"
    if rt.store.load_event(event.id) is not None:  # not for the CLI's unstored events
        rt.store.replace_event(completed)
        rt.store.add_step(event.id, "looked_up", completion.detail, system=system)
    log.info("event completed by a lookup", extra={"event_id": event.id, "system": system})
    return completed, None


def plan(
    rt: Runtime, event: Event, context: JourneyContext
) -> tuple[dict[str, SinkRecord], dict[str, str]]:
    """The sinks this event goes to (each sink's first record: the rule that sent it and its
    template), and why each other enabled sink is left out.

    With a routes file (``ROUTES_FILE``, ``worker/routing.py``) its matching rules choose; else
    every sink that can take the event, alert sinks only for hot signups and payments.
    """
    planned: dict[str, SinkRecord] = {}
    skipped: dict[str, str] = {}
    routed = {r.sink: r for r in rt.routes.route(event, context)} if rt.routes else None
    for name, sink in rt.sinks.items():
        reason = sink.skip_reason(event, context)
        if routed is None:
            reason = reason or sink.default_skip_reason(event, context)
            if reason is None:
                planned[name] = SinkRecord(rule=DEFAULT_RULE)
        elif name not in routed:
            reason = "no routing rule sends this event here"
        elif reason is None:
            planned[name] = SinkRecord(rule=routed[name].rule, template=routed[name].template)
        else:
            reason = f"{reason} (rule {routed[name].rule!r} sent it)"
        if reason is not None:
            skipped[name] = reason
    return planned, skipped


# The options of the two event tasks. max_retries=None: ``task.retry(max_retries=None)``
# means the task's own limit (Celery's default: 3), so a pair throttled or waiting for Redis
# replicas a fourth time would end with MaxRetriesExceededError instead of being rescheduled.
EVENT_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": None,
}


@app.task(name=ENRICH_EVENT_TASK, **EVENT_TASK_OPTIONS)
def enrich_event(self: Task, event_id: str) -> None:
    rt = get_runtime()
    store, settings = rt.store, rt.settings
    snapshot = store.snapshot(event_id)
    if snapshot is None:
        log.warning("event not found; expired or withdrawn", extra={"event_id": event_id})
        return
    event, context, records = snapshot.event, snapshot.context, snapshot.sinks
    if context is None:
        if snapshot.state in ("failed", "dead"):
            return
        with store.batch() as batch:
            batch.set_state(event_id, "enriching")
            batch.add_step(event_id, "fetching", rt.source_class.label)
            # From here on an erasure finds the event by its hashed visitor id and email.
            batch.index_subjects(event)
        try:
            fetched = fetch_journey(rt, event)
        except Throttled as exc:
            raise _reschedule(
                self, event_id, min(exc.retry_after, settings.max_countdown)
            ) from None
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
            raise _reschedule(self, event_id, countdown) from None
        except EnrichmentError as exc:
            _give_up_on_source(rt, event_id, "failed", str(exc))
            return
        except Exception as exc:
            # A bug or an answer no model foresaw: end the event visibly (and replayably)
            # instead of leaving it "enriching" forever.
            log.exception("unexpected error while fetching", extra={"event_id": event_id})
            _give_up_on_source(rt, event_id, "failed", unexpected(exc))
            return
        context = fetched.context
        if event.lookup:
            # The lookup stored the event it completed (email, name): the sinks get that one.
            event = store.load_event(event_id) or event
        # The journey is fetched once: a task run again after this finds it and skips ahead.
        with store.batch() as batch:
            batch.save_context(event_id, context)
            if fetched.age is not None:
                batch.add_step(
                    event_id,
                    "journey_cached",
                    f"fetched {fetched.age:.1f}s earlier for another event of this visitor",
                    age_seconds=round(fetched.age, 2),
                )
            batch.add_step(
                event_id,
                "journey_found" if context.found else "journey_not_found",
                context.missing_reason,
            )
            if not context.found and context.missing_reason:
                # The sinks may still post a "no journey" note; the event says why there is none.
                batch.set_state(event_id, "enriching", context.missing_reason)
            records = _plan(rt, batch, event, context)
    elif not records:
        with store.batch() as batch:
            records = _plan(rt, batch, event, context)
    fan_out(rt, event, context, records)


def unexpected(exc: Exception) -> str:
    return f"unexpected error: {type(exc).__name__}: {str(exc)[:200]}"


def _give_up_on_source(rt: Runtime, event_id: str, state: Any, reason: str) -> None:
    attempts = int(rt.store.get_field(event_id, "source_attempts") or 0)
    with rt.store.batch() as batch:
        batch.set_state(event_id, state, reason)
        batch.add_step(event_id, state, reason)
        batch.add_dead_letter(event_id, None, reason, attempts)
    log.warning("event %s", state, extra={"event_id": event_id, "reason": reason})


def _plan(
    rt: Runtime, batch: EventStore, event: Event, context: JourneyContext
) -> dict[str, SinkRecord]:
    """Write each sink's first record (a record already there is kept, see ``plan_sinks``)
    into ``batch``; return the records as planned."""
    planned, skipped = plan(rt, event, context)
    batch.plan_sinks(event.id, planned, skipped)
    for name, reason in skipped.items():
        batch.add_step(event.id, "sink_skipped", reason, sink=name)
    return planned | {name: SinkRecord(state="skipped", reason=r) for name, r in skipped.items()}


def fan_out(
    rt: Runtime, event: Event, context: JourneyContext, records: dict[str, SinkRecord]
) -> None:
    """Deliver to each sink not done yet, side by side, in this task.

    Inline rather than one task per sink: a task hop costs the worker more CPU than the
    delivery itself. The sinks of one event are called at once (``worker/parallel.py``: this
    thread takes the first, a small per-process pool the rest), so the last note arrives one
    sink's latency after the journey, not the sum of them. Each keeps its own claim, record
    and retry path (``deliver``): one that raises never stops or hides the others. A sink that
    must be tried again gets a ``deliver_to_sink`` task of its own, so its retries never hold
    up or repeat the others. ``records`` may be stale (another worker may be on the same
    event): ``deliver`` reads the record again under the lock.
    """
    if not records:
        with rt.store.batch() as batch:
            batch.set_state(event.id, "delivered", "no sink is configured")
            batch.add_step(event.id, "delivered", "no sink is configured")
        return
    due = [name for name, record in records.items() if not record.terminal]
    outcomes = run_each([functools.partial(_deliver_in_scope, rt, event, context, n) for n in due])
    retrying = False
    failure: BaseException | None = None
    for name, outcome in zip(due, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            # The sink's record stays as the call left it (``posting`` at worst, which the
            # next run checks with the sink); the task fails after the others are scheduled.
            failure = failure or outcome
        elif outcome is not None:
            rt.store.expect_progress(event.id, max(0.05, outcome))
            deliver_to_sink.apply_async(
                (event.id, name), countdown=max(0.05, outcome), queue=rt.settings.celery_queue
            )
            retrying = True
    if failure is not None:
        raise failure
    if not retrying:
        rt.store.refresh_state(event.id)


def _deliver_in_scope(
    rt: Runtime, event: Event, context: JourneyContext, sink_name: str
) -> float | None:
    """``deliver`` with the event and the sink on the Sentry scope: an error reported from a
    pool thread names them as one from the task's own thread would."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("event_id", event.id)
        scope.set_tag("sink", sink_name)
        return deliver(rt, event, context, sink_name)


# Delivering ------------------------------------------------------------------------------

# The rule name sinks are planned under when no routes file is configured.
DEFAULT_RULE = "default"

# Seconds before trying a pair again that another worker is delivering right now.
LOCKED_RETRY_SECONDS = 2.0


@app.task(name=DELIVER_TO_SINK_TASK, **EVENT_TASK_OPTIONS)
def deliver_to_sink(self: Task, event_id: str, sink_name: str) -> None:
    """One sink's retry (or replay): the first attempt is made inline by ``enrich_event``."""
    rt = get_runtime()
    store = rt.store
    snapshot = store.snapshot(event_id)
    record = snapshot.sinks.get(sink_name) if snapshot else None
    if snapshot is None or record is None or record.terminal:
        return
    if snapshot.context is None:
        reason = "event data expired"
        store.save_sink(
            event_id, sink_name, record.model_copy(update={"state": "failed", "reason": reason})
        )
        store.refresh_state(event_id)
        return
    countdown = deliver(rt, snapshot.event, snapshot.context, sink_name)
    if countdown is None:
        store.refresh_state(event_id)
    else:
        raise _reschedule(self, event_id, countdown)


def deliver(rt: Runtime, event: Event, context: JourneyContext, sink_name: str) -> float | None:
    """Claim the (event, sink) pair, make one attempt and record what it ended with;
    returns a countdown when the pair must be tried again, else None."""
    store = rt.store
    # The lock lives as long as this worker renews it (worker/lease.py): a worker killed
    # mid-call blocks its successor for a lease at most.
    claim = store.claim_sink(event.id, sink_name, rt.settings.worker_lease_seconds)
    if claim is None:
        # Another worker is delivering this pair right now (a duplicate delivery).
        return LOCKED_RETRY_SECONDS
    try:
        record, sink = claim.record, rt.sinks.get(sink_name)
        if record is None or record.terminal:
            store.release_sink(claim)
            return None
        if sink is None:
            reason = f"sink {sink_name} is not configured on this worker"
            outcome = _failed(record, "failed", reason, {"event_id": event.id, "sink": sink_name})
        else:
            outcome = attempt_delivery(rt, sink, event, context, record)
    except BaseException:
        store.release_sink(claim)
        raise
    with store.batch() as batch:
        outcome.write(batch, event.id, sink_name)
        batch.release_sink(claim)
    metrics.sink_delivery(sink_name, outcome.label)
    return outcome.countdown


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt ended with: the sink's new record, the step that tells
    about it, whether it is a dead letter, and the countdown to the next try (None: done)."""

    record: SinkRecord
    step: str | None
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    dead_letter: bool = False
    countdown: float | None = None

    @property
    def label(self) -> str:
        """The outcome as the delivery metric counts it."""
        if self.countdown is not None:
            return "retry" if self.step is not None else "throttled"
        return self.record.state

    def write(self, store: EventStore, event_id: str, sink: str) -> None:
        store.save_sink(event_id, sink, self.record)
        if self.step is not None:
            store.add_step(event_id, self.step, self.detail, sink=sink, **self.extra)
        if self.dead_letter:
            store.add_dead_letter(event_id, sink, self.record.reason or "", self.record.attempts)


def attempt_delivery(
    rt: Runtime, sink: Sink, event: Event, context: JourneyContext, record: SinkRecord
) -> Outcome:
    """One delivery attempt, with ``record`` read under the pair's lock. The ``posting``
    record is written before the call; the outcome is for the caller to write."""
    store, settings = rt.store, rt.settings
    extra = {"event_id": event.id, "sink": sink.name, "attempt": record.attempts + 1}
    before = record
    try:
        if record.state == "posting" and sink.already_delivered(event):
            log.info("already delivered", extra=extra)
            found = "found in the sink after a restart"
            return Outcome(
                record.model_copy(update={"state": "delivered", "reason": found}),
                "sink_delivered",
                found,
            )
        note = sink.render_note(event, context, record.template)
        record = record.model_copy(
            update={
                "state": "posting",
                "attempts": record.attempts + 1,
                "reason": None,
                "warning": note.warning,
            }
        )
        store.save_sink(event.id, sink.name, record)
        # With replicas: post only once they hold "posting" (else a failover could lose it).
        rt.confirm_replicated()
        if note.warning:
            store.add_step(event.id, "template_failed", note.warning, sink=sink.name)
        result = sink.deliver(event, context, note)
    except Throttled as exc:
        # Nothing was sent: back to the state before this attempt, without using one up.
        countdown = min(exc.retry_after, settings.max_countdown)
        return Outcome(before.model_copy(update={"reason": str(exc)}), None, countdown=countdown)
    except UpstreamError as exc:
        if not exc.retryable:
            return _failed(record, "failed", str(exc), extra)
        if record.attempts > settings.max_retries:
            return _failed(record, "dead", f"{exc} (after {record.attempts} attempts)", extra)
        countdown = retry_countdown(record.attempts, exc.retry_after, settings)
        log.info(
            "sink failed, retrying",
            extra={**extra, "countdown": round(countdown, 2), "error": str(exc)},
        )
        return Outcome(
            record.model_copy(
                update={
                    "state": "posting" if exc.effect_possible else "pending",
                    "reason": str(exc),
                }
            ),
            "sink_retry",
            str(exc),
            {"attempt": record.attempts, "countdown": round(countdown, 2)},
            countdown=countdown,
        )
    except EnrichmentError as exc:
        return _failed(record, "failed", str(exc), extra)
    except Exception as exc:
        # Never leave a sink "posting" forever: record the failure; replay can retry it.
        log.exception("unexpected error while delivering", extra=extra)
        return _failed(record, "failed", unexpected(exc), extra)
    log.info("delivered", extra=extra)
    return Outcome(
        record.model_copy(
            update={
                "state": "delivered",
                "external_id": result.external_id,
                "reason": result.detail,
            }
        ),
        "sink_delivered",
        result.detail,
    )


def _failed(record: SinkRecord, state: Any, reason: str, extra: dict[str, Any]) -> Outcome:
    log.warning("sink %s", state, extra={**extra, "reason": reason})
    return Outcome(
        record.model_copy(update={"state": state, "reason": reason}),
        f"sink_{state}",
        reason,
        dead_letter=True,
    )


# Recovering lost tasks -------------------------------------------------------------------


@app.task(name="visitor_enrich.requeue_stuck_events", acks_late=True, ignore_result=True)
def requeue_stuck_events() -> int:
    """Beat's copy of the sweep each worker runs (worker/lease.py): queue ``enrich_event``
    again for events that no live worker holds and that made no progress for a lease."""
    return requeue_abandoned(get_runtime())
