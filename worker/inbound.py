"""Inbound webhook adapters: a helpdesk's, chat tool's, billing or sign-up tool's own webhook,
verified its own way and mapped onto ``Event``s.

``POST /v1/webhooks/{system}`` (``worker/web.py``) reads the raw body (size-limited), hands it
to the system's ``WebhookAdapter`` and takes the events it maps through the same atomic intake
as ``POST /v1/events``:

- ``verify`` checks the sender's signature over the raw bytes (constant-time compares, the
  sender's timestamp tolerance); ``SignatureError`` is answered 401;
- ``map_events`` turns the JSON into events: ``EventRejected`` (422 naming the field, or 400)
  for a payload it cannot map, ``Ignored`` (200 ``ignored``, so the sender does not retry it
  forever) for a kind of webhook it does not handle. None of these queues anything.

An adapter runs in the web process and must answer fast: it makes no outgoing call. When the
payload lacks the email or the visitor id, the event names the lookup the worker makes in that
system's API before fetching the journey (``Event.lookup``; ``Sink.complete_event``).

The sender's own event id is the event id (with the system's prefix), so its retries are
answered ``duplicate``. Pure: no I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from config import Settings
from config.settings import split_secrets
from worker.events import Event, EventRejected, is_email
from worker.signature import SignatureError, matches_any

__all__ = [
    "Ignored",
    "WebhookAdapter",
    "WebhookRequest",
    "constant_time_equal",
    "custom_fields",
    "date_field",
    "email_field",
    "object_field",
    "reject",
    "require_fresh_timestamp",
    "require_signature",
    "secret_matches",
    "secret_values",
    "signed_by_any",
    "text_field",
]

MAX_CUSTOM_FIELDS = 50
MAX_FIELD_CHARS = 500


class Ignored(Exception):
    """A webhook this adapter does not handle (another topic, a bot's message): 200 ``ignored``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WebhookRequest:
    """What an adapter sees of one inbound request."""

    method: str
    # The path and query as received (HubSpot signs the full URI).
    url: str
    body: bytes
    # Lower-case header names, the first of repeated ones.
    headers: Mapping[str, str]
    query: Mapping[str, str] = field(default_factory=dict)
    # ``?website=`` on the webhook path: which DataFast website the visitor ids belong to.
    website: str | None = None


def constant_time_equal(given: str | bytes, expected: str | bytes) -> bool:
    """Compare a secret or signature without leaking where they differ."""
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def secret_values(secret: SecretStr | None) -> list[str]:
    """The secrets in force for one setting: several, comma-separated, during a rotation."""
    return [s.get_secret_value() for s in split_secrets(secret)]


def secret_matches(given: str, secrets: Sequence[str]) -> bool:
    """Whether ``given`` (a token in a header or the URL, or a computed signature) is one of
    ``secrets``, in constant time (``worker.signature.matches_any``)."""
    return matches_any(given, [SecretStr(secret) for secret in secrets])


def signed_by_any(
    secrets: Sequence[str],
    message: bytes,
    given: str,
    *,
    digest: str = "sha256",
    encoding: Literal["hex", "base64"] = "hex",
) -> bool:
    """Whether ``given`` is the HMAC of ``message`` under any of ``secrets`` (a rotation),
    written in ``encoding``; compared in constant time (hex case-insensitively)."""
    given = given.strip()
    if not given:
        return False
    if encoding == "hex":
        given = given.lower()
    expected = []
    for secret in secrets:
        mac = hmac.new(secret.encode(), message, getattr(hashlib, digest)).digest()
        expected.append(mac.hex() if encoding == "hex" else base64.b64encode(mac).decode())
    return secret_matches(given, expected)


class WebhookAdapter(ABC):
    """One outside system's inbound webhook. One instance per web process."""

    system: ClassVar[str]
    label: ClassVar[str]
    # The answer for a queued event; Rocket.Chat retries anything but 200.
    accepted_status: ClassVar[int] = 202

    def __init__(self, settings: Settings, *, require_uuid: bool = True) -> None:
        self.settings = settings
        # The configured source's rule for visitor ids (DataFast's are UUIDs): checked here.
        self.require_uuid = require_uuid

    # The setting holding this sender's secret(s), comma-separated while one is rotated; the
    # default ``configured`` and ``secrets`` read it.
    secret_setting: ClassVar[str] = ""

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Whether the secret that authenticates this sender is set (else every call is 401)."""
        return bool(cls.secrets(settings))

    @classmethod
    def secrets(cls, settings: Settings) -> list[str]:
        """The secrets in force for this sender (``secret_setting``)."""
        value = getattr(settings, cls.secret_setting) if cls.secret_setting else None
        return secret_values(value)

    @abstractmethod
    def verify(self, request: WebhookRequest) -> None:
        """Raise ``SignatureError`` unless the request is signed by the sender."""

    @abstractmethod
    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        """The events this webhook stands for (usually one; a batch for HubSpot)."""

    def not_configured_message(self) -> str:
        return f"{self.label} webhooks are refused: its secret is not set on the server"

    def check(self) -> str:
        """For ``visitor-enrich check`` when configured: what the sender must be set up with;
        raises when something the events need is missing (a lookup's credentials)."""
        return f"secret set; {self.label} must post to /v1/webhooks/{self.system}"


def require_fresh_timestamp(
    value: str | None, tolerance: float, *, now: float | None = None
) -> None:
    """Refuse a signed timestamp further than ``tolerance`` seconds from now, so a captured
    request cannot be replayed later. Unix seconds or milliseconds, or ISO 8601 (Zendesk)."""
    text = (value or "").strip()
    try:
        when = date_field(float(text))
    except ValueError:
        when = date_field(text) if text else None
    if when is None:
        raise SignatureError("missing or malformed signature timestamp")
    current = time.time() if now is None else now
    require_signature(
        abs(current - when.timestamp()) <= tolerance, "signature timestamp too old or too new"
    )


def require_signature(ok: bool, what: str) -> None:
    """Raise ``SignatureError(what)`` unless ``ok``: the one way adapters refuse a request."""
    if not ok:
        raise SignatureError(what)


def reject(field_name: str, message: str, status_code: int = 422) -> EventRejected:
    """An ``EventRejected`` naming the payload field that could not be mapped."""
    return EventRejected(status_code, f"{field_name}: {message}")


# Reading payload values -------------------------------------------------------------------


def text_field(value: Any, limit: int = MAX_FIELD_CHARS) -> str | None:
    """A payload value as stripped text (numbers too), cut to ``limit``; None when empty."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] if value else None


def object_field(value: Any) -> dict[str, Any]:
    """A payload value that should be a JSON object, or an empty one when it is not."""
    return value if isinstance(value, dict) else {}


def custom_fields(value: Any) -> dict[str, str]:
    """Custom fields as text, from a ``{name: value}`` object or a ``[{_id|name, value}]`` list."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                key = item.get("_id") or item.get("field") or item.get("name") or item.get("key")
                pairs.append((key, item.get("value")))
    fields: dict[str, str] = {}
    for key, raw in pairs:
        name, text = text_field(key, 100), text_field(raw)
        if name and text and len(fields) < MAX_CUSTOM_FIELDS:
            fields[name] = text
    return fields


def email_field(value: Any) -> str | None:
    """An email: a string, or the first ``address`` of a list of ``{address}`` objects
    (Rocket.Chat's ``visitorEmails``); None when it is not an email address."""
    if isinstance(value, list):
        value = next(
            (v.get("address") for v in value if isinstance(v, dict) and v.get("address")), None
        )
    text = text_field(value, 320)
    return text if text and is_email(text) else None


def date_field(value: Any) -> datetime | None:
    """A date as senders write it: ISO 8601 text, ``{"$date": ms}`` (Rocket.Chat), or a number
    of milliseconds (or of seconds, when it is too small to be milliseconds)."""
    if isinstance(value, dict):
        value = value.get("$date")
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            # Before 1973 in milliseconds is after 2001 in seconds: senders mean the latter.
            seconds = value / 1000 if value > 100_000_000_000 else value
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
