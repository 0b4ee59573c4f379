"""Help Scout: the ``convo.created`` and ``beacon.chat.created`` webhooks in, the customer
lookup, and one note on the conversation or the live chat out.

**The webhooks** (Manage → Apps → Webhooks, or ``POST /v2/webhooks``) post the v2 Conversation
object (``convo.created``) or the Chat object (``beacon.chat.created``) with
``X-HelpScout-Event`` naming the event and ``X-HelpScout-Signature`` = base64(HMAC-SHA1(secret,
body)). Help Scout sends no event id: a conversation is the event ``helpscout:conversation:<id>``
and a chat ``helpscout:chat:<id>``, so retries (up to ten) are duplicates.

The DataFast visitor id is the conversation's (or chat's) custom field ``HELPSCOUT_VISITOR_FIELD``
(by name or id), else the customer property with that slug, which the worker reads from the
customer (``GET /v2/customers/{id}``, ``HelpScoutSink.complete_event``).

**The note**: a conversation gets ``POST /v2/conversations/{id}/notes`` ``{"text": <html>}``;
``already_delivered`` lists its threads (``GET /v2/conversations/{id}/threads``, newest first).
A live chat is not a conversation until it ends, so a chat gets a Chat API note,
``PUT /v2/chats/{id}/notes/{noteId}`` ``{"body": <text>}``, whose id we derive from the event:
Help Scout refuses a second note with the same id (422 "id value is already in use").

**Auth**: OAuth client credentials (``HELPSCOUT_APP_ID`` / ``HELPSCOUT_APP_SECRET``) at
``POST /v2/oauth2/token``; the token is kept by each worker process and renewed before it
expires and on a 401 (``worker/oauth.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
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
    require_signature,
    secret_values,
    signed_by_any,
    text_field,
)
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.oauth import ClientCredentialsAuth
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
from worker.templates import note_templates

CONVERSATION = "convo.created"
CHAT = "beacon.chat.created"
KIND_CHAT = "chat"
KIND_CONVERSATION = "conversation"
TOKEN_PATH = "v2/oauth2/token"
CREDENTIALS_HINT = "check HELPSCOUT_APP_ID and HELPSCOUT_APP_SECRET"
# Note ids for chats: the same event always gets the same UUID.
_NOTE_NAMESPACE = uuid.UUID("6f2b8a52-3c1e-4f0e-9a57-1d3c2b7e9f10")


def widget_hint(field: str) -> str:
    return (
        f"no {field} custom field on the conversation or property on the customer; set it "
        f"from the site with Beacon('identify', {{email, '{field}': <datafast_visitor_id "
        f"cookie>}}) or Beacon('prefill', {{fields: [{{id: <field id>, value: ...}}]}})"
    )


def custom_field_value(fields: Any, name: str) -> str | None:
    """A Help Scout custom field (``[{id, name, value, text}]``) by its name or its id."""
    for item in fields if isinstance(fields, list) else []:
        if isinstance(item, dict) and name in (str(item.get("name")), str(item.get("id"))):
            return text_field(item.get("value")) or text_field(item.get("text"))
    return None


def customer_property(customer: dict[str, Any], slug: str) -> str | None:
    """A customer property by slug: ``properties`` as ``[{slug, value}]`` or ``{slug: value}``
    (the shape of the v2 customer's properties is not confirmed by Help Scout's pages)."""
    embedded = customer.get("_embedded")
    for box in (
        customer.get("properties"),
        embedded.get("properties") if isinstance(embedded, dict) else None,
    ):
        if isinstance(box, dict):
            value = text_field(box.get(slug))
            if value:
                return value
        for item in box if isinstance(box, list) else []:
            if isinstance(item, dict) and slug in (item.get("slug"), item.get("name")):
                value = text_field(item.get("value"))
                if value:
                    return value
    return None


def _customer_email(customer: dict[str, Any]) -> str | None:
    email = email_field(customer.get("email"))
    if email:
        return email
    embedded = customer.get("_embedded")
    emails = embedded.get("emails") if isinstance(embedded, dict) else None
    for item in emails if isinstance(emails, list) else []:
        if isinstance(item, dict) and (found := email_field(item.get("value"))):
            return found
    return None


def _name(person: dict[str, Any]) -> str | None:
    parts = [text_field(person.get("first"), 100), text_field(person.get("last"), 100)]
    return " ".join(p for p in parts if p) or None


# The webhook ------------------------------------------------------------------------------


def parse_helpscout_webhook(
    kind: str | None, payload: Any, settings: Settings, *, require_uuid: bool = True
) -> Event:
    """Map a ``convo.created`` Conversation or ``beacon.chat.created`` Chat onto an event."""
    if kind not in (CONVERSATION, CHAT):
        raise Ignored(f"X-HelpScout-Event {kind} is not {CONVERSATION} or {CHAT}")
    if not isinstance(payload, dict):
        raise reject("body", "the Help Scout webhook payload must be a JSON object")
    thing = KIND_CHAT if kind == CHAT else KIND_CONVERSATION
    object_id = text_field(payload.get("id"), 100)
    if not object_id:
        raise reject(
            "id",
            f"missing; Help Scout sends the {thing} there (a webhook with 'notification' on "
            "sends only a URI: turn it off)",
        )
    # A Chat names its customer ``customer``; a v2 Conversation ``primaryCustomer`` (older
    # payloads ``customer``).
    customer = object_field(payload.get("primaryCustomer")) or object_field(payload.get("customer"))
    field = settings.helpscout_visitor_field
    visitor_id = custom_field_value(payload.get("customFields"), field) or customer_property(
        customer, field
    )
    if visitor_id and require_uuid and not is_uuid(visitor_id):
        raise reject(f"customFields.{field}", f"{visitor_id[:60]!r} is not a UUID", 400)
    customer_id = text_field(customer.get("id"), 40)
    external = {"kind": thing}
    if customer_id:
        external["customer_id"] = customer_id
    fields: dict[str, Any] = {
        "id": f"helpscout:{thing}:{object_id}",
        "type": "livechat" if kind == CHAT else "support_ticket",
        "ticket_id": object_id,
        "visitor_id": visitor_id,
        "email": _customer_email(customer),
        "name": _name(customer),
        "inbound": "helpscout",
        "occurred_at": date_field(payload.get("createdAt")),
        "external": external,
    }
    if not visitor_id:
        if customer_id:
            fields["lookup"] = "helpscout"
        else:
            fields["missing_reason"] = widget_hint(field)
    return Event(**fields)


class HelpScoutWebhook(WebhookAdapter):
    """``POST /v1/webhooks/helpscout``: ``convo.created`` and ``beacon.chat.created``, signed
    with ``X-HelpScout-Signature`` (base64 HMAC-SHA1 of the body)."""

    system = "helpscout"
    label = "Help Scout"

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.helpscout_webhook_secret is not None

    def verify(self, request: WebhookRequest) -> None:
        require_signature(
            signed_by_any(
                secret_values(self.settings.helpscout_webhook_secret),
                request.body,
                request.headers.get("x-helpscout-signature", ""),
                digest="sha1",
                encoding="base64",
            ),
            "bad or missing X-HelpScout-Signature",
        )

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        kind = text_field(request.headers.get("x-helpscout-event"), 100)
        return [
            parse_helpscout_webhook(kind, payload, self.settings, require_uuid=self.require_uuid)
        ]


# The note ---------------------------------------------------------------------------------


def chat_note_id(event: Event) -> str:
    return str(uuid.uuid5(_NOTE_NAMESPACE, event.id))


def embedded(body: Any, name: str) -> list[Any]:
    box = body.get("_embedded") if isinstance(body, dict) else None
    items = box.get(name) if isinstance(box, dict) else None
    if not isinstance(items, list):
        raise BadResponse(f"answer without _embedded.{name}", service="helpscout")
    return items


class HelpScoutSink(Sink):
    name = "helpscout"
    label = "Help Scout"
    note_format = "html"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.helpscout_app_id) and settings.helpscout_app_secret is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        base_url = str(settings.helpscout_base_url).rstrip("/")
        self.auth = ClientCredentialsAuth(
            "helpscout",
            f"{base_url}/{TOKEN_PATH}",
            settings.helpscout_app_id or "",
            secret_text(settings.helpscout_app_secret),
        )
        return ServiceClient(
            "helpscout",
            base_url,
            settings=settings,
            limiter=limiter,
            rate=settings.helpscout_rate_limit,
            headers={"Accept": "application/json"},
            auth=self.auth,
            auth_hint=CREDENTIALS_HINT,
        )

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.ticket_id:
            return "no conversation or chat id (ticket_id) on the event"
        return self.not_from_own_webhook(event) or super().skip_reason(event, context)

    def _is_chat(self, event: Event) -> bool:
        return event.external.get("kind") == KIND_CHAT

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if self._is_chat(event):
            return self._chat_note(event, context, note)
        response = self.http.request(
            "POST", f"v2/conversations/{event.ticket_id}/notes", json_body={"text": note.body}
        )
        thread_id = response.headers.get("resource-id")
        return DeliveryResult(external_id=thread_id, detail=f"conversation {event.ticket_id}")

    def _chat_note(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        note_id = chat_note_id(event)
        # The chat screen shows text: the built-in text note unless a template was chosen.
        body = (
            note.body
            if note.template and note.template.endswith(".txt.j2")
            else (note_templates(self.settings.templates_dir).render("note.txt.j2", event, context))
        )
        try:
            self.http.request(
                "PUT", f"v2/chats/{event.ticket_id}/notes/{note_id}", json_body={"body": body}
            )
        except Rejected as exc:
            # The id is ours: "already in use" means an earlier attempt got through.
            if exc.status_code != 422 or "already in use" not in exc.message:
                raise
            return DeliveryResult(
                external_id=note_id, detail=f"chat {event.ticket_id} (already there)"
            )
        return DeliveryResult(external_id=note_id, detail=f"chat {event.ticket_id}")

    def already_delivered(self, event: Event) -> bool | None:
        if self._is_chat(event):
            events = embedded(
                self.http.request("GET", f"v2/chats/{event.ticket_id}").json(), "events"
            )
            note_id = chat_note_id(event)
            return any(isinstance(e, dict) and e.get("id") == note_id for e in events) or (
                marker_in_pages([events], event.marker, ("body",))
            )
        return marker_in_pages(self._thread_pages(event.ticket_id or ""), event.marker, ("body",))

    def _thread_pages(self, conversation_id: str) -> Iterator[list[Any]]:
        """The conversation's threads, newest first, one page at a time (fetched lazily)."""
        page = 1
        while True:
            body = self.http.request(
                "GET", f"v2/conversations/{conversation_id}/threads", params={"page": str(page)}
            ).json()
            yield embedded(body, "threads")
            pages = object_field(object_field(body).get("page")).get("totalPages")
            if not isinstance(pages, int) or page >= pages:
                return
            page += 1

    def complete_event(self, event: Event) -> Completion:
        """The customer property ``HELPSCOUT_VISITOR_FIELD``, email and name."""
        field = self.settings.helpscout_visitor_field
        customer_id = event.external.get("customer_id")
        if not customer_id:
            return Completion(event, widget_hint(field))
        path = f"v2/customers/{customer_id}"
        found = unless_missing(lambda: self.http.request("GET", path).json())
        if found is None:
            return Completion(event, f"Help Scout has no customer {customer_id}")
        customer = object_field(found)
        return looked_up(
            event,
            customer_property(customer, field),
            missing=widget_hint(field),
            found=f"customer {customer_id} property {field}",
            email=_customer_email(customer),
            name=_name(customer),
        )

    def check(self) -> str:
        me = self.http.request("GET", "v2/users/me").json()
        who = me.get("email") if isinstance(me, dict) else None
        return f"{self.label} answered at {self.http.base_url} as {who or 'the app'}"


INTEGRATION = Integration(
    name="helpscout", label="Help Scout", sink=HelpScoutSink, webhook=HelpScoutWebhook
)
