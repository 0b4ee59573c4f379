"""Freshdesk: an automation rule's webhook in, one private note on the ticket out.

**The webhook.** Freshdesk has no webhook subscription and signs nothing: an automation rule
("Ticket creation" → action "Trigger webhook") POSTs a JSON body the admin writes with
placeholders, and sends the shared secret ``FRESHDESK_WEBHOOK_TOKEN`` in the custom header
``X-Visitor-Enrich-Token`` (compared in constant time). The body the README gives:

    {"ticket_id": "{{ticket.id}}", "email": "{{ticket.contact.email}}",
     "name": "{{ticket.contact.name}}", "visitor_id": "{{ticket.<field placeholder>}}"}

The placeholder syntax of a custom field is not documented by Freshdesk, so the adapter is
tolerant: the visitor id may come as ``visitor_id`` / ``datafast_visitor_id``, under
``custom_fields`` (``FRESHDESK_VISITOR_FIELD``, with or without its ``cf_`` prefix), or not at
all; a placeholder Freshdesk left unrendered (``{{...}}``) counts as absent. When it is absent
the worker reads the ticket (``GET /api/v2/tickets/{id}?include=requester``) for the custom
field and the requester's email (``Event.lookup``). When it is present but empty, the
ticket has no visitor id and gets the short "no journey" note saying how to set it.

The event id is ``freshdesk:{ticket id}``: one note per ticket, and Freshdesk's retries
(+5, +30, +60 minutes) are duplicates.

**The note**: ``POST /api/v2/tickets/{id}/notes`` ``{"body": <HTML>, "private": true}``, Basic
auth with the API key as user name and ``X`` as password. Exactly once: a redelivered task
lists ``GET /api/v2/tickets/{id}/conversations`` (replies and notes, 100 a page) and looks for
the event's marker before posting again.

Limits: ``FRESHDESK_RATE_LIMIT`` (the plan's per-minute limit, shared by all workers); 429 with
``Retry-After`` pauses every worker (``worker/http.py``), and ``X-Ratelimit-Remaining: 0`` is
honoured the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from config import Settings
from worker.errors import BadResponse, Rejected
from worker.events import MAX_ID_LENGTH, Event, is_uuid
from worker.http import ServiceClient, secret_text
from worker.inbound import (
    WebhookAdapter,
    WebhookRequest,
    custom_fields,
    date_field,
    email_field,
    object_field,
    reject,
    require_signature,
    secret_matches,
    secret_values,
    text_field,
)
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.sink import (
    Completion,
    DeliveryResult,
    Note,
    Sink,
    looked_up,
    marker_in_pages,
    unless_missing,
)

TOKEN_HEADER = "x-visitor-enrich-token"
EVENT_ID_PREFIX = "freshdesk:"
# Freshdesk's largest page of ticket conversations.
PAGE_SIZE = 100


# The webhook ------------------------------------------------------------------------------


def rendered(value: Any) -> str | None:
    """A placeholder's value as text; None when empty or when Freshdesk left it unrendered."""
    text = text_field(value, MAX_ID_LENGTH)
    return None if text is None or "{{" in text else text


def _visitor_value(body: dict[str, Any], field: str) -> tuple[bool, str | None]:
    """(whether the body names the visitor field at all, its value when it has one)."""
    # In this order: the first name that has a value wins.
    names = dict.fromkeys((field, field.removeprefix("cf_"), "visitor_id", "datafast_visitor_id"))
    places = [
        body,
        body.get("custom_fields"),
        object_field(body.get("ticket")).get("custom_fields"),
    ]
    named = False
    for place in places:
        if not isinstance(place, dict):
            continue
        for name in names:
            if name in place:
                raw = place[name]
                # An unrendered placeholder says nothing about the ticket: look it up.
                if isinstance(raw, str) and "{{" in raw:
                    continue
                named = True
                value = rendered(raw)
                if value:
                    return True, value
    return named, None


def visitor_missing_reason(field: str) -> str:
    return (
        f"no {field} on the Freshdesk ticket; set it from your site with the help widget: "
        f"FreshworksWidget('prefill', 'ticketForm', {{custom_fields: {{{field}: "
        "<the datafast_visitor_id cookie>}})"
    )


