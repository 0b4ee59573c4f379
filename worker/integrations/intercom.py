"""Intercom: the ``conversation.user.created`` webhook in, the contact lookup, and one note
reply on the conversation out.

**The webhook** (Developer Hub → your app → Webhooks) posts a ``notification_event``:
``{"type": "notification_event", "id": "notif_…", "topic": "conversation.user.created",
"app_id", "data": {"item": <Conversation>}}``, signed with ``X-Hub-Signature: sha1=<hex>``,
the HMAC-SHA1 of the body under the app's client secret. The notification id is the event id
(``intercom:notif_…``), so Intercom's retries are duplicates. Intercom checks the URL with a
HEAD request first (answered by the generic route) and sends a ``ping`` topic, ignored here.

The DataFast visitor id is the custom attribute ``INTERCOM_VISITOR_ATTRIBUTE`` of the
conversation (``data.item.custom_attributes``) or of the contact; when the payload has neither,
the worker fetches the contact (``GET /contacts/{id}``, ``IntercomSink.complete_event``).

**The note**: ``POST /conversations/{id}/reply`` with ``{"message_type": "note", "type":
"admin", "admin_id", "body": <html>}``; ``already_delivered`` reads the conversation
(``GET /conversations/{id}``: its 500 newest parts) and looks for the marker in the parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import Settings
from worker.errors import BadResponse
from worker.events import MAX_ID_LENGTH, Event, is_uuid
from worker.http import ServiceClient, bearer_headers
from worker.inbound import (
    Ignored,
    WebhookAdapter,
    WebhookRequest,
    date_field,
    email_field,
    object_field,
    reject,
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

EVENT_ID_PREFIX = "intercom:"
TOPIC = "conversation.user.created"
# The REST API version the payloads below were written against.
API_VERSION = "2.11"
CREDENTIALS_HINT = "check INTERCOM_ACCESS_TOKEN and INTERCOM_ADMIN_ID"


def widget_hint(attribute: str) -> str:
    return (
        f"no {attribute} custom attribute on the conversation or its contact; set it from the "
        f"site with Intercom('update', {{{attribute}: <datafast_visitor_id cookie>}})"
    )


def _attribute(value: Any, name: str) -> str | None:
    return text_field(value.get(name)) if isinstance(value, dict) else None


# The webhook ------------------------------------------------------------------------------


def parse_intercom_webhook(payload: Any, settings: Settings, *, require_uuid: bool = True) -> Event:
    """Map a ``conversation.user.created`` notification onto a ``support_ticket`` event."""
    if not isinstance(payload, dict):
        raise reject("body", "the Intercom notification must be a JSON object")
    topic = text_field(payload.get("topic"), 100)
    if topic != TOPIC:
        raise Ignored(f"topic {topic} is not {TOPIC}")
    notification = text_field(payload.get("id"), MAX_ID_LENGTH - len(EVENT_ID_PREFIX))
    if not notification:
        raise reject("id", "missing; Intercom sends the notification id (notif_…) there")
    item = object_field(object_field(payload.get("data")).get("item"))
    if not item:
        raise reject("data.item", "missing; Intercom sends the conversation there")
    conversation_id = text_field(item.get("id"), 100)
    if not conversation_id:
        raise reject("data.item.id", "missing; Intercom sends the conversation id there")

    attribute = settings.intercom_visitor_attribute
    author = object_field(object_field(item.get("source")).get("author"))
    listed = object_field(item.get("contacts")).get("contacts")
    contacts = [c for c in listed if isinstance(c, dict)] if isinstance(listed, list) else []
    visitor_id = _attribute(item.get("custom_attributes"), attribute) or next(
        (v for c in contacts if (v := _attribute(c.get("custom_attributes"), attribute))), None
    )
    if visitor_id and require_uuid and not is_uuid(visitor_id):
        raise reject(
            f"data.item.custom_attributes.{attribute}", f"{visitor_id[:60]!r} is not a UUID", 400
        )
    contact_id = text_field(contacts[0].get("id"), 100) if contacts else None
    if not contact_id and author.get("type") in ("user", "lead", "contact"):
        contact_id = text_field(author.get("id"), 100)

    fields: dict[str, Any] = {
        "id": f"{EVENT_ID_PREFIX}{notification}",
        "type": "support_ticket",
        "ticket_id": conversation_id,
        "visitor_id": visitor_id,
        "email": email_field(author.get("email")),
        "name": text_field(author.get("name")),
        "inbound": "intercom",
        "occurred_at": date_field(item.get("created_at")) or date_field(payload.get("created_at")),
        "external": {"contact_id": contact_id} if contact_id else {},
    }
    if not visitor_id:
        if contact_id:
            fields["lookup"] = "intercom"
        else:
            fields["missing_reason"] = widget_hint(attribute)
    return Event(**fields)


class IntercomWebhook(WebhookAdapter):
    """``POST /v1/webhooks/intercom``: ``conversation.user.created``, signed with
    ``X-Hub-Signature`` (HMAC-SHA1 of the body under the app's client secret)."""

    system = "intercom"
    label = "Intercom"

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.intercom_client_secret is not None

    def verify(self, request: WebhookRequest) -> None:
        given = request.headers.get("x-hub-signature", "")
        algorithm, _, hexdigest = given.partition("=")
        require_signature(
            algorithm.strip().lower() == "sha1"
            and signed_by_any(
                secret_values(self.settings.intercom_client_secret),
                request.body,
                hexdigest,
                digest="sha1",
                encoding="hex",
            ),
            "bad or missing X-Hub-Signature",
        )

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        return [parse_intercom_webhook(payload, self.settings, require_uuid=self.require_uuid)]


# The note ---------------------------------------------------------------------------------


def conversation_parts(body: Any) -> list[Any]:
    """The parts of a conversation answer (``conversation_parts.conversation_parts``)."""
    box = body.get("conversation_parts") if isinstance(body, dict) else None
    parts = box.get("conversation_parts") if isinstance(box, dict) else None
    if not isinstance(parts, list):
        raise BadResponse("conversation answer without conversation_parts", service="intercom")
    return parts


class IntercomSink(Sink):
    name = "intercom"
    label = "Intercom"
    note_format = "html"  # "notes accept some HTML formatting"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.intercom_access_token is not None and bool(settings.intercom_admin_id)

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "intercom",
            str(settings.intercom_base_url),
            settings=settings,
            limiter=limiter,
            rate=settings.intercom_rate_limit,
            headers={
                **bearer_headers(settings.intercom_access_token),
                "Intercom-Version": API_VERSION,
            },
            auth_hint=CREDENTIALS_HINT,
        )

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.ticket_id:
            return "no conversation id (ticket_id) on the event"
        return self.not_from_own_webhook(event) or super().skip_reason(event, context)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        body = {
            "message_type": "note",
            "type": "admin",
            "admin_id": self.settings.intercom_admin_id,
            "body": note.body,
        }
        response = self.http.request(
            "POST", f"conversations/{event.ticket_id}/reply", json_body=body
        )
        parts = conversation_parts(response.json())
        last = parts[-1] if parts and isinstance(parts[-1], dict) else {}
        part_id = text_field(last.get("id"), 100)
        return DeliveryResult(external_id=part_id, detail=f"conversation {event.ticket_id}")

    def already_delivered(self, event: Event) -> bool | None:
        response = self.http.request("GET", f"conversations/{event.ticket_id}")
        return marker_in_pages([conversation_parts(response.json())], event.marker, ("body",))

    def complete_event(self, event: Event) -> Completion:
        """The visitor attribute, email and name from the conversation's contact."""
        contact_id = event.external.get("contact_id")
        attribute = self.settings.intercom_visitor_attribute
        if not contact_id:
            return Completion(event, widget_hint(attribute))
        found = unless_missing(lambda: self.http.request("GET", f"contacts/{contact_id}").json())
        if found is None:
            return Completion(event, f"Intercom has no contact {contact_id}")
        contact = object_field(found)
        return looked_up(
            event,
            _attribute(contact.get("custom_attributes"), attribute),
            missing=widget_hint(attribute),
            found=f"contact {contact_id} attribute {attribute}",
            email=email_field(contact.get("email")),
            name=text_field(contact.get("name")),
        )

    def check(self) -> str:
        admin = self.http.request("GET", f"admins/{self.settings.intercom_admin_id}").json()
        who = (admin.get("email") or admin.get("name")) if isinstance(admin, dict) else None
        return f"{self.label} answered at {self.http.base_url}; notes as admin {who or '?'}"


INTEGRATION = Integration(
    name="intercom", label="Intercom", sink=IntercomSink, webhook=IntercomWebhook
)
