"""The senders of the sales tools' webhooks, as tests play them: their documented payloads and
each one's own signature, made with the vendor's own code where there is some.

- Stripe: ``Stripe-Signature`` from ``stripe.WebhookSignature.generate_signature_header`` (the
  official library's helper "for signing payloads in unit tests"); Checkout Session and
  PaymentIntent events in the shapes of Stripe's API reference.
- Clerk: Svix headers (``svix-id``, ``svix-timestamp``, ``svix-signature``) made with the
  ``standardwebhooks`` library (Svix's scheme under other header names); ``user.created``
  with a User as Clerk's webhook guide shows it.
- HubSpot: ``X-HubSpot-Signature-v3`` as HubSpot's request-validation page describes it
  (written out here, independently of the service's code); a ``contact.creation`` batch.

The HubSpot API and the outbound webhook's receiver are played by ``tests/fakes.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook
from stripe import WebhookSignature

STRIPE_SECRET = "whsec_stripe_test_3f9a8d7c6b5e4f3a2b1c0d9e8f7a6b5c"
CLERK_SECRET = "whsec_" + base64.b64encode(b"clerk-svix-test-secret-0123456789").decode()
HUBSPOT_APP_SECRET = "hubspot-app-client-secret-5c1d2e3f"
OUTBOUND_SECRET = "whsec_" + base64.b64encode(b"outbound-webhook-test-secret-42").decode()


# Stripe ------------------------------------------------------------------------------------


def stripe_headers(
    body: bytes, secret: str = STRIPE_SECRET, at: int | None = None
) -> dict[str, str]:
    header = WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=at)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def stripe_checkout_completed(
    visitor_id: str | None,
    *,
    event_id: str | None = None,
    email: str = "buyer@example.com",
    amount_total: int = 4900,
    currency: str = "eur",
    mode: str = "payment",
    metadata_key: str = "datafast_visitor_id",
    description: str | None = "Pro plan",
) -> dict[str, Any]:
    """A ``checkout.session.completed`` event (Checkout Session object, not expanded)."""
    metadata: dict[str, str] = {}
    if visitor_id is not None:
        metadata[metadata_key] = visitor_id
        metadata["datafast_session_id"] = "s_" + uuid.uuid4().hex[:12]
    if description is not None:
        metadata["product"] = description
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex[:24]}",
                "object": "checkout.session",
                "amount_subtotal": amount_total,
                "amount_total": amount_total,
                "client_reference_id": None,
                "currency": currency,
                "customer": f"cus_{uuid.uuid4().hex[:14]}",
                "customer_details": {
                    "email": email,
                    "name": "Grace Hopper",
                    "address": {"country": "DE"},
                    "tax_exempt": "none",
                },
                "customer_email": None,
                "metadata": metadata,
                "mode": mode,
                "payment_intent": f"pi_{uuid.uuid4().hex[:24]}",
                "payment_status": "paid",
                "status": "complete",
                "subscription": None,
            }
        },
    }


def stripe_payment_intent_succeeded(
    visitor_id: str | None, *, amount: int = 120000, currency: str = "jpy"
) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "created": int(time.time()),
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": f"pi_{uuid.uuid4().hex[:24]}",
                "object": "payment_intent",
                "amount": amount,
                "amount_received": amount,
                "currency": currency,
                "customer": None,
                "description": "Annual licence",
                "metadata": {"datafast_visitor_id": visitor_id} if visitor_id else {},
                "receipt_email": "ops@example.jp",
                "status": "succeeded",
            }
        },
    }


# Clerk (Svix) ------------------------------------------------------------------------------


def svix_headers(
    body: bytes,
    *,
    msg_id: str | None = None,
    secret: str = CLERK_SECRET,
    at: datetime | None = None,
) -> dict[str, str]:
    when = at or datetime.now(UTC)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex[:27]}"
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, when, body.decode()),
        "Content-Type": "application/json",
    }


def clerk_user_created(
    *,
    public: dict[str, Any] | None = None,
    unsafe: dict[str, Any] | None = None,
    email: str = "ada@example.com",
) -> dict[str, Any]:
    """``user.created`` with a User: a secondary address first, the primary one second."""
    now_ms = int(time.time() * 1000)
    return {
        "data": {
            "id": f"user_{uuid.uuid4().hex[:27]}",
            "object": "user",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "primary_email_address_id": "idn_primary",
            "email_addresses": [
                {"id": "idn_other", "object": "email_address", "email_address": "old@example.com"},
                {"id": "idn_primary", "object": "email_address", "email_address": email},
            ],
            "external_id": None,
            "public_metadata": public or {},
            "private_metadata": {},
            "unsafe_metadata": unsafe or {},
            "created_at": now_ms,
            "updated_at": now_ms,
        },
        "event_attributes": {"http_request": {"client_ip": "203.0.113.9", "user_agent": "x"}},
        "instance_id": "ins_test",
        "object": "event",
        "timestamp": now_ms,
        "type": "user.created",
    }


# HubSpot -----------------------------------------------------------------------------------


def hubspot_headers(
    uri: str,
    body: bytes,
    *,
    secret: str = HUBSPOT_APP_SECRET,
    method: str = "POST",
    at_ms: int | None = None,
) -> dict[str, str]:
    """``X-HubSpot-Signature-v3``: base64(HMAC-SHA256(secret, method + uri + body + ts))."""
    timestamp = str(at_ms if at_ms is not None else int(time.time() * 1000))
    source = f"{method}{uri}{body.decode()}{timestamp}".encode()
    digest = hmac.new(secret.encode(), source, hashlib.sha256).digest()
    return {
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": timestamp,
        "Content-Type": "application/json",
    }


def hubspot_creation_batch(
    contact_ids: list[str], *, first_event_id: int | None = None
) -> list[dict[str, Any]]:
    """A ``contact.creation`` batch as HubSpot posts it, one entry per contact."""
    base = first_event_id if first_event_id is not None else int(uuid.uuid4().int % 10**9)
    now = int(time.time() * 1000)
    return [
        {
            "eventId": base + i,
            "subscriptionId": 2881778,
            "portalId": 62515,
            "appId": 1160452,
            "occurredAt": now,
            "subscriptionType": "contact.creation",
            "attemptNumber": 0,
            "objectId": int(contact_id),
            "changeFlag": "CREATED",
            "changeSource": "FORM",
        }
        for i, contact_id in enumerate(contact_ids)
    ]


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()