def parse_freshdesk_webhook(
    payload: Any, settings: Settings, *, require_uuid: bool = True
) -> Event:
    """Map the automation rule's JSON body onto a ``support_ticket`` event."""
    if not isinstance(payload, dict):
        raise reject("body", "the Freshdesk webhook body must be a JSON object")
    # The legacy "simple" encoding wraps everything in ``freshdesk_webhook``.
    body = object_field(payload.get("freshdesk_webhook")) or payload
    ticket = object_field(body.get("ticket"))
    ticket_id = rendered(body.get("ticket_id")) or rendered(ticket.get("id"))
    if not ticket_id:
        raise reject(
            "ticket_id", 'missing; the rule\'s body must carry "ticket_id": "{{ticket.id}}"'
        )
    if not ticket_id.isdigit():
        raise reject("ticket_id", f"{ticket_id[:40]!r} is not a Freshdesk ticket number")

    field = settings.freshdesk_visitor_field
    named, visitor_id = _visitor_value(body, field)
    if visitor_id and require_uuid and not is_uuid(visitor_id):
        raise reject("visitor_id", f"{visitor_id[:60]!r} is not a UUID", 400)
    email = email_field(
        rendered(body.get("email"))
        or rendered(body.get("requester_email"))
        or rendered(body.get("ticket_contact_email"))
    )
    name = rendered(body.get("name")) or rendered(body.get("requester_name"))
    return Event(
        id=f"{EVENT_ID_PREFIX}{ticket_id}",
        type="support_ticket",
        ticket_id=ticket_id,
        visitor_id=visitor_id,
        email=email,
        name=name,
        inbound="freshdesk",
        occurred_at=date_field(rendered(body.get("created_at"))),
        # Not in the body at all: the ticket itself is asked. Named but empty: it has none.
        lookup=None if visitor_id or named else "freshdesk",
        missing_reason=visitor_missing_reason(field) if named and not visitor_id else None,
    )


class FreshdeskWebhook(WebhookAdapter):
    """``POST /v1/webhooks/freshdesk``: an automation rule's "Trigger webhook" action,
    authenticated by the ``X-Visitor-Enrich-Token`` header (``FRESHDESK_WEBHOOK_TOKEN``)."""

    system = "freshdesk"
    label = "Freshdesk"

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.freshdesk_webhook_token is not None

    def verify(self, request: WebhookRequest) -> None:
        given = request.headers.get(TOKEN_HEADER, "")
        require_signature(
            secret_matches(given, secret_values(self.settings.freshdesk_webhook_token)),
            "bad or missing X-Visitor-Enrich-Token",
        )

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        return [parse_freshdesk_webhook(payload, self.settings, require_uuid=self.require_uuid)]


# The sink ---------------------------------------------------------------------------------


def freshdesk_configured(settings: Settings) -> bool:
    return settings.freshdesk_base_url is not None and settings.freshdesk_api_key is not None


def _object(value: Any, service: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"answered {what} without a JSON object", service=service)
    return value


class FreshdeskSink(Sink):
    name = "freshdesk"
    label = "Freshdesk"
    note_format = "html"  # a note's body is HTML

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return freshdesk_configured(settings)

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "freshdesk",
            str(settings.freshdesk_base_url or ""),
            settings=settings,
            limiter=limiter,
            rate=settings.freshdesk_rate_limit,
            # The API key is the user name; the password is ignored ("X" by convention).
            auth=(secret_text(settings.freshdesk_api_key), "X"),
            headers={"Accept": "application/json"},
            auth_hint="check FRESHDESK_API_KEY",
        )

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.ticket_id:
            return "no ticket_id on the event"
        return self.other_system(event) or super().skip_reason(event, context)

    def _ticket_path(self, event: Event) -> str:
        if not (event.ticket_id or "").isdigit():
            raise Rejected(f"ticket_id {event.ticket_id!r} is not a Freshdesk ticket number")
        return f"api/v2/tickets/{event.ticket_id}"

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        response = self.http.request(
            "POST",
            f"{self._ticket_path(event)}/notes",
            json_body={"body": note.body, "private": True},
        )
        created = _object(response.json(), self.name, "the note")
        return DeliveryResult(
            external_id=str(created.get("id") or ""), detail=f"ticket {event.ticket_id}"
        )

    def _conversation_pages(self, event: Event) -> Iterator[list[Any]]:
        path = f"{self._ticket_path(event)}/conversations"
        page = 1
        while True:
            params = {"page": str(page), "per_page": str(PAGE_SIZE)}
            items = self.http.request("GET", path, params=params).json()
            if not isinstance(items, list):
                raise BadResponse("answered conversations without a list", service=self.name)
            yield items
            if len(items) < PAGE_SIZE:
                return
            page += 1

    def already_delivered(self, event: Event) -> bool | None:
        return marker_in_pages(self._conversation_pages(event), event.marker, ("body", "body_text"))

    def complete_event(self, event: Event) -> Completion:
        """The visitor id from the ticket's custom field, and the requester's email."""
        field = self.settings.freshdesk_visitor_field
        params = {"include": "requester"}
        response = unless_missing(
            lambda: self.http.request("GET", self._ticket_path(event), params=params)
        )
        if response is None:
            return Completion(event, f"Freshdesk has no ticket {event.ticket_id}")
        ticket = _object(response.json(), self.name, "the ticket")
        requester = object_field(ticket.get("requester"))
        return looked_up(
            event,
            custom_fields(ticket.get("custom_fields")).get(field),
            missing=visitor_missing_reason(field),
            found=f"the ticket's {field}",
            email=email_field(requester.get("email")),
            name=text_field(requester.get("name")),
        )

    def check(self) -> str:
        me = _object(self.http.request("GET", "api/v2/agents/me").json(), self.name, "agents/me")
        contact = object_field(me.get("contact"))
        who = contact.get("email") or me.get("id") or "the API key's agent"
        return f"{self.label} answered at {self.http.base_url} as {who}"


INTEGRATION = Integration(
    name="freshdesk", label="Freshdesk", sink=FreshdeskSink, webhook=FreshdeskWebhook
)
