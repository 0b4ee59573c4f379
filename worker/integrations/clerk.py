"""Clerk: a new user's journey from Clerk's own ``user.created`` webhook.

Clerk sends its webhooks through Svix: ``{"data": <User>, "object": "event", "type":
"user.created", "timestamp": <ms>, "instance_id": ...}`` with the headers ``svix-id`` (the
same on every retry and resend: the dedupe key), ``svix-timestamp`` (unix seconds) and
``svix-signature`` (space-separated ``v1,<base64>``). Svix's scheme is Standard Webhooks with
``svix-`` instead of ``webhook-`` header names, so the check is ``worker/signature.py``'s
``SignatureCheck`` (the one the service verifies ``POST /v1/events`` with, held to the
``standardwebhooks`` library's verdict by ``tests/test_signature.py``): HMAC-SHA256 keyed with
the base64 part of the ``whsec_`` secret over ``"{id}.{timestamp}.{raw body}"``, five minutes'
tolerance. Comma-separated secrets (a rotation): any of them may match.

``user.created`` maps onto one ``signup`` event, id ``clerk:<svix-id>``:
- the visitor id from ``public_metadata`` (written by the user's backend, so trusted first),
  else ``unsafe_metadata`` (the frontend's ``signUp.create({unsafeMetadata: ...})``), under
  ``CLERK_VISITOR_METADATA_KEY``; none, or not a UUID: the event still goes on, with a
  missing reason saying how to set it (a 4xx would only make Svix retry for days);
- the primary email (``primary_email_address_id`` among ``email_addresses``), the name, and
  the Clerk user id (``data.id``) as ``user_id``.

Every other event type is answered 200 ``ignored``. Clerk makes no call here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import Settings
from worker.events import MAX_ID_LENGTH, Event, is_uuid
from worker.inbound import (
    Ignored,
    WebhookAdapter,
    WebhookRequest,
    date_field,
    email_field,
    reject,
    require_signature,
    text_field,
)
from worker.integration import Integration
from worker.signature import SignatureCheck
from worker.text import joined

EVENT_ID_PREFIX = "clerk:"


def primary_email(user: dict[str, Any]) -> str | None:
    """The user's primary email address, else the first one."""
    addresses = [a for a in user.get("email_addresses") or [] if isinstance(a, dict)]
    primary = user.get("primary_email_address_id")
    chosen = next((a for a in addresses if primary and a.get("id") == primary), None)
    for address in [chosen, *addresses]:
        email = email_field(address.get("email_address")) if address else None
        if email:
            return email
    return None


def metadata_visitor_id(user: dict[str, Any], key: str) -> tuple[str | None, str | None]:
    """The visitor id under ``key`` and where it was found (``public_metadata`` first)."""
    for where in ("public_metadata", "unsafe_metadata"):
        metadata = user.get(where)
        value = text_field(metadata.get(key), MAX_ID_LENGTH) if isinstance(metadata, dict) else None
        if value:
            return value, where
    return None, None


def parse_clerk_event(
    payload: Any, svix_id: str, settings: Settings, *, require_uuid: bool = True
) -> Event:
    """Map a Clerk ``user.created`` webhook onto a ``signup`` event."""
    if not isinstance(payload, dict):
        raise reject("body", "a Clerk webhook must be a JSON object")
    kind = text_field(payload.get("type"), 100)
    if kind != "user.created":
        raise Ignored(f"Clerk event type {kind!r} is not handled (only user.created)")
    user = payload.get("data")
    if not isinstance(user, dict):
        raise reject("data", "missing; Clerk sends the User object there")
    key = settings.clerk_visitor_metadata_key
    visitor_id, where = metadata_visitor_id(user, key)
    missing = None
    if visitor_id is None:
        missing = (
            f"no {key} in the Clerk user's public_metadata or unsafe_metadata; pass "
            f"unsafeMetadata: {{{key}: <the {key} cookie>}} to signUp.create"
        )
    elif require_uuid and not is_uuid(visitor_id):
        missing = f"{where}.{key} {visitor_id[:60]!r} on the Clerk user is not a UUID"
        visitor_id = None
    user_id = text_field(user.get("id"), MAX_ID_LENGTH)
    return Event(
        id=f"{EVENT_ID_PREFIX}{svix_id}",
        type="signup",
        visitor_id=visitor_id,
        email=primary_email(user),
        name=joined(text_field(user.get("first_name")), text_field(user.get("last_name"))),
        user_id=user_id,
        occurred_at=date_field(user.get("created_at")) or date_field(payload.get("timestamp")),
        inbound="clerk",
        external={"clerk_user_id": user_id} if user_id else {},
        missing_reason=missing,
    )


class ClerkWebhook(WebhookAdapter):
    """``POST /v1/webhooks/clerk``: Clerk's ``user.created``, signed by Svix."""

    system = "clerk"
    label = "Clerk"
    secret_setting = "clerk_webhook_secret"

    def __init__(self, settings: Settings, *, require_uuid: bool = True) -> None:
        super().__init__(settings, require_uuid=require_uuid)
        # The secrets decoded once (Settings refused one that is not whsec_<base64>); none:
        # not configured, and the web layer answers 401 before verify.
        secrets = self.secrets(settings)
        self._check = SignatureCheck(secrets) if secrets else None

    def verify(self, request: WebhookRequest) -> None:
        require_signature(self._check is not None, "CLERK_WEBHOOK_SECRET is not set")
        assert self._check is not None
        headers = {
            f"webhook-{name}": request.headers.get(f"svix-{name}", "")
            for name in ("id", "timestamp", "signature")
        }
        self._check.verify(request.body, headers)

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        svix_id = text_field(request.headers.get("svix-id"), MAX_ID_LENGTH - len(EVENT_ID_PREFIX))
        if not svix_id:  # verify() needs it; kept for a direct caller
            raise reject("svix-id", "missing header")
        return [parse_clerk_event(payload, svix_id, self.settings, require_uuid=self.require_uuid)]


INTEGRATION = Integration(name="clerk", label="Clerk", webhook=ClerkWebhook)
