"""Pure helpers for the console's pages: filtering the event list, labels, ages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.store import SinkRecord


@dataclass(frozen=True)
class EventFilter:
    state: str = ""
    type: str = ""
    sink: str = ""
    inbound: str = ""
    who: str = ""  # an email or a visitor id, matched in full or as a part

    @property
    def active(self) -> bool:
        return any((self.state, self.type, self.sink, self.inbound, self.who))


@dataclass(frozen=True)
class EventRow:
    id: str
    type: str
    state: str
    reason: str | None
    created_at: str | None
    email: str | None
    visitor_id: str | None
    inbound: str
    sinks: dict[str, SinkRecord]


def inbound_system(event: dict[str, Any]) -> str:
    """Which inbound path an event came through: its ``inbound`` field when the intake set
    one, else Rocket.Chat's webhook for a livechat visitor, else the generic API."""
    named = event.get("inbound")
    if isinstance(named, str) and named:
        return named
    if event.get("livechat_visitor_id") or event.get("livechat_custom_fields"):
        return "rocketchat"
    return "api"


def to_row(summary: dict[str, Any]) -> EventRow:
    event = summary["event"]
    return EventRow(
        id=summary["id"],
        type=str(event.get("type") or ""),
        state=str(summary.get("state") or ""),
        reason=summary.get("reason"),
        created_at=summary.get("created_at"),
        email=event.get("email"),
        visitor_id=event.get("visitor_id"),
        inbound=inbound_system(event),
        sinks=summary.get("sinks") or {},
    )


def matches(row: EventRow, flt: EventFilter) -> bool:
    if flt.state and row.state != flt.state:
        return False
    if flt.type and row.type != flt.type:
        return False
    if flt.sink and flt.sink not in row.sinks:
        return False
    if flt.inbound and row.inbound != flt.inbound:
        return False
    if flt.who:
        needle = flt.who.strip().lower()
        haystack = [(row.email or "").lower(), (row.visitor_id or "").lower()]
        if not any(needle in value for value in haystack):
            return False
    return True


def filter_rows(summaries: list[dict[str, Any]], flt: EventFilter, limit: int) -> list[EventRow]:
    rows = (to_row(s) for s in summaries)
    return [row for row in rows if matches(row, flt)][:limit]


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def since(iso: str | None, now: datetime | None = None) -> float | None:
    """Seconds from an ISO timestamp (as the store writes them) to ``now``."""
    if not iso:
        return None
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ((now or datetime.now(UTC)) - when).total_seconds()


REPLAYABLE_SINK_STATES = frozenset({"failed", "dead"})
EVENT_STATES = ("queued", "enriching", "delivered", "partially_delivered", "failed", "dead")
EVENT_TYPES = ("signup", "support_ticket", "livechat")
