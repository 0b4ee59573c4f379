"""Plain (plain.com): its ``thread.thread_created`` webhook in, one note on the thread out.

**The webhook** (Settings → Webhooks → a target with the event "Thread created") posts
``{"id": "pEv_...", "type": "thread.thread_created", "timestamp", "workspaceId",
"payload": {"eventType", "thread": {"id", "externalId", "customer": {"id", "externalId",
"email": {"email"}, "fullName"}}}, "webhookMetadata": {...}}``. It is verified with
``Plain-Request-Signature``: hex HMAC-SHA256 of the request body under the workspace's
request-signing secret (``PLAIN_WEBHOOK_SECRET``), and the delivery attempt's timestamp must be
within ``PLAIN_TIMESTAMP_TOLERANCE`` seconds (300, as Plain's SDK checks). ``Plain-Event-Id``
(the body's ``id``, the same on every attempt) is the event id, so Plain's retries are
duplicates. Other event types are ignored (200).

**The visitor id** is where ``PLAIN_VISITOR_SOURCE`` says: a thread field whose key is
``PLAIN_VISITOR_FIELD`` (the default; the webhook does not carry thread fields, so the worker
reads them with the ``thread`` query, ``Event.lookup = "plain"``), the customer's external id,
or the thread's external id (both in the webhook).

**The note**: the ``createNote`` mutation (``customerId``, ``threadId``, ``text`` and
``markdown``) with ``Authorization: Bearer PLAIN_API_KEY``; notes are visible to the team
only. Exactly once: a redelivered task pages through the thread's ``timelineEntries``
(``entryTypes: [NOTE]``) for the event's marker before posting again.

Errors: GraphQL answers 200 with ``errors`` (a bad query, a missing permission) or a
mutation's ``error`` (``code``, ``message``, ``fields``); both become ``worker.errors`` types.
Plain documents no rate-limit numbers: ``PLAIN_RATE_LIMIT`` is modest, and 429 with
``Retry-After`` pauses every worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from config import Settings
from worker.errors import AuthFailed, BadResponse, RateLimited, Rejected
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
    require_fresh_timestamp,
    require_signature,
    secret_values,
    signed_by_any,
    text_field,
)
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.sink import Completion, DeliveryResult, Note, Sink, looked_up, marker_in_pages
from worker.templates import render_text

EVENT_ID_PREFIX = "plain:"
THREAD_CREATED = "thread.thread_created"
GRAPHQL_PATH = "graphql/v1"
PAGE_SIZE = 50
AUTH_HINT = "check PLAIN_API_KEY and its permissions"
# Error codes that mean the key is wrong or lacks a permission.
_AUTH_CODES = frozenset({"forbidden", "unauthorized", "unauthenticated", "FORBIDDEN"})

CREATE_NOTE = """
mutation createNote($input: CreateNoteInput!) {
  createNote(input: $input) {
    note { id }
    error { message type code fields { field message type } }
  }
}
"""

THREAD_NOTES = """
query threadNotes($threadId: ID!, $first: Int!, $after: String) {
  thread(threadId: $threadId) {
    timelineEntries(first: $first, after: $after, filters: {entryTypes: [NOTE]}) {
      edges { node { id entry { __typename ... on NoteEntry { noteId text markdown } } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""

THREAD_VISITOR = """
query threadVisitor($threadId: ID!) {
  thread(threadId: $threadId) {
    id
    externalId
    threadFields { key stringValue }
    customer { id externalId fullName email { email } }
  }
}
"""

MY_WORKSPACE = "query myWorkspace { myWorkspace { id name } }"


# The webhook ------------------------------------------------------------------------------


def thread_field(fields: Any, key: str) -> str | None:
    """The string value of the thread field ``key`` in a ``threadFields`` list, or None."""
    if not isinstance(fields, list):
        return None
    for item in fields:
        if isinstance(item, dict) and item.get("key") == key:
            return text_field(item.get("stringValue"))
    return None


def visitor_missing_reason(settings: Settings) -> str:
    source, key = settings.plain_visitor_source, settings.plain_visitor_field
    if source == "customer_external_id":
        return (
            "the Plain customer has no external id; set it to the visitor's "
            "datafast_visitor_id when you upsert the customer (upsertCustomer, externalId)"
        )
    if source == "thread_external_id":
        return (
            "the Plain thread has no external id; create the thread with externalId set "
            "to the visitor's datafast_visitor_id"
        )
    return (
        f"no thread field {key} on the Plain thread; set it when the thread is created "
        f"(upsertThreadField with key {key} and the datafast_visitor_id cookie as stringValue)"
    )


def parse_plain_webhook(
    payload: Any, settings: Settings, *, event_id: str | None, require_uuid: bool = True
) -> Event:
    """Map a ``thread.thread_created`` webhook onto a ``support_ticket`` event."""
    if not isinstance(payload, dict):
        raise reject("body", "the Plain webhook body must be a JSON object")
    inner = object_field(payload.get("payload"))
    kind = text_field(payload.get("type"), 100) or text_field(inner.get("eventType"), 100)
    if kind != THREAD_CREATED:
        raise Ignored(f"Plain event {kind!r} is not handled ({THREAD_CREATED})")
    event_id = event_id or text_field(payload.get("id"), MAX_ID_LENGTH)
    if not event_id:
        raise reject("id", "missing; Plain sends the event id there and in Plain-Event-Id")
    if len(event_id) > MAX_ID_LENGTH - len(EVENT_ID_PREFIX):
        raise reject("id", "too long for a Plain event id")
    thread = inner.get("thread")
    if not isinstance(thread, dict):
        raise reject("payload.thread", "missing; Plain sends the created thread there")
    thread_id = text_field(thread.get("id"), MAX_ID_LENGTH)
    if not thread_id:
        raise reject("payload.thread.id", "missing")
    customer = object_field(thread.get("customer"))
    customer_id = text_field(customer.get("id"), MAX_ID_LENGTH)
    if not customer_id:
        raise reject("payload.thread.customer.id", "missing; a note needs the customer")

    source = settings.plain_visitor_source
    lookup: str | None = None
    if source == "customer_external_id":
        visitor_id = text_field(customer.get("externalId"))
    elif source == "thread_external_id":
        visitor_id = text_field(thread.get("externalId"))
    else:
        visitor_id = thread_field(thread.get("threadFields"), settings.plain_visitor_field)
        # The documented payload has no thread fields: the worker reads them.
        lookup = None if visitor_id else "plain"
    if visitor_id and require_uuid and not is_uuid(visitor_id):
        where = {
            "customer_external_id": "payload.thread.customer.externalId",
            "thread_external_id": "payload.thread.externalId",
        }.get(source, f"payload.thread.threadFields.{settings.plain_visitor_field}")
        raise reject(where, f"{visitor_id[:60]!r} is not a UUID", 400)
    return Event(
        id=f"{EVENT_ID_PREFIX}{event_id}",
        type="support_ticket",
        ticket_id=thread_id,
        visitor_id=visitor_id,
        email=email_field(object_field(customer.get("email")).get("email")),
        name=text_field(customer.get("fullName")),
        inbound="plain",
        external={"customer_id": customer_id},
        occurred_at=date_field(thread.get("createdAt")) or date_field(payload.get("timestamp")),
        lookup=lookup,
        missing_reason=None if visitor_id or lookup else visitor_missing_reason(settings),
    )


def _attempt_time(request: WebhookRequest) -> str | None:
    """When Plain made this delivery attempt (header, else the body's webhookMetadata)."""
    stamp = request.headers.get("plain-webhook-delivery-attempt-timestamp")
    if stamp:
        return stamp
    try:
        body = orjson.loads(request.body)
    except ValueError:
        return None
    meta = object_field(object_field(body).get("webhookMetadata"))
    return text_field(meta.get("webhookDeliveryAttemptTimestamp"))


class PlainWebhook(WebhookAdapter):
    """``POST /v1/webhooks/plain``: verified with ``Plain-Request-Signature`` (hex HMAC-SHA256
    of the body, ``PLAIN_WEBHOOK_SECRET``); ``Plain-Event-Id`` is the dedupe key."""

    system = "plain"
    label = "Plain"

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.plain_webhook_secret is not None

    def verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get("plain-request-signature", "")
        require_signature(
            signed_by_any(
                secret_values(self.settings.plain_webhook_secret), request.body, signature
            ),
            "bad or missing Plain-Request-Signature",
        )
        tolerance = self.settings.plain_timestamp_tolerance
        attempted = _attempt_time(request)
        # PLAIN_TIMESTAMP_TOLERANCE=0 turns it off; a body without the time is not refused.
        if tolerance and attempted:
            require_fresh_timestamp(attempted, tolerance)

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        event_id = text_field(request.headers.get("plain-event-id"), MAX_ID_LENGTH)
        return [
            parse_plain_webhook(
                payload, self.settings, event_id=event_id, require_uuid=self.require_uuid
            )
        ]


# The sink ---------------------------------------------------------------------------------


class PlainSink(Sink):
    name = "plain"
    label = "Plain"
    note_format = "markdown"  # createNote's ``markdown``; ``text`` gets the plain-text note

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.plain_api_key is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "plain",
            str(settings.plain_base_url),
            settings=settings,
            limiter=limiter,
            rate=settings.plain_rate_limit,
            headers=bearer_headers(settings.plain_api_key),
            auth_hint=AUTH_HINT,
        )

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of a GraphQL answer; its ``errors`` raised as ``worker.errors``."""
        response = self.http.request(
            "POST", GRAPHQL_PATH, json_body={"query": query, "variables": variables or {}}
        )
        body = response.json()
        if not isinstance(body, dict):
            raise BadResponse("answered without a JSON object", service=self.name)
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            first = object_field(errors[0])
            code = str(object_field(first.get("extensions")).get("code") or "")
            message = f"{first.get('message') or 'GraphQL error'}" + (f" ({code})" if code else "")
            if code in _AUTH_CODES:
                raise AuthFailed(message, service=self.name).with_hint(AUTH_HINT)
            if code.lower() in ("rate_limited", "too_many_requests"):
                raise RateLimited(message, service=self.name)
            raise Rejected(message, service=self.name)
        data = body.get("data")
        if not isinstance(data, dict):
            raise BadResponse("answered without data", service=self.name)
        return data

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.ticket_id:
            return "no ticket_id (Plain thread id) on the event"
        if not event.external.get("customer_id"):
            return "no Plain customer id on the event (a note needs it)"
        # A thread id means nothing elsewhere: only the Plain webhook's own events.
        return self.not_from_own_webhook(event) or super().skip_reason(event, context)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        note_input = {
            "customerId": event.external["customer_id"],
            "threadId": event.ticket_id,
            # Where Plain cannot show rich text; it carries the marker too.
            "text": render_text(event, context),
            "markdown": note.body,
        }
        data = self.graphql(CREATE_NOTE, {"input": note_input})
        result = object_field(data.get("createNote"))
        error = result.get("error")
        if isinstance(error, dict):
            fields = "; ".join(
                f"{f.get('field')}: {f.get('message')}"
                for f in error.get("fields") or []
                if isinstance(f, dict)
            )
            message = f"createNote: {error.get('message') or error.get('code')}" + (
                f" ({fields})" if fields else ""
            )
            if error.get("code") in _AUTH_CODES:
                raise AuthFailed(message, service=self.name).with_hint(
                    "the API key needs the note:create permission"
                )
            raise Rejected(message, service=self.name)
        note_id = object_field(result.get("note")).get("id")
        if not note_id:
            raise BadResponse("createNote answered without a note", service=self.name)
        return DeliveryResult(external_id=str(note_id), detail=f"thread {event.ticket_id}")

    def _note_pages(self, event: Event) -> Iterator[list[Any]]:
        after: str | None = None
        while True:
            variables = {"threadId": event.ticket_id, "first": PAGE_SIZE, "after": after}
            thread = self.graphql(THREAD_NOTES, variables).get("thread")
            if not isinstance(thread, dict):
                raise Rejected(f"Plain has no thread {event.ticket_id}", service=self.name)
            entries = object_field(thread.get("timelineEntries"))
            edges = entries.get("edges")
            if not isinstance(edges, list):
                raise BadResponse("timelineEntries without edges", service=self.name)
            yield [object_field(e).get("node") for e in edges]
            page = object_field(entries.get("pageInfo"))
            after = page.get("endCursor")
            if not page.get("hasNextPage") or not after:
                return

    def already_delivered(self, event: Event) -> bool | None:
        return marker_in_pages(
            self._note_pages(event), event.marker, ("entry.text", "entry.markdown")
        )

    def complete_event(self, event: Event) -> Completion:
        """The visitor id from the thread field ``PLAIN_VISITOR_FIELD``."""
        key = self.settings.plain_visitor_field
        thread = self.graphql(THREAD_VISITOR, {"threadId": event.ticket_id}).get("thread")
        if not isinstance(thread, dict):
            return Completion(event, f"Plain has no thread {event.ticket_id}")
        return looked_up(
            event,
            thread_field(thread.get("threadFields"), key),
            missing=visitor_missing_reason(self.settings),
            found=f"the thread field {key}",
        )

    def check(self) -> str:
        workspace = object_field(self.graphql(MY_WORKSPACE).get("myWorkspace"))
        name = workspace.get("name") or workspace.get("id") or "the API key's workspace"
        return f"{self.label} answered at {self.http.base_url} for workspace {name}"


INTEGRATION = Integration(name="plain", label="Plain", sink=PlainSink, webhook=PlainWebhook)
