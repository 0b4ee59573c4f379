"""Inbound events: the wire model of ``POST /v1/events`` and visitor-id extraction.

Everything here is pure: the web layer reads bytes and headers, these functions decide.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

EventType = Literal["signup", "support_ticket", "livechat", "payment"]

VISITOR_COOKIE = "datafast_visitor_id"
MAX_ID_LENGTH = 200
MAX_EMAIL_LENGTH = 254
# Where an event came from when it was not a vendor's webhook: ``POST /v1/events``.
API_INBOUND = "api"


def is_email(value: str) -> bool:
    """A syntax check only: one ``@``, a non-empty local part and domain, no whitespace, at
    most 254 characters.

    Deliberately looser than ``email-validator``: the sender's own app accepted the address,
    and refusing it (``qa@shop.test``, ``ops@intranet.local``) would lose the event, since a
    4xx is final for a sender. Deliverability is the CRM's business, not ours.
    """
    if len(value) > MAX_EMAIL_LENGTH or value.count("@") != 1:
        return False
    local, _, domain = value.partition("@")
    return bool(local) and bool(domain) and not any(c.isspace() for c in value)


class Payment(BaseModel):
    """What a buyer paid, on a ``payment`` event (Stripe): amount in major units."""

    model_config = ConfigDict(frozen=True)

    amount: float | None = None
    currency: str | None = None
    # What was bought: the product or price names, or the checkout's description.
    description: str | None = None


class EventRejected(Exception):
    """An inbound event that must be refused; ``status_code`` is the HTTP answer (400/422)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class InboundEvent(BaseModel):
    """The JSON body of ``POST /v1/events`` as the contract defines it."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)

    id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    type: EventType
    datafast_visitor_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    visitor_id_alias: str | None = Field(default=None, alias="visitorId", max_length=MAX_ID_LENGTH)
    cookie: str | None = Field(default=None, max_length=16 * 1024)
    email: str | None = Field(default=None, max_length=MAX_EMAIL_LENGTH)
    name: str | None = Field(default=None, max_length=500)
    user_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    ticket_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    room_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    # The Rocket.Chat livechat visitor ``_id``: lets a livechat event name only the chat visitor.
    livechat_visitor_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    occurred_at: datetime | None = None
    # Which DataFast website (a name from DATAFAST_WEBSITES) the visitor id belongs to.
    website: str | None = Field(default=None, max_length=100)

    @field_validator("email")
    @classmethod
    def _email_syntax(cls, value: str | None) -> str | None:
        if value is not None and not is_email(value):
            raise ValueError("not an email address (one @, a local part and a domain, no spaces)")
        return value

    @field_validator("ticket_id", "user_id", "room_id", "livechat_visitor_id", mode="before")
    @classmethod
    def _number_to_text(cls, value: Any) -> Any:
        # Helpdesks send ticket ids as numbers; they are identifiers, so keep them as text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class Event(BaseModel):
    """An accepted event, as stored in Redis and handed to tasks and sinks."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: EventType
    visitor_id: str | None = None
    email: str | None = None
    name: str | None = None
    user_id: str | None = None
    ticket_id: str | None = None
    room_id: str | None = None
    livechat_visitor_id: str | None = None
    # Custom fields sent by Rocket.Chat with the visitor, when the event came from its webhook.
    livechat_custom_fields: dict[str, str] = Field(default_factory=dict)
    occurred_at: datetime | None = None
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # The system that sent it: ``api`` (POST /v1/events) or a webhook adapter's name. A
    # helpdesk or chat sink annotates ``ticket_id`` / ``room_id`` only in its own system.
    inbound: str = API_INBOUND
    # A system whose API the worker must ask first (``Sink.complete_event``): the webhook
    # lacked the visitor id or the email.
    lookup: str | None = None
    # Ids in the inbound system that its sink needs (contact, customer, conversation parts).
    external: dict[str, str] = Field(default_factory=dict)
    # Why no journey can be fetched, known at the door (a conversation without the visitor
    # field): the sinks still get a short note saying so and how to fix it.
    missing_reason: str | None = None
    website: str | None = None
    payment: Payment | None = None

    @model_validator(mode="before")
    @classmethod
    def _livechat_lookup(cls, data: Any) -> Any:
        # A livechat event that names only the chat visitor (from POST /v1/events, the
        # Rocket.Chat webhook, or stored by an earlier version): Rocket.Chat is asked first.
        if (
            isinstance(data, dict)
            and not data.get("lookup")
            and not data.get("visitor_id")
            and data.get("livechat_visitor_id")
        ):
            return {**data, "lookup": "rocketchat"}
        return data

    @property
    def marker(self) -> str:
        """The text every note carries so a sink can be searched for this event's effect."""
        return f"visitor-enrich:{self.id}"


