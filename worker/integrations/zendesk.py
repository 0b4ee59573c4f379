"""Zendesk: its webhooks in, the ticket lookup, and one private comment on the ticket out.

**The webhooks** (``POST /v1/webhooks/zendesk``), signed by Zendesk with
``X-Zendesk-Webhook-Signature`` = base64(HMAC-SHA256(secret, timestamp + body)) and
``X-Zendesk-Webhook-Signature-Timestamp``:

- a trigger's "Notify webhook" action ("Ticket is Created"), whose JSON the admin writes with
  placeholders (README): ``ticket_id`` (``{{ticket.id}}``), ``email``
  (``{{ticket.requester.email}}``), ``name`` and ``datafast_visitor_id``
  (``{{ticket.ticket_field_<id>}}``). Nested ``{"ticket": {"id", "requester": {...}}}`` works too;
- the event webhook ``zen:event-type:ticket.created`` (``detail.id`` is the ticket,
  ``detail.requester_id`` the requester): no email and no custom field values in it, so the
  worker looks them up (``ZendeskSink.complete_event``: the ticket with its requester
  sideloaded, the custom field ``ZENDESK_VISITOR_FIELD``).

A trigger has no event id: every webhook of a ticket is the event ``zendesk:ticket:<id>``, so a
ticket gets one note whichever of the two webhooks arrives first, and retries are duplicates.

**The comment**: ``PUT /api/v2/tickets/{id}.json`` with a private ``html_body``;
``already_delivered`` lists the ticket's comments (newest first) and looks for the marker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from config import Settings
from worker.errors import BadResponse, Rejected
from worker.events import Event, is_uuid
from worker.http import ServiceClient, secret_text
from worker.inbound import (
    Ignored,
    WebhookAdapter,
    WebhookRequest,
    date_field,
    email_field,
    object_field,
    reject,
    require_fresh_timestamp,
    require_signature,
    secret_values,
    signed_by_any,
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

EVENT_ID_PREFIX = "zendesk:ticket:"
TICKET_CREATED = "zen:event-type:ticket.created"
_TICKET_SUBJECT = re.compile(r"zen:ticket:(\d+)")


# The webhooks ------------------------------------------------------------------------------


def widget_hint(settings: Settings) -> str:
    """How to fill the visitor field from the site, for the "no journey" note."""
    field = settings.zendesk_visitor_field
    if not field:
        return (
            "ZENDESK_VISITOR_FIELD is not set on the server; create a ticket field for the "
            "DataFast visitor id and set its id there"
        )
    return (
        f"no value in ticket field {field}; set it from the site with "
        f"zE('messenger:set', 'conversationFields', [{{id: '{field}', "
        "value: <datafast_visitor_id cookie>}])"
    )


def _placeholder_text(value: Any) -> str | None:
    """A trigger placeholder's value; a placeholder left as it was written counts as empty."""
    text = text_field(value)
    return None if text is None or "{{" in text else text


def _ticket_id(value: Any, where: str) -> str:
    ticket_id = _placeholder_text(value)
    if not ticket_id:
        raise reject(where, "missing; put {{ticket.id}} there in the trigger's JSON body")
    if not ticket_id.isdigit() or len(ticket_id) > 20:
        raise reject(where, f"{ticket_id[:40]!r} is not a Zendesk ticket number")
    return ticket_id


