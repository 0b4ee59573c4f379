"""Erasing one visitor's data on request, and removing personal data after its retention.

**Erasure** (``erase``; ``visitor-enrich erase`` and ``DELETE /v1/visitors/{id}``) finds the
events of a visitor id or an email through the hashed subject index the worker writes when it
takes an event up (worker/store.py ``index_subjects``), plus the events not taken up yet (the
inflight set, read in full: it is small), plus the dead letters that hold an event retention
removed from its record, plus, on request, a SCAN of every event under the
prefix (events no index names, e.g. accepted by an older version). Each event's records go
(event, journey, steps, sink records, dead letters, locks, index entries) and a tombstone, the
SHA-256 of the event id, keeps the sender's retries duplicates. The realtime alert dedupe key
of each visitor id goes too. What is returned lists where notes were posted (sink, external
id): they live in the outside systems and are the operator's to remove there. An audit line
(counts only) records the erasure, in the log and in ``{prefix}audit``.

An event a task is working on at the very moment of the erasure (``enriching``, or a delivery
lock held) may have records written back after it: the erasure then watches those events for
``busy_wait`` seconds (15; a fetch or delivery is bounded by the HTTP timeouts), erases
whatever comes back and adds any note that was posted meanwhile to the list (``settle``).

**Retention** (``expire_personal_data``, every few minutes from beat): events accepted more
than ``JOURNEY_RETENTION_SECONDS`` ago lose the inbound event, the journey, the reasons and step
details (``EventStore.scrub_event``); their state, type, step names and sink outcomes stay until
``EVENT_RETENTION_SECONDS``. Dead letters older than ``DEAD_LETTER_RETENTION_SECONDS`` go.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from worker.events import Event
from worker.profiles import visitor_profile_keys
from worker.store import EventStore, SubjectKind, event_matches, event_subjects

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure removed: a count of events, and the notes left in outside systems."""

    events: int
    notes: list[tuple[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "erasedEvents": self.events,
            "notes": [{"system": system, "externalId": ext} for system, ext in self.notes],
        }


def find_events(
    store: EventStore, kind: SubjectKind, value: str, *, scan: bool = False
) -> dict[str, Event | None]:
    """The ids of the events naming this visitor id or email, with their inbound event where
    retention left it (then None)."""
    indexed = store.indexed_events(kind, value)
    found: dict[str, Event | None] = dict.fromkeys(indexed)
    found |= store.stored_events(indexed)
    # Not taken up by a worker yet, so not indexed yet.
    candidates = [i for i in store.inflight_events() if i not in found]
    for event_id, event in store.stored_events(candidates).items():
        if event_matches(event, kind, value):
            found[event_id] = event
    # Retention moved the inbound event of events with dead letters into the letters (for a
    # replay), where no index names it; the letters are few (they expire too).
    for letter in store.dead_letters():
        if letter.event is not None and event_matches(letter.event, kind, value):
            found[letter.event_id] = found.get(letter.event_id) or letter.event
    if scan:
        for batch in store.scan_events():
            for event_id, event in store.stored_events(batch).items():
                if event_id not in found and event_matches(event, kind, value):
                    found[event_id] = event
    return found


def erase(
    store: EventStore,
    kind: SubjectKind,
    value: str,
    *,
    scan: bool = False,
    via: str = "cli",
    busy_wait: float = 15.0,
) -> ErasureReport:
    """Remove every record of the visitor id or email ``value`` (see the module docstring)."""
    from worker.realtime import visitor_hot_keys

    events = find_events(store, kind, value, scan=scan)
    notes: list[tuple[str, str]] = []
    if events:
        erased = store.erase_events(events)
        notes = erased.notes
        if erased.busy:
            notes += settle(store, {i: events[i] for i in erased.busy}, busy_wait)
    # The erased events left the index of each visitor id and email they named
    # (``erase_events``); the index of the one erased goes whole.
    keys = {store.subject_key(kind, value)}
    visitors = {value} if kind == "visitor" else set()
    for event in events.values():
        if event is not None:
            visitors |= {v for k, v in event_subjects(event) if k == "visitor"}
    keys |= {key for v in visitors for key in visitor_hot_keys(store.prefix, v)}
    # Journeys cached for the visitor's next events (worker/profiles.py).
    keys |= {k for v in visitors for k in visitor_profile_keys(store.redis, store.prefix, v)}
    store.redis.delete(*keys)
    report = ErasureReport(len(events), notes)
    entry = {"action": "erase", "by": kind, "via": via, "events": report.events}
    store.audit({**entry, "notes": len(notes)})
    log.info("erasure done", extra={"erasure": entry, "notes": len(notes)})
    return report


def settle(
    store: EventStore, events: dict[str, Event | None], wait: float
) -> list[tuple[str, str]]:
    """Erase again what tasks busy with these events write after the erasure, for up to
    ``wait`` seconds (a task fetching a journey writes it and plans the sinks when the fetch
    returns; a delivery records its outcome, maybe a note just posted); return those notes.

    A task that starts after the erasure finds no event and stops; a delivery finds no sink
    record and posts nothing. Only a task already past those reads can write again."""
    notes: list[tuple[str, str]] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.1)
        back = store.recreated(list(events))
        if back and not store.locks_held(store.sinks_of(back)):
            again = store.erase_events({i: events[i] for i in back}, tombstone=False)
            notes += again.notes
    return notes


@dataclass(frozen=True)
class RetentionReport:
    scrubbed: int
    dead_letters_dropped: int


def expire_personal_data(
    store: EventStore, journey_seconds: float, dead_letter_seconds: float
) -> RetentionReport:
    """Scrub the events past the journey retention and drop the dead letters past theirs."""
    scrubbed = 0
    while batch := store.journeys_older_than(journey_seconds):
        for event_id in batch:
            scrubbed += store.scrub_event(event_id)
    dropped = store.drop_dead_letters_older_than(dead_letter_seconds)
    if scrubbed or dropped:
        log.info(
            "retention",
            extra={"scrubbed_events": scrubbed, "dead_letters_dropped": dropped},
        )
    return RetentionReport(scrubbed, dropped)