def visitor_id_from_cookie(cookie_header: str) -> str | None:
    """Return ``datafast_visitor_id`` from a raw ``Cookie`` header, or None.

    Written by hand rather than with ``http.cookies.SimpleCookie``: that parser gives up on
    the whole header at the first cookie it finds malformed, and real browsers send such
    cookies (set by other scripts) next to ours.
    """
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name.strip() == VISITOR_COOKIE:
            value = value.strip().strip('"')
            return value or None
    return None


def extract_visitor_id(event: InboundEvent) -> str | None:
    """The DataFast visitor id from ``datafast_visitor_id``, ``visitorId`` or ``cookie``."""
    for candidate in (event.datafast_visitor_id, event.visitor_id_alias):
        if candidate:
            return candidate
    if event.cookie:
        return visitor_id_from_cookie(event.cookie)
    return None


# A UUID as text: 32 hex digits, bare or in the usual 8-4-4-4-12 groups. A regular expression
# rather than ``uuid.UUID``, which also takes braces, ``urn:uuid:`` and hyphens anywhere, and
# costs four times as much on every inbound event.
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_uuid(value: str) -> bool:
    return _UUID_TEXT.fullmatch(value) is not None


def check_website(website: str, websites: Collection[str]) -> None:
    """Refuse (422) a website name that ``DATAFAST_WEBSITES`` does not define."""
    if website not in websites:
        known = ", ".join(sorted(websites)) or "none: DATAFAST_WEBSITES is not set"
        raise EventRejected(422, f"website: unknown website {website[:60]!r}; known: {known}")


def _schema_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(p) for p in error["loc"]) or "body"
        if location == "visitor_id_alias":
            location = "visitorId"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def parse_event(
    payload: Any,
    *,
    header_id: str | None,
    require_uuid: bool = True,
    fallback_id: str | None = None,
    websites: Collection[str] = (),
) -> Event:
    """Validate an inbound JSON payload into an ``Event`` or raise ``EventRejected``.

    ``header_id`` is the ``webhook-id`` header, used when the body has no ``id``;
    ``fallback_id`` is used when neither is given (unsigned development mode only).
    ``require_uuid`` is the source's rule for visitor ids (DataFast: UUID v4);
    ``websites`` the names an event may give in ``website`` (``DATAFAST_WEBSITES``).
    """
    if not isinstance(payload, dict):
        raise EventRejected(422, "body: the event must be a JSON object")
    try:
        inbound = InboundEvent.model_validate(payload)
    except ValidationError as exc:
        raise EventRejected(422, _schema_message(exc)) from None

    event_id = inbound.id or header_id or fallback_id
    if not event_id:
        raise EventRejected(422, "id: missing; send it in the body or the webhook-id header")

    visitor_id = extract_visitor_id(inbound)
    if inbound.type == "livechat":
        if not visitor_id and not inbound.livechat_visitor_id:
            raise EventRejected(
                422, "datafast_visitor_id: missing (or send livechat_visitor_id for a livechat)"
            )
        if not inbound.room_id:
            raise EventRejected(422, "room_id: required for a livechat event")
    elif not visitor_id:
        raise EventRejected(
            422, "datafast_visitor_id: missing; send datafast_visitor_id, visitorId or cookie"
        )
    if inbound.type == "support_ticket" and not inbound.ticket_id:
        raise EventRejected(422, "ticket_id: required for a support_ticket event")
    if visitor_id and require_uuid and not is_uuid(visitor_id):
        raise EventRejected(400, f"datafast_visitor_id: {visitor_id[:60]!r} is not a UUID")
    if inbound.website is not None:
        check_website(inbound.website, websites)

    return Event(
        id=event_id,
        type=inbound.type,
        visitor_id=visitor_id,
        email=inbound.email,
        name=inbound.name,
        user_id=inbound.user_id,
        ticket_id=inbound.ticket_id,
        room_id=inbound.room_id,
        livechat_visitor_id=inbound.livechat_visitor_id,
        occurred_at=inbound.occurred_at,
        website=inbound.website,
    )