def parse_zendesk_event_webhook(payload: dict[str, Any]) -> Event:
    """The ``ticket.created`` event webhook: the ticket id and requester, looked up later."""
    kind = text_field(payload.get("type"), 100)
    if kind != TICKET_CREATED:
        raise Ignored(f"{kind} is not {TICKET_CREATED}")
    detail = object_field(payload.get("detail"))
    raw = detail.get("id")
    if raw is None:
        match = _TICKET_SUBJECT.fullmatch(text_field(payload.get("subject"), 100) or "")
        raw = match.group(1) if match else None
    ticket_id = _ticket_id(raw, "detail.id")
    external = {"event_id": text_field(payload.get("id"), 100) or ""}
    requester = text_field(detail.get("requester_id"), 40)
    if requester:
        external["requester_id"] = requester
    return Event(
        id=f"{EVENT_ID_PREFIX}{ticket_id}",
        type="support_ticket",
        ticket_id=ticket_id,
        inbound="zendesk",
        lookup="zendesk",
        external=external,
        occurred_at=date_field(detail.get("created_at")) or date_field(payload.get("time")),
    )


def parse_zendesk_trigger_webhook(
    payload: dict[str, Any], settings: Settings, *, require_uuid: bool = True
) -> Event:
    """A trigger's JSON body, as the README tells the admin to write it."""
    ticket = object_field(payload.get("ticket"))
    requester = object_field(ticket.get("requester"))
    where = "ticket_id" if "ticket_id" in payload else "ticket.id" if ticket else "ticket_id"
    ticket_id = _ticket_id(payload.get("ticket_id") or ticket.get("id"), where)
    visitor_id = _placeholder_text(payload.get("datafast_visitor_id") or payload.get("visitor_id"))
    if visitor_id and require_uuid and not is_uuid(visitor_id):
        raise reject("datafast_visitor_id", f"{visitor_id[:60]!r} is not a UUID", 400)
    email = _placeholder_text(payload.get("email") or requester.get("email"))
    fields: dict[str, Any] = {
        "id": f"{EVENT_ID_PREFIX}{ticket_id}",
        "type": "support_ticket",
        "ticket_id": ticket_id,
        "visitor_id": visitor_id,
        "email": email_field(email) if email else None,
        "name": _placeholder_text(payload.get("name") or requester.get("name")),
        "inbound": "zendesk",
    }
    if not visitor_id:
        if settings.zendesk_visitor_field:
            # The field may be filled after the trigger's JSON was written: ask the ticket.
            fields["lookup"] = "zendesk"
        else:
            fields["missing_reason"] = widget_hint(settings)
    return Event(**fields)


class ZendeskWebhook(WebhookAdapter):
    """``POST /v1/webhooks/zendesk``: a trigger's "Notify webhook" JSON or the
    ``ticket.created`` event webhook, signed with ``X-Zendesk-Webhook-Signature``."""

    system = "zendesk"
    label = "Zendesk"

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.zendesk_webhook_secret is not None

    def verify(self, request: WebhookRequest) -> None:
        timestamp = request.headers.get("x-zendesk-webhook-signature-timestamp", "")
        tolerance = self.settings.zendesk_timestamp_tolerance
        if tolerance:
            # Undocumented by Zendesk (ZENDESK_TIMESTAMP_TOLERANCE); every ticket is noted once
            # whatever happens, so the window only keeps out requests captured long ago.
            require_fresh_timestamp(timestamp, tolerance)
        require_signature(
            signed_by_any(
                secret_values(self.settings.zendesk_webhook_secret),
                timestamp.encode() + request.body,
                request.headers.get("x-zendesk-webhook-signature", ""),
                digest="sha256",
                encoding="base64",
            ),
            "bad or missing X-Zendesk-Webhook-Signature",
        )

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        if not isinstance(payload, dict):
            raise reject("body", "the Zendesk webhook payload must be a JSON object")
        if str(payload.get("type") or "").startswith("zen:event-type:"):
            return [parse_zendesk_event_webhook(payload)]
        return [
            parse_zendesk_trigger_webhook(payload, self.settings, require_uuid=self.require_uuid)
        ]


# The ticket lookup --------------------------------------------------------------------------


def ticket_field_value(ticket: dict[str, Any], field_id: str) -> str | None:
    """The value of custom ticket field ``field_id`` (``custom_fields: [{id, value}]``)."""
    for item in ticket.get("custom_fields") or ticket.get("fields") or []:
        if isinstance(item, dict) and str(item.get("id")) == field_id:
            return text_field(item.get("value"))
    return None


