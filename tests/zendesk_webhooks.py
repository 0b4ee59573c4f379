"""Zendesk's webhooks as Zendesk sends them: a trigger's "Notify webhook" JSON (the body the
README tells the admin to write, with its placeholders filled in) and the
``zen:event-type:ticket.created`` event, signed with ``X-Zendesk-Webhook-Signature`` =
base64(HMAC-SHA256(secret, timestamp + body)). The fake Zendesk API is in ``tests/fakes.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

ZENDESK_WEBHOOK_SECRET = "dGhpcy1pcy1hLXplbmRlc2stc2lnbmluZy1zZWNyZXQ="
VISITOR_FIELD_ID = "360012345678"


def trigger_body(
    ticket_id: str, visitor_id: str = "", email: str = "ada@example.com"
) -> dict[str, Any]:
    """The README's trigger JSON once Zendesk filled it in (an empty field renders as "")."""
    return {
        "ticket_id": ticket_id,
        "email": email,
        "name": "Ada Lovelace",
        "datafast_visitor_id": visitor_id,
    }


def ticket_created(ticket_id: str, requester_id: int = 1) -> dict[str, Any]:
    """The ``ticket.created`` event webhook's body."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "zen:event-type:ticket.created",
        "account_id": 12514403,
        "id": str(uuid.uuid4()),
        "time": now,
        "zendesk_event_version": "2022-11-06",
        "subject": f"zen:ticket:{ticket_id}",
        "detail": {
            "id": ticket_id,
            "requester_id": str(requester_id),
            "created_at": now,
            "status": "NEW",
            "tags": [],
            "via": {"channel": "web_widget"},
        },
        "event": {},
    }


def signed(
    payload: Any,
    secret: str = ZENDESK_WEBHOOK_SECRET,
    timestamp: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    stamp = timestamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    mac = hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest()
    return body, {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": base64.b64encode(mac).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
    }
