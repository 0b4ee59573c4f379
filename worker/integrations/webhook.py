"""The signed outbound webhook: every event and its whole journey, as versioned JSON, to one
URL of the user's (``OUTBOUND_WEBHOOK_URL``), for any tool we do not support.

The body is ``{"type": "visitor.enriched", "version": 1, "id", "event", "journey", "note"}``,
documented by the JSON Schema ``schemas/visitor-enriched.v1.json`` (the tests validate
what this module sends against it). A change that could break a receiver gets a
new ``version`` and a new schema file.

Signed with Standard Webhooks headers exactly as the service verifies its own inbound events:
``webhook-id`` (the event id: the same on every retry, so receivers can dedupe on it),
``webhook-timestamp`` and ``webhook-signature`` (``standardwebhooks.Webhook.sign``, once per
secret in ``OUTBOUND_WEBHOOK_SECRET``, space-separated, so a receiver holding either secret
of a rotation verifies it). Any Standard Webhooks or Svix library verifies it.

Retried with backoff and dead-lettered like every sink (``ServiceClient`` and the tasks):
a 2xx is delivered; a 429 or 5xx (and a timeout) is tried again, honouring ``Retry-After``;
another 4xx fails the delivery (dead letter, ``visitor-enrich dead replay`` sends it again).

Exactly once: this sink cannot look at the receiver, so ``already_delivered`` says it cannot
tell (None): after a worker dies between the POST and its record the POST is repeated, with
the same ``webhook-id``: receivers dedupe on it.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

from config import Settings
from worker.events import Event
from worker.http import ServiceClient
from worker.inbound import secret_values
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.sink import DeliveryResult, Note, Sink

PAYLOAD_TYPE = "visitor.enriched"
PAYLOAD_VERSION = 1
SCHEMA_FILE = "schemas/visitor-enriched.v1.json"

# Event fields a receiver gets; the rest (lookup, internal status) is the pipeline's own.
EVENT_FIELDS = (
    "id",
    "type",
    "visitor_id",
    "email",
    "name",
    "user_id",
    "ticket_id",
    "room_id",
    "occurred_at",
    "received_at",
    "inbound",
    "external",
    "website",
    "payment",
)


def webhook_payload(event: Event, context: JourneyContext, note: Note) -> dict[str, Any]:
    """The ``visitor.enriched`` v1 body (``schemas/visitor-enriched.v1.json``)."""
    return {
        "type": PAYLOAD_TYPE,
        "version": PAYLOAD_VERSION,
        "id": event.id,
        "event": event.model_dump(mode="json", include=set(EVENT_FIELDS)),
        "journey": context.model_dump(mode="json"),
        "note": {"format": "text", "body": note.body},
    }


def sign_headers(
    secrets: list[str], msg_id: str, body: bytes, at: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``: one ``v1,`` signature per secret."""
    when = at or datetime.now(UTC)
    text = body.decode()
    signatures = [Webhook(secret).sign(msg_id, when, text) for secret in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
    }


class OutboundWebhookSink(Sink):
    name = "webhook"
    label = "Outbound webhook"
    # The payload carries the plain-text note too (a template of the user's may shape it).
    note_format = "text"
    # A receiver may want to know that a signup had no journey.
    wants_empty_context = True

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.outbound_webhook_url is not None and bool(
            secret_values(settings.outbound_webhook_secret)
        )

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        self._secrets = secret_values(settings.outbound_webhook_secret)
        return ServiceClient(
            "webhook",
            str(settings.outbound_webhook_url),
            settings=settings,
            limiter=limiter,
            rate=settings.outbound_webhook_rate_limit,
        )

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        body = orjson.dumps(webhook_payload(event, context, note))
        headers = sign_headers(self._secrets, event.id, body)
        response = self.http.request("POST", self.http.base_url, content=body, headers=headers)
        return DeliveryResult(detail=f"{response.status_code} from {self._host()}")

    def already_delivered(self, event: Event) -> bool | None:
        # Nothing to look at on the receiver's side: a repeat carries the same webhook-id.
        return None

    def _host(self) -> str:
        return urllib.parse.urlsplit(self.http.base_url).netloc.rpartition("@")[2]

    def check(self) -> str:
        # A POST is the only thing the URL takes; sending a fake event could act on it.
        return f"{self.label} configured to POST to {self._host()} (not called by check)"


INTEGRATION = Integration(name="webhook", label="Outbound webhook", sink=OutboundWebhookSink)