def requester_of(body: dict[str, Any], requester_id: str | None) -> dict[str, Any]:
    """The requester from the ``users`` sideload of ``tickets/{id}.json?include=users``."""
    for user in body.get("users") or []:
        if isinstance(user, dict) and str(user.get("id")) == requester_id:
            return user
    return {}


# The comment ----------------------------------------------------------------------------


class ZendeskSink(Sink):
    name = "zendesk"
    label = "Zendesk"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.zendesk_api_token is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "zendesk",
            str(settings.zendesk_base_url),
            settings=settings,
            limiter=limiter,
            rate=settings.zendesk_rate_limit,
            # Zendesk API tokens authenticate as "{email}/token" with the token as password.
            auth=(f"{settings.zendesk_email}/token", secret_text(settings.zendesk_api_token)),
            headers={"Accept": "application/json"},
            auth_hint="check ZENDESK_EMAIL and ZENDESK_API_TOKEN",
        )

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.ticket_id:
            return "no ticket_id on the event"
        return self.other_system(event) or super().skip_reason(event, context)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if not (event.ticket_id or "").isdigit():
            raise Rejected(f"ticket_id {event.ticket_id!r} is not a Zendesk ticket number")
        comment = {"html_body": note.body, "public": False}
        response = self.http.request(
            "PUT",
            f"api/v2/tickets/{event.ticket_id}.json",
            json_body={"ticket": {"comment": comment}},
        )
        answer: Any = response.json() if response.content else None
        audit = answer.get("audit") if isinstance(answer, dict) else None
        comment_id = None
        if isinstance(audit, dict):
            for item in audit.get("events") or []:
                if isinstance(item, dict) and item.get("type") == "Comment":
                    comment_id = str(item.get("id"))
        return DeliveryResult(external_id=comment_id, detail=f"ticket {event.ticket_id}")

    def already_delivered(self, event: Event) -> bool | None:
        response = self.http.request(
            "GET",
            f"api/v2/tickets/{event.ticket_id}/comments.json",
            params={"sort_order": "desc"},
        )
        body = response.json()
        comments = body.get("comments") if isinstance(body, dict) else None
        if not isinstance(comments, list):
            raise BadResponse("comments answer without a comments list", service=self.name)
        return marker_in_pages([comments], event.marker, ("html_body", "body"))

    def complete_event(self, event: Event) -> Completion:
        """The requester's email and name and the visitor field, from the ticket."""
        if not (event.ticket_id or "").isdigit():
            return Completion(event, "the event names no Zendesk ticket to look up")
        path = f"api/v2/tickets/{event.ticket_id}.json?include=users"
        body = object_field(unless_missing(lambda: self.http.request("GET", path).json()))
        ticket = object_field(body.get("ticket"))
        if not ticket:
            return Completion(event, f"Zendesk has no ticket {event.ticket_id}")
        requester_id = text_field(ticket.get("requester_id"), 40)
        requester = requester_of(body, requester_id)
        if requester_id and not requester:
            user_path = f"api/v2/users/{requester_id}.json"
            user = unless_missing(lambda: self.http.request("GET", user_path).json())
            requester = object_field(object_field(user).get("user"))
        field = self.settings.zendesk_visitor_field
        return looked_up(
            event,
            ticket_field_value(ticket, field) if field else None,
            missing=widget_hint(self.settings),
            found=f"ticket {event.ticket_id} field {field}",
            email=email_field(requester.get("email")),
            name=text_field(requester.get("name")),
        )

    def check(self) -> str:
        self.http.request("GET", "api/v2/users/me.json")
        return f"{self.label} answered at {self.http.base_url}"


INTEGRATION = Integration(name="zendesk", label="Zendesk", sink=ZendeskSink, webhook=ZendeskWebhook)
