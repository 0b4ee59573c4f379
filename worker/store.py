"""Event state in Redis: dedupe on accept, per-sink outcomes, the step log and dead letters.

Keys (all under ``REDIS_KEY_PREFIX``):

    event:{id}          hash: event (JSON), state, reason, created_at, updated_at,
                        context (JSON journey), source_attempts
    event:{id}:sinks    hash: sink name -> JSON SinkRecord
    event:{id}:steps    list of JSON steps after "accepted", oldest first (capped)
    lock:{id}:{sink}    short lock held while one worker delivers to one sink
    inflight            sorted set: events not final, scored by the last time something
                        vouched for them (progress, a live worker holding them, a retry due)
    sweep               short lock: one worker at a time re-queues abandoned events
    abandoned           hash: event id -> when the sweep first found it abandoned
    dead                hash: dead-letter id -> JSON DeadLetter
    journeys            zset: events still holding personal data, scored by acceptance time
    subject:{hash}      set: ids of the events of one visitor id or email (the hash of it,
                        see ``subject_key``; the index holds no personal data)
    erased:{hash}       tombstone of an erased event: the hash of its id, so a sender's retry
                        is still a duplicate
    audit               list: one JSON line per erasure (counts only, no personal data)

Every key of an event expires after ``EVENT_RETENTION_SECONDS``; that is also the dedupe window.
The personal data in it (the inbound event, the journey, step and sink details) is removed
earlier, after ``JOURNEY_RETENTION_SECONDS`` (``scrub_event``, run by worker/privacy.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import redis
from pydantic import BaseModel, Field

from worker.events import Event
from worker.journey import JourneyContext
from worker.metrics import event_finished

EventState = Literal["queued", "enriching", "delivered", "partially_delivered", "failed", "dead"]
SinkState = Literal["pending", "posting", "delivered", "skipped", "failed", "dead"]
FINAL_EVENT_STATES = frozenset({"delivered", "partially_delivered", "failed", "dead"})
TERMINAL_SINK_STATES = frozenset({"delivered", "skipped", "failed", "dead"})
MAX_STEPS = 200
# The event hash's field with the notes the sandbox's console sink kept (personal data).
KEPT_NOTES_FIELD = "kept_notes"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SinkRecord(BaseModel):
    state: SinkState = "pending"
    attempts: int = 0
    reason: str | None = None
    # What the sink created (note id, comment id), when it says.
    external_id: str | None = None
    updated_at: str = Field(default_factory=_now)
    # The routing rule that sent the event here ("default" without a routes file), and the
    # template it chose for this sink.
    rule: str | None = None
    template: str | None = None
    # Why the note was not rendered with the chosen template (the built-in one was posted).
    warning: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_SINK_STATES


class DeadLetter(BaseModel):
    id: str
    event_id: str
    sink: str | None = None  # None: the event itself (the source) ran out of retries
    reason: str
    attempts: int = 0
    dead_at: str = Field(default_factory=_now)
    # The inbound event, copied here when retention removes it from the event record, so the
    # letter can still be replayed until DEAD_LETTER_RETENTION_SECONDS.
    event: Event | None = None


def overall_state(sinks: dict[str, SinkRecord]) -> EventState | None:
    """The event's state from its sinks' outcomes; None while any sink is still in flight."""
    if any(not record.terminal for record in sinks.values()):
        return None
    delivered = sum(1 for r in sinks.values() if r.state == "delivered")
    dead = sum(1 for r in sinks.values() if r.state == "dead")
    failed = sum(1 for r in sinks.values() if r.state == "failed")
    if dead + failed == 0:
        return "delivered"
    if delivered:
        return "partially_delivered"
    return "dead" if dead else "failed"


# Claim event ids once and queue their tasks, atomically: create each event's hash only when
# it does not exist yet, and push its task message (when given) in the same script.
#   KEYS: inflight zset, the Celery queue list, journeys zset, then per event: its hash and
#         its tombstone (``erased:{hash of the id}``, left by an erasure)
#   ARGV: now (ISO), retention (s), now (unix), then per event: id, event JSON, task message
#         ('' records without queueing)
# Returns 1 (queued now) or 0 (a duplicate) per event. An event recorded earlier without its
# task (recorded only, or by a version that published separately and failed) is queued by
# the sender's retry instead of being called a duplicate: the 'enqueued' field tells.
# An erased event's id is a duplicate too: EXISTS counts the hash and the tombstone in one
# command. New events go into the journeys zset (what retention scrubs later) with ONE
# ZADD per script call, not per event: the privacy work adds one command per batch.
# The push comes first: a script that fails half-way (Redis does not roll back) then leaves
# at worst a task whose event is not recorded, which the task ignores, never a recorded
# event whose task is lost. The "accepted" step is not written to the steps list: it is
# ``created_at`` and the event's type, which ``describe`` shows first (five commands per
# event instead of eight: the script is most of Redis's work per inbound event). A hash
# without 'created_at' and without a tombstone is no accepted event (see the script); that
# check costs no command for an event seen for the first time.
_ACCEPT = """
local created = {}
local journeys = {}
local now, retention, unix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, (#KEYS - 3) / 2 do
  local event_key = KEYS[2 + 2 * i]
  local a = 3 * i + 1
  local message = ARGV[a + 2]
  created[i] = 0
  local found = redis.call('EXISTS', event_key, KEYS[3 + 2 * i])
  if found == 1 and redis.call('HEXISTS', event_key, 'created_at') == 0
      and redis.call('EXISTS', KEYS[3 + 2 * i]) == 0 then
    -- Left by a task's writes that reached a new master without the event (a Redis Sentinel
    -- failover: the event was on the old one, whose sender got 503): no accepted event, which
    -- always has created_at (kept by retention's scrub too). Its stale fields go; its sink
    -- records stay (they say what was posted already).
    redis.call('DEL', event_key)
    found = 0
  end
  if found > 0 then
    if message ~= '' and redis.call('HGET', event_key, 'state') == 'queued'
        and redis.call('HEXISTS', event_key, 'enqueued') == 0 then
      redis.call('LPUSH', KEYS[2], message)
      redis.call('HSET', event_key, 'enqueued', '1')
      created[i] = 1
    end
  else
    local fields = {'event', ARGV[a + 1], 'state', 'queued', 'created_at', now, 'updated_at', now}
    if message ~= '' then
      redis.call('LPUSH', KEYS[2], message)
      table.insert(fields, 'enqueued')
      table.insert(fields, '1')
    end
    redis.call('HSET', event_key, unpack(fields))
    redis.call('EXPIRE', event_key, retention)
    redis.call('ZADD', KEYS[1], unix, ARGV[a])
    table.insert(journeys, unix)
    table.insert(journeys, ARGV[a])
    created[i] = 1
  end
end
if #journeys > 0 then
  redis.call('ZADD', KEYS[3], unpack(journeys))
end
return created
"""

# Take the (event, sink) delivery lock and read the sink's record under it, in one round
# trip. KEYS: the lock, the event's sinks hash. ARGV: token, ttl (ms), sink name.
# Returns false when another worker holds the lock, else the record's JSON ('' when none).
_CLAIM_SINK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  return redis.call('HGET', KEYS[2], ARGV[3]) or ''
end
return false
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extend a lock this process still holds. KEYS: the lock. ARGV: token, ttl (ms).
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class EventSnapshot:
    """What a task needs of an event, read in one round trip."""

    event: Event
    state: str | None
    context: JourneyContext | None
    sinks: dict[str, SinkRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class ErasedRecords:
    """What ``erase_events`` removed: the notes the events had posted (sink, external id),
    and the events a task may have been working on at that moment."""

    notes: list[tuple[str, str]]
    busy: list[str]


@dataclass(frozen=True)
class SinkClaim:
    """The held delivery lock of one (event, sink) pair and the sink's record read under it."""

    key: str
    token: str
    record: SinkRecord | None


class EventStore:
    """All event bookkeeping; one instance per process, over one Redis client."""

    def __init__(self, client: redis.Redis, prefix: str, retention_seconds: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention = retention_seconds
        self._accept = client.register_script(_ACCEPT)
        self._claim = client.register_script(_CLAIM_SINK)
        # Set on the copies that ``batch`` hands out: their writes go into this pipeline.
        self._batch: Any = None
        # The sink locks this process holds (key -> token), renewed while it lives
        # (``renew_sink_locks``); shared with the ``batch`` copies.
        self._held_locks: dict[str, str] = {}
        self._held_guard = threading.Lock()

    # Round trips ---------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[EventStore]:
        """This store with its writes collected and sent in one round trip when the block
        ends (nothing is sent when it raises). Only writes belong in the block: a read would
        return the pipeline, not a value. A task's bookkeeping is a few writes at a time, and
        each round trip costs the worker more CPU than the writes themselves."""
        view = copy.copy(self)
        view._batch = self.redis.pipeline(transaction=False)
        yield view
        view._batch.execute()

    @contextmanager
    def _commands(self) -> Iterator[Any]:
        """Where a write goes: the enclosing batch, or a pipeline of its own sent at once."""
        if self._batch is not None:
            yield self._batch
            return
        pipe = self.redis.pipeline(transaction=False)
        yield pipe
        pipe.execute()

    # Keys -------------------------------------------------------------------------------

    def _event_key(self, event_id: str) -> str:
        return f"{self.prefix}event:{event_id}"

    def _sinks_key(self, event_id: str) -> str:
        return f"{self.prefix}event:{event_id}:sinks"

    def _steps_key(self, event_id: str) -> str:
        return f"{self.prefix}event:{event_id}:steps"

    @property
    def _inflight_key(self) -> str:
        # Events not yet in a final state, scored by the time of their last progress.
        return f"{self.prefix}inflight"

    @property
    def _dead_key(self) -> str:
        return f"{self.prefix}dead"

    @property
    def _journeys_key(self) -> str:
        # Events whose record still holds personal data, scored by acceptance time.
        return f"{self.prefix}journeys"

    @property
    def audit_key(self) -> str:
        return f"{self.prefix}audit"

    def subject_key(self, kind: SubjectKind, value: str) -> str:
        """The index of one visitor id's or email's events; named by a hash of it."""
        return f"{self.prefix}subject:{subject_hash(kind, value)}"

    def tombstone_key(self, event_id: str) -> str:
        return f"{self.prefix}erased:{digest(event_id)}"

    # Accepting ---------------------------------------------------------------------------

    def accept_script(self, client: Any) -> Any:
        """The accept script registered on ``client`` (sync, or asyncio in the web process)."""
        return client.register_script(_ACCEPT)

    def accept_arguments(
        self, items: Sequence[tuple[Event, str]], queue: str
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the accept script for (event, task message) pairs."""
        keys = [self._inflight_key, queue, self._journeys_key]
        args: list[Any] = [_now(), self.retention, time.time()]
        event_key, tombstone_key = self._event_key, self.tombstone_key
        for event, message in items:
            keys += (event_key(event.id), tombstone_key(event.id))
            args += [event.id, event.model_dump_json(), message]
        return keys, args

    def accept(self, event: Event, queue: str = "", message: str = "") -> bool:
        """Record a new event as queued (and push ``message`` onto ``queue`` with it);
        False when that id was accepted before. The web process does the same for many
        events at once (worker/intake.py)."""
        keys, args = self.accept_arguments([(event, message)], queue)
        created = self._accept(keys=keys, args=args)
        return bool(created[0])

    def snapshot(self, event_id: str) -> EventSnapshot | None:
        """The event, its state, journey and sink records; None when the event is gone."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self._event_key(event_id), "event", "state", "context")
        pipe.hgetall(self._sinks_key(event_id))
        (raw_event, state, context), sinks = pipe.execute()
        if not raw_event:
            return None
        return EventSnapshot(
            event=Event.model_validate_json(raw_event),
            state=_text(state),
            context=JourneyContext.model_validate_json(context) if context else None,
            sinks={_text(k): SinkRecord.model_validate_json(v) for k, v in sinks.items()},
        )

    def load_event(self, event_id: str) -> Event | None:
        raw = self.redis.hget(self._event_key(event_id), "event")
        return Event.model_validate_json(raw) if raw else None

    def replace_event(self, event: Event) -> None:
        """Store a completed event (e.g. a visitor id found on the livechat visitor), indexed
        under its (maybe new) visitor id for erasure."""
        with self._commands() as pipe:
            pipe.hset(self._event_key(event.id), "event", event.model_dump_json())
        self.index_subjects(event)

    def restore_event(self, event: Event) -> None:
        """Put back an event that retention removed (a dead letter's copy, for a replay): it
        holds personal data again, so it is indexed and retention will remove it again."""
        self.replace_event(event)
        with self._commands() as pipe:
            pipe.zadd(self._journeys_key, {event.id: time.time()})

    # Privacy -----------------------------------------------------------------------------

    def index_subjects(self, event: Event) -> None:
        """Index the event under each visitor id and email it names (hashed), so an erasure
        finds it without scanning. Written by the worker when it takes the event up, not by
        the accept script: events not taken up yet are in the inflight set, which an erasure
        reads too."""
        with self._commands() as pipe:
            for kind, value in event_subjects(event):
                key = self.subject_key(kind, value)
                pipe.sadd(key, event.id)
                pipe.expire(key, self.retention)

    def indexed_events(self, kind: SubjectKind, value: str) -> list[str]:
        return [_text(i) for i in self.redis.smembers(self.subject_key(kind, value))]

    def inflight_events(self) -> list[str]:
        return [_text(i) for i in self.redis.zrange(self._inflight_key, 0, -1)]

    def stored_events(self, event_ids: Sequence[str]) -> dict[str, Event]:
        """The stored inbound events among ``event_ids`` (those retention left), by id."""
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hget(self._event_key(event_id), "event")
        found = {}
        for event_id, raw in zip(event_ids, pipe.execute(), strict=True):
            if raw:
                found[event_id] = Event.model_validate_json(raw)
        return found

    def scan_events(self, batch: int = 500) -> Iterator[list[str]]:
        """Every event id under the prefix, in batches, by SCAN (the erasure's fallback for
        events that no index names, e.g. accepted by an older version)."""
        prefix = f"{self.prefix}event:"
        ids: list[str] = []
        pattern = f"{_glob_escape(prefix)}*"
        for key in self.redis.scan_iter(match=pattern, count=batch, _type="HASH"):
            ids.append(_text(key)[len(prefix) :])
            if len(ids) >= batch:
                yield ids
                ids = []
        if ids:
            yield ids

    def erase_events(
        self, events: dict[str, Event | None], *, tombstone: bool = True
    ) -> ErasedRecords:
        """Remove every record of these events; return the (sink, external id) pairs of the
        notes they posted, for the operator to remove there, and the ids of the events a
        worker was delivering (a delivery lock held) at that moment. Each event leaves a
        tombstone (the hash of its id, until its dedupe window ends) so a sender's retry is
        still a duplicate. ``events`` maps ids to their inbound event where it is still stored
        (its visitor ids and email are taken out of the index)."""
        ids = list(events)
        pipe = self.redis.pipeline(transaction=False)
        for event_id in ids:
            pipe.hgetall(self._sinks_key(event_id))
            pipe.ttl(self._event_key(event_id))
            pipe.hget(self._event_key(event_id), "state")
        answers = pipe.execute()
        sinks = {
            event_id: {_text(k): SinkRecord.model_validate_json(v) for k, v in raw.items()}
            for event_id, raw in zip(ids, answers[0::3], strict=True)
        }
        ttls = dict(zip(ids, answers[1::3], strict=True))
        # A task may be working on these right now: fetching the journey (it writes it, and
        # plans the sinks, when the fetch returns) or delivering (a lock held). Locks hold no
        # personal data (a random token) and expire on their own; they are left to the worker.
        busy = [
            event_id
            for event_id, state in zip(ids, answers[2::3], strict=True)
            if _text(state) == "enriching" or self.locks_held({event_id: list(sinks[event_id])})
        ]
        notes: list[tuple[str, str]] = []
        pipe = self.redis.pipeline(transaction=False)
        for event_id in ids:
            records = sinks[event_id]
            notes += [(name, r.external_id) for name, r in records.items() if r.external_id]
            pipe.delete(
                self._event_key(event_id), self._sinks_key(event_id), self._steps_key(event_id)
            )
            pipe.zrem(self._inflight_key, event_id)
            pipe.zrem(self._journeys_key, event_id)
            pipe.hdel(self._dead_key, event_id, *(f"{event_id}:{name}" for name in records))
            if tombstone:
                ttl = int(ttls[event_id])
                pipe.set(self.tombstone_key(event_id), "1", ex=ttl if ttl > 0 else self.retention)
            event = events[event_id]
            for kind, value in event_subjects(event) if event else ():
                pipe.srem(self.subject_key(kind, value), event_id)
        pipe.execute()
        return ErasedRecords(notes, busy)

    def recreated(self, event_ids: Sequence[str]) -> list[str]:
        """Which of these erased events a task wrote records of again since."""
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.exists(self._event_key(event_id), self._sinks_key(event_id))
        return [e for e, n in zip(event_ids, pipe.execute(), strict=True) if int(n)]

    def sinks_of(self, event_ids: Sequence[str]) -> dict[str, list[str]]:
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hkeys(self._sinks_key(event_id))
        return {
            e: [_text(name) for name in names]
            for e, names in zip(event_ids, pipe.execute(), strict=True)
        }

    def locks_held(self, sinks: dict[str, list[str]]) -> bool:
        """Whether a delivery lock of any of these (event id -> sink names) is held."""
        keys = [f"{self.prefix}lock:{e}:{name}" for e, names in sinks.items() for name in names]
        return bool(keys) and int(self.redis.exists(*keys)) > 0

    def audit(self, entry: dict[str, Any], keep: int = 1000) -> None:
        """Append one audit line (the caller keeps personal data out of it)."""
        with self._commands() as pipe:
            pipe.lpush(self.audit_key, orjson.dumps({"at": _now(), **entry}))
            pipe.ltrim(self.audit_key, 0, keep - 1)

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.redis.lrange(self.audit_key, 0, -1)]

    def journeys_older_than(self, seconds: float, limit: int = 500) -> list[str]:
        """Events accepted more than ``seconds`` ago whose personal data is still stored."""
        ids = self.redis.zrangebyscore(
            self._journeys_key, "-inf", time.time() - seconds, start=0, num=limit
        )
        return [_text(i) for i in ids]

    def scrub_event(self, event_id: str) -> bool:
        """Remove the personal data of one event (retention), keeping what its status needs:
        state, type, times, step names, each sink's state, attempts and external id. The
        inbound event is copied into the event's dead letters, which a replay needs (they
        expire on their own clock). False when the event was gone already."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self._event_key(event_id), "event", "state")
        pipe.hgetall(self._sinks_key(event_id))
        pipe.lrange(self._steps_key(event_id), 0, -1)
        pipe.ttl(self._event_key(event_id))
        (raw_event, state), sinks, steps, ttl = pipe.execute()
        event = Event.model_validate_json(raw_event) if raw_event else None
        records = {_text(k): SinkRecord.model_validate_json(v) for k, v in sinks.items()}
        letter_ids = [event_id, *(f"{event_id}:{name}" for name in records)]
        letters = self.redis.hmget(self._dead_key, letter_ids)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self._journeys_key, event_id)
        if ttl > 0:
            key = self._event_key(event_id)
            fields: dict[str, str] = {"retention": "personal data removed"}
            if event is not None:
                fields["type"] = event.type
            if _text(state) not in FINAL_EVENT_STATES:
                # It can no longer be enriched or delivered; say so instead of leaving it
                # in flight forever.
                fields |= {"state": "failed", "updated_at": _now()}
                pipe.zrem(self._inflight_key, event_id)
            pipe.hdel(key, "event", "context", "reason", KEPT_NOTES_FIELD)
            pipe.hset(key, mapping=fields)
            if records:
                pipe.hset(
                    self._sinks_key(event_id),
                    mapping={
                        name: r.model_copy(update={"reason": None}).model_dump_json()
                        for name, r in records.items()
                    },
                )
            if steps:
                steps_key = self._steps_key(event_id)
                pipe.delete(steps_key)
                pipe.rpush(steps_key, *(orjson.dumps(_bare_step(s)) for s in steps))
                pipe.expire(steps_key, ttl)
        for letter_id, raw in zip(letter_ids, letters, strict=True):
            if raw and event is not None:
                letter = DeadLetter.model_validate_json(raw).model_copy(update={"event": event})
                pipe.hset(self._dead_key, letter_id, letter.model_dump_json())
        for kind, value in event_subjects(event) if event else ():
            pipe.srem(self.subject_key(kind, value), event_id)
        pipe.execute()
        return int(ttl) > 0

    def drop_dead_letters_older_than(self, seconds: float) -> int:
        cutoff = datetime.now(UTC).timestamp() - seconds
        old = [
            letter.id
            for letter in self.dead_letters()
            if datetime.fromisoformat(letter.dead_at.replace("Z", "+00:00")).timestamp() < cutoff
        ]
        if old:
            self.redis.hdel(self._dead_key, *old)
        return len(old)

    # State and steps ---------------------------------------------------------------------

    def set_state(self, event_id: str, state: EventState, reason: str | None = None) -> None:
        fields = {"state": state, "updated_at": _now()}
        if reason is not None:
            fields["reason"] = reason
        with self._commands() as pipe:
            pipe.hset(self._event_key(event_id), mapping=fields)
            if state in FINAL_EVENT_STATES:
                pipe.zrem(self._inflight_key, event_id)
                event_finished(state)

    def get_field(self, event_id: str, name: str) -> str | None:
        value = self.redis.hget(self._event_key(event_id), name)
        return value.decode() if isinstance(value, bytes) else value

    def add_step(self, event_id: str, step: str, detail: str | None = None, **extra: Any) -> None:
        entry = {"at": _now(), "step": step, **({"detail": detail} if detail else {}), **extra}
        key = self._steps_key(event_id)
        with self._commands() as pipe:
            pipe.rpush(key, orjson.dumps(entry))
            pipe.ltrim(key, -MAX_STEPS, -1)
            pipe.expire(key, self.retention)
            # GT: progress never moves back a retry that is due later (``expect_progress``).
            pipe.zadd(self._inflight_key, {event_id: time.time()}, xx=True, gt=True)

    def touch_inflight(self, event_ids: Sequence[str]) -> None:
        """Vouch for events a live worker holds: they are not abandoned, however long their
        task takes."""
        if event_ids:
            now = time.time()
            with self._commands() as pipe:
                pipe.zadd(self._inflight_key, dict.fromkeys(event_ids, now), xx=True, gt=True)

    def expect_progress(self, event_id: str, within: float) -> None:
        """The event has a task due in ``within`` seconds (a retry's countdown): it is not
        abandoned before then, though no worker may hold it meanwhile."""
        with self._commands() as pipe:
            pipe.zadd(self._inflight_key, {event_id: time.time() + within}, xx=True, gt=True)

    def take_sweep_turn(self, seconds: float) -> bool:
        """True for one caller per ``seconds`` across all processes: whose turn it is to
        re-queue abandoned events."""
        key = f"{self.prefix}sweep"
        return bool(self.redis.set(key, secrets.token_hex(4), nx=True, px=int(seconds * 1000)))

    def sightings(self, event_ids: Sequence[str]) -> dict[str, float]:
        """When each of ``event_ids`` was first found abandoned (now for those not seen so
        before); only these are remembered from now on."""
        key = f"{self.prefix}abandoned"
        now = time.time()
        seen = {_text(k): float(v) for k, v in self.redis.hgetall(key).items()}
        first = {event_id: seen.get(event_id, now) for event_id in event_ids}
        self.remember_sightings(first)
        return first

    def remember_sightings(self, first: dict[str, float]) -> None:
        key = f"{self.prefix}abandoned"
        with self._commands() as pipe:
            pipe.delete(key)
            if first:
                pipe.hset(key, mapping=first)
                pipe.expire(key, 3600)

    def stuck_events(self, idle_seconds: float, limit: int = 200) -> list[str]:
        """Events not final that nothing vouched for in ``idle_seconds`` (see ``inflight``)."""
        ids = self.redis.zrangebyscore(
            self._inflight_key, "-inf", time.time() - idle_seconds, start=0, num=limit
        )
        return [_text(i) for i in ids]

    def drop_inflight(self, event_id: str) -> None:
        self.redis.zrem(self._inflight_key, event_id)

    def reset_source(self, event_id: str) -> None:
        """Forget the source attempts and any journey, so the event is fetched afresh."""
        self.redis.hdel(self._event_key(event_id), "source_attempts", "context", "reason")

    def reset_sink(self, event_id: str, sink: str, state: SinkState) -> None:
        record = self.sink_record(event_id, sink) or SinkRecord()
        self.save_sink(event_id, sink, record.model_copy(update={"state": state, "attempts": 0}))

    def incr_source_attempts(self, event_id: str) -> int:
        return int(self.redis.hincrby(self._event_key(event_id), "source_attempts", 1))

    # Journey -----------------------------------------------------------------------------

    def save_context(self, event_id: str, context: JourneyContext) -> None:
        with self._commands() as pipe:
            pipe.hset(self._event_key(event_id), "context", context.model_dump_json())

    # Sinks -------------------------------------------------------------------------------

    def plan_sinks(
        self, event_id: str, planned: dict[str, SinkRecord], skipped: dict[str, str]
    ) -> None:
        """Create each sink's record once; a redelivered task never resets an outcome."""
        key = self._sinks_key(event_id)
        with self._commands() as pipe:
            for name, record in planned.items():
                pipe.hsetnx(key, name, record.model_dump_json())
            for name, reason in skipped.items():
                record = SinkRecord(state="skipped", reason=reason)
                pipe.hsetnx(key, name, record.model_dump_json())
            pipe.expire(key, self.retention)

    def sink_record(self, event_id: str, sink: str) -> SinkRecord | None:
        raw = self.redis.hget(self._sinks_key(event_id), sink)
        return SinkRecord.model_validate_json(raw) if raw else None

    def sink_records(self, event_id: str) -> dict[str, SinkRecord]:
        raw = self.redis.hgetall(self._sinks_key(event_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): SinkRecord.model_validate_json(v)
            for k, v in raw.items()
        }

    def save_sink(self, event_id: str, sink: str, record: SinkRecord) -> None:
        record = record.model_copy(update={"updated_at": _now()})
        with self._commands() as pipe:
            pipe.hset(self._sinks_key(event_id), sink, record.model_dump_json())

    def claim_sink(self, event_id: str, sink: str, ttl_seconds: float) -> SinkClaim | None:
        """Take the (event, sink) delivery lock; None when another worker holds it.

        The lock expires after ``ttl_seconds`` unless renewed (``renew_sink_locks``, while
        this process lives), so a worker killed mid-call blocks its successor only that long."""
        key = f"{self.prefix}lock:{event_id}:{sink}"
        token = secrets.token_hex(8)
        raw = self._claim(
            keys=[key, self._sinks_key(event_id)], args=[token, int(ttl_seconds * 1000), sink]
        )
        if raw is None:
            return None
        with self._held_guard:
            self._held_locks[key] = token
        record = SinkRecord.model_validate_json(raw) if raw else None
        return SinkClaim(key=key, token=token, record=record)

    def renew_sink_locks(self, ttl_seconds: float) -> None:
        """Extend every sink lock this process holds by ``ttl_seconds``: a lock lives as long
        as its holder, and ``ttl_seconds`` after the holder dies."""
        with self._held_guard:
            held = list(self._held_locks.items())
        if held:
            with self._commands() as pipe:
                for key, token in held:
                    pipe.eval(_RENEW_LOCK, 1, key, token, int(ttl_seconds * 1000))

    def release_sink(self, claim: SinkClaim) -> None:
        """Give the lock up, unless it expired and another worker holds it now."""
        with self._held_guard:
            self._held_locks.pop(claim.key, None)
        with self._commands() as pipe:
            # EVAL, not a registered script: in a pipeline those cost a SCRIPT EXISTS first.
            pipe.eval(_RELEASE_LOCK, 1, claim.key, claim.token)

    def refresh_state(self, event_id: str) -> EventState | None:
        """Set the event's overall state (and its step) once every planned sink has an
        outcome."""
        state = overall_state(self.sink_records(event_id))
        if state is not None:
            with self.batch() as batch:
                batch.set_state(event_id, state)
                batch.add_step(event_id, state)
        return state

    # Reading for the API -----------------------------------------------------------------

    def describe(self, event_id: str) -> dict[str, Any] | None:
        """The event's status as ``GET /v1/events/{id}`` shows it."""
        pipe = self.redis.pipeline()
        pipe.hgetall(self._event_key(event_id))
        pipe.hgetall(self._sinks_key(event_id))
        pipe.lrange(self._steps_key(event_id), 0, -1)
        fields, sinks, steps = pipe.execute()
        if not fields:
            return None
        data = {_text(k): _text(v) for k, v in fields.items()}
        # After JOURNEY_RETENTION_SECONDS only the type is left of the inbound event.
        event = json.loads(data["event"]) if data.get("event") else {"type": data.get("type")}
        stored = [json.loads(s) for s in steps]
        # The accept script records no "accepted" step (see there): it is the event's creation.
        # An event accepted by an earlier version has it stored already.
        if not (stored and stored[0].get("step") == "accepted"):
            accepted = {
                "at": data.get("created_at"),
                "step": "accepted",
                "detail": event.get("type"),
            }
            stored.insert(0, accepted)
        context = json.loads(data["context"]) if data.get("context") else None
        return {
            "eventId": event_id,
            "type": event.get("type"),
            "visitorId": event.get("visitor_id"),
            "state": data.get("state"),
            "reason": data.get("reason"),
            "createdAt": data.get("created_at"),
            "updatedAt": data.get("updated_at"),
            "source": {
                "attempts": int(data.get("source_attempts") or 0),
                "journeyFound": context.get("found") if context else None,
                # The journey came from the profile cache (worker/profiles.py).
                "journeyCached": any(s.get("step") == "journey_cached" for s in stored),
            },
            "sinks": {
                _text(name): SinkRecord.model_validate_json(raw).model_dump(
                    mode="json", by_alias=True
                )
                for name, raw in sinks.items()
            },
            "steps": stored,
            **({"retention": data["retention"]} if data.get("retention") else {}),
        }

    def keep_notes(self, event_id: str, notes: dict[str, str]) -> None:
        """Keep what the sandbox's console sink would have posted, by sink (JSON each): in the
        event's own hash, so retention and erasure remove it with the event's personal data."""
        self.redis.hset(self._event_key(event_id), KEPT_NOTES_FIELD, orjson.dumps(notes))

    def kept_notes(self, event_id: str) -> dict[str, str] | None:
        raw = self.redis.hget(self._event_key(event_id), KEPT_NOTES_FIELD)
        return dict(orjson.loads(raw)) if raw else None

    def recent_ids(self, limit: int) -> list[str]:
        """The ids of the ``limit`` events accepted last, newest first (the console's list):
        those still holding their data, so an erased or scrubbed event is not listed."""
        return [_text(i) for i in self.redis.zrevrange(self._journeys_key, 0, limit - 1)]

    def summaries(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Each event's stored fields and its sinks' records (for lists), in one round trip;
        an expired event is left out."""
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hmget(self._event_key(event_id), "event", "state", "reason", "created_at")
            pipe.hgetall(self._sinks_key(event_id))
        replies = pipe.execute()
        found = []
        for i, event_id in enumerate(event_ids):
            (raw, state, reason, created), sinks = replies[2 * i], replies[2 * i + 1]
            if not raw:
                continue
            found.append(
                {
                    "id": event_id,
                    "event": json.loads(raw),
                    "state": _text(state),
                    "reason": _text(reason),
                    "created_at": _text(created),
                    "sinks": {
                        _text(k): SinkRecord.model_validate_json(v) for k, v in sinks.items()
                    },
                }
            )
        return found

    # Dead letters ------------------------------------------------------------------------

    def add_dead_letter(
        self, event_id: str, sink: str | None, reason: str, attempts: int
    ) -> DeadLetter:
        letter = DeadLetter(
            id=f"{event_id}:{sink}" if sink else event_id,
            event_id=event_id,
            sink=sink,
            reason=reason,
            attempts=attempts,
        )
        with self._commands() as pipe:
            pipe.hset(self._dead_key, letter.id, letter.model_dump_json())
        return letter

    def dead_letters(self) -> list[DeadLetter]:
        letters = [
            DeadLetter.model_validate_json(v) for v in self.redis.hgetall(self._dead_key).values()
        ]
        return sorted(letters, key=lambda d: d.dead_at)

    def dead_letter(self, letter_id: str) -> DeadLetter | None:
        raw = self.redis.hget(self._dead_key, letter_id)
        return DeadLetter.model_validate_json(raw) if raw else None

    def remove_dead_letter(self, letter_id: str) -> bool:
        return bool(self.redis.hdel(self._dead_key, letter_id))

    def purge_dead_letters(self) -> int:
        count = int(self.redis.hlen(self._dead_key))
        self.redis.delete(self._dead_key)
        return count

    def ping(self) -> bool:
        return bool(self.redis.ping())


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


# Step fields that say what happened without personal data; details (error texts, reasons)
# may quote a visitor id or an email and are dropped by retention.
_BARE_STEP_FIELDS = ("at", "step", "sink", "attempt", "countdown")


def _bare_step(raw: bytes | str) -> dict[str, Any]:
    step = json.loads(raw)
    return {name: step[name] for name in _BARE_STEP_FIELDS if name in step}


# Hashing personal identifiers ---------------------------------------------------------------

SubjectKind = Literal["visitor", "email"]


def digest(text: str) -> str:
    """The SHA-256 of ``text`` in hex: key names that must not hold the text itself."""
    return hashlib.sha256(text.encode()).hexdigest()


def normalize_subject(kind: SubjectKind, value: str) -> str:
    value = value.strip()
    return value.lower() if kind == "email" else value


def subject_hash(kind: SubjectKind, value: str) -> str:
    return digest(f"{kind}:{normalize_subject(kind, value)}")


def event_subjects(event: Event) -> list[tuple[SubjectKind, str]]:
    """The visitor ids (analytics and livechat) and email an event names."""
    found: list[tuple[SubjectKind, str]] = []
    for visitor in (event.visitor_id, event.livechat_visitor_id):
        if visitor:
            found.append(("visitor", visitor))
    if event.email:
        found.append(("email", event.email))
    return found


def event_matches(event: Event, kind: SubjectKind, value: str) -> bool:
    wanted = normalize_subject(kind, value)
    return any(k == kind and normalize_subject(k, v) == wanted for k, v in event_subjects(event))
