"""What every destination offers: deliver one event's journey, and (where it can) say whether
that was already done.

Shared behaviour of the kinds of sink lives here once: ``Sink`` (notes on a ticket, a contact
or a chat), ``AlertSink`` (a message to a team channel when a lead is hot, and the realtime
hot-visitor alerts). Each integration module subclasses one of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from config import Settings
from worker.errors import AuthFailed, Rejected
from worker.events import API_INBOUND, Event
from worker.http import ServiceClient
from worker.journey import HotVisitor, JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.templates import TemplateFailed, note_templates

NoteFormat = Literal["html", "markdown", "text", "mrkdwn"]


@dataclass(frozen=True)
class DeliveryResult:
    """What a sink created, for the event status (a note id, a comment's ticket...)."""

    external_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Note:
    """A note body as rendered for one sink: the user's template it came from (None: the
    sink's built-in note) and, when that template failed and the built-in note was used, why."""

    body: str
    template: str | None = None
    warning: str | None = None


@dataclass(frozen=True)
class Completion:
    """An event completed by a lookup in the system that sent it (``Sink.complete_event``):
    the event with what was found, and why no journey can be fetched when something is
    still missing (None when the journey can be fetched)."""

    event: Event
    missing: str | None = None
    # What was looked up, for the step log ("visitor.info", "contact 123").
    detail: str | None = None


T = TypeVar("T")


def unless_missing(call: Callable[[], T]) -> T | None:
    """``call()``, or None when the system answers 404: the ticket or conversation a lookup
    asks about does not exist (any other error is raised)."""
    try:
        return call()
    except Rejected as exc:
        if isinstance(exc, AuthFailed) or exc.status_code != 404:
            raise
        return None


def looked_up(
    event: Event,
    visitor_id: str | None,
    *,
    missing: str,
    found: str,
    email: str | None = None,
    name: str | None = None,
) -> Completion:
    """A lookup's ``Completion``: the event with the visitor id and whatever email and name
    the system knows (the webhook's own win), and ``missing`` as the reason when it has no
    visitor id, else ``found`` as what was read."""
    completed = event.model_copy(
        update={"visitor_id": visitor_id, "email": event.email or email, "name": event.name or name}
    )
    return Completion(completed, missing) if not visitor_id else Completion(completed, None, found)


# How many pages of a ticket's notes ``marker_in_pages`` reads before it gives up looking.
MAX_NOTE_PAGES = 20


def _path_value(item: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(item, dict):
            return None
        item = item.get(part)
    return item


def marker_in_pages(
    pages: Iterable[Sequence[Any]],
    marker: str,
    fields: Sequence[str],
    *,
    max_pages: int = MAX_NOTE_PAGES,
) -> bool:
    """Whether any note in ``pages`` (JSON objects, one list per page of a listing) holds
    ``marker`` in one of ``fields`` (dotted paths such as ``entry.text``).

    The exactly-once check of the note sinks: each lists a ticket's or conversation's notes
    its own way (a generator of pages, fetched lazily) and this reads them, stopping at the
    first hit or after ``max_pages`` pages.
    """
    for index, page in enumerate(pages):
        if index >= max_pages:
            return False
        for note in page:
            if any(marker in str(_path_value(note, f) or "") for f in fields):
                return True
    return False


class Sink(ABC):
    """A destination for journey context. One instance per worker process.

    A sink is on when its credentials are set (``enabled``). ``skip_reason`` decides per event
    what the sink cannot do without (a Zendesk note needs a ticket id, a CRM note an email).
    ``default_skip_reason`` is the routing that applies when no routes file is configured
    (alerts only for hot signups). ``deliver`` posts once. ``already_delivered`` looks in the
    destination for ``event.marker``; it returns None for a sink that cannot look, which then
    carries a documented risk of a second post after a crash.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    # The markup of the note this sink posts (its template's format).
    note_format: ClassVar[NoteFormat] = "html"
    # Whether a "no journey found" note is still worth posting when the source has nothing.
    wants_empty_context: ClassVar[bool] = True

    def __init__(self, settings: Settings, limiter: SharedRateLimiter) -> None:
        self.settings = settings
        self.http = self.build_client(settings, limiter)

    @classmethod
    @abstractmethod
    def enabled(cls, settings: Settings) -> bool: ...

    @abstractmethod
    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient: ...

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        """Why this event cannot go to this sink, or None when it can."""
        if not context.found and not self.wants_empty_context:
            return "no journey to send"
        return None

    def other_system(self, event: Event) -> str | None:
        """For a sink that annotates a ticket, conversation or room of its own system: why
        this event's ticket is not one of ours (it came from another system's webhook)."""
        if event.inbound in (API_INBOUND, self.name):
            return None
        return f"the event's ticket is in {event.inbound}, not {self.label}"

    def not_from_own_webhook(self, event: Event) -> str | None:
        """Stricter than ``other_system``, for a system whose conversation ids mean nothing
        elsewhere (Intercom, Help Scout): only its own webhook's events are annotated, so a
        ``POST /v1/events`` ticket id meant for another helpdesk is never posted to here."""
        if event.inbound == self.name:
            return None
        return f"the event's ticket did not come from the {self.label} webhook ({event.inbound})"

    def default_skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        """Why the default routing (no ``ROUTES_FILE``) leaves this sink out, or None."""
        return None

    @abstractmethod
    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        """Post ``note`` (from ``render_note``) for the event; raise ``worker.errors`` types."""

    def render_note(
        self, event: Event, context: JourneyContext, template: str | None = None
    ) -> Note:
        """The note this sink posts for the event, in its ``note_format``.

        ``template`` is a routing rule's choice; else the sink's own template
        (``{sink}.{ext}.j2`` or ``note.{ext}.j2``, from ``TEMPLATES_DIR`` first, see
        ``worker/templates.py``). When that template fails, the built-in note is used and the
        reason is returned with it, for the event status.
        """
        templates = note_templates(self.settings.templates_dir)
        chosen = template or templates.template_for(self.name, self.note_format)
        builtin = not template and chosen is not None and not templates.overridden(chosen)
        if chosen is None or builtin:
            # The sink's own built-in note (a built-in template for most; code for a
            # size-fitted or structured message).
            return Note(self.default_note(event, context))
        try:
            return Note(templates.render(chosen, event, context), chosen)
        except TemplateFailed as exc:
            fallback = f"{exc}; the built-in note was posted instead"
            return Note(self.default_note(event, context), None, fallback)

    def default_note(self, event: Event, context: JourneyContext) -> str:
        """The built-in note in ``note_format`` (a built-in template); a sink with a size limit
        or its own markup overrides it."""
        templates = note_templates(None)
        name = templates.template_for(self.name, self.note_format) or "note.txt.j2"
        return templates.render(name, event, context)

    def already_delivered(self, event: Event) -> bool | None:
        """True when the destination already holds ``event.marker``; None when it cannot tell."""
        return None

    def complete_event(self, event: Event) -> Completion:
        """Look up in this system what its webhook did not carry (``event.lookup`` names the
        system): the visitor id, the email. Only systems whose webhooks need it override."""
        return Completion(event, f"{self.label} has no lookup for events it sent")

    def check(self) -> str:
        """A cheap reachability check for ``visitor-enrich check``; raises on failure."""
        return f"{self.label} configured at {self.http.base_url}"


class AlertSink(Sink):
    """A team channel that is pinged about hot leads: the lead alert for a signup whose score
    reaches ``LEAD_ALERT_MIN_SCORE`` (the default rule), the routing rules that name it, and
    the realtime hot-visitor alerts (``worker/realtime.py``)."""

    wants_empty_context = False

    def default_skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if event.type not in ("signup", "payment"):
            return f"alerts are for signups and payments, not {event.type}"
        if event.type == "payment":
            return None
        score = context.score
        threshold = self.settings.lead_alert_min_score
        if score is None:
            return "no lead score"
        if score < threshold:
            return f"score {score:g} below the alert threshold {threshold:g}"
        return None

    @abstractmethod
    def post_realtime_alert(self, hot: HotVisitor) -> None:
        """Post one realtime hot-visitor alert (no exactly-once record: the caller claims)."""
