"""Rocket.Chat livechat as a source of events: its webhook payload, and the visitor lookup.

**The webhook** (Administration → Omnichannel → Webhooks) posts JSON with a ``type``
(``LivechatSessionStart``, ``LivechatSessionQueued``, ``LivechatSessionTaken``, ``Message``,
``LivechatSession`` at the end, ...), the room id as ``_id`` and the ``visitor`` (``_id``,
``token``, ``name``, ``email``, ``customFields``). ``parse_rocketchat_webhook`` maps any of
them onto one ``livechat`` event whose id is ``rc:{room _id}``: a chat gets ONE journey note,
whichever of its webhooks arrives first, and every later webhook for the room (further
messages, the session end) and every Rocket.Chat retry is a duplicate, answered 200 and not
queued again. ``LivechatOfflineMessage`` has no room to post into and is refused (422).

**The lookup**: an event that names only the livechat visitor is completed in the worker by
``resolve_visitor_id``: ``GET /api/v1/livechat/visitor.info?visitorId=`` and the DataFast id
from the visitor's ``livechatData`` (or ``customFields``) under ``ROCKETCHAT_VISITOR_FIELD``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import EmailStr, TypeAdapter, ValidationError

from config import Settings
from worker.errors import AuthFailed, BadResponse, Rejected, VisitorNotFound
from worker.events import MAX_ID_LENGTH, Event, EventRejected, is_uuid
from worker.http import ServiceClient
from worker.sinks.rocketchat import (
    RocketChatSink,
    rocketchat_client,
    rocketchat_configured,
    rocketchat_json,
)
from worker.sources import SOURCES

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

EVENT_ID_PREFIX = "rc:"
MAX_CUSTOM_FIELDS = 50
MAX_FIELD_CHARS = 500

_EMAIL = TypeAdapter(EmailStr)


# The webhook ------------------------------------------------------------------------------


def _text(value: Any, limit: int = MAX_FIELD_CHARS) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] if value else None


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
        name, text = _text(key, 100), _text(raw)
        if name and text and len(fields) < MAX_CUSTOM_FIELDS:
            fields[name] = text
    return fields


def _email(value: Any) -> str | None:
    """The visitor's email: a string, or the first of ``visitorEmails: [{address}]``."""
    if isinstance(value, list):
        value = next(
            (v.get("address") for v in value if isinstance(v, dict) and v.get("address")), None
        )
    text = _text(value, 320)
    if not text:
        return None
    try:
        return str(_EMAIL.validate_python(text))
    except ValidationError:
        return None


def _date(value: Any) -> datetime | None:
    """A Rocket.Chat date: ISO 8601 text, ``{"$date": ms}`` or milliseconds."""
    if isinstance(value, dict):
        value = value.get("$date")
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def parse_rocketchat_webhook(payload: Any, settings: Settings) -> Event:
    """Map a Rocket.Chat livechat webhook payload onto a ``livechat`` event.

    Raises ``EventRejected`` (400/422) for a payload that names no room or visitor, or whose
    visitor id custom field is not a UUID while the configured source needs one.
    """
    if not isinstance(payload, dict):
        raise EventRejected(422, "body: the Rocket.Chat webhook payload must be a JSON object")
    kind = _text(payload.get("type"), 100)
    if kind == "LivechatOfflineMessage":
        raise EventRejected(
            422,
            "type: LivechatOfflineMessage has no livechat room to post the journey into; "
            "untick offline messages in the Rocket.Chat webhook settings",
        )
    room_id = _text(payload.get("_id"), MAX_ID_LENGTH)
    if not room_id:
        raise EventRejected(422, "_id: missing; Rocket.Chat sends the livechat room id there")
    if len(room_id) > MAX_ID_LENGTH - len(EVENT_ID_PREFIX):
        raise EventRejected(422, "_id: too long for a Rocket.Chat room id")
    visitor = payload.get("visitor")
    if not isinstance(visitor, dict):
        raise EventRejected(422, "visitor: missing; Rocket.Chat sends the livechat visitor there")

    field = settings.rocketchat_visitor_field
    fields = custom_fields(visitor.get("customFields"))
    # The room's own custom fields (``customFields`` at the top) may carry the id too.
    visitor_id = fields.get(field) or custom_fields(payload.get("customFields")).get(field)
    livechat_visitor_id = _text(visitor.get("_id"), MAX_ID_LENGTH)
    if not visitor_id and not livechat_visitor_id:
        raise EventRejected(
            422, f"visitor._id: missing, and no {field} in visitor.customFields either"
        )
    if visitor_id and SOURCES[settings.source].requires_uuid and not is_uuid(visitor_id):
        raise EventRejected(400, f"visitor.customFields.{field}: {visitor_id[:60]!r} is not a UUID")

    messages = payload.get("messages")
    first_message = messages[0] if isinstance(messages, list) and messages else {}
    occurred_at = _date(payload.get("createdAt")) or (
        _date(first_message.get("ts")) if isinstance(first_message, dict) else None
    )
    return Event(
        id=f"{EVENT_ID_PREFIX}{room_id}",
        type="livechat",
        visitor_id=visitor_id,
        email=_email(visitor.get("email") or visitor.get("visitorEmails")),
        name=_text(visitor.get("name")),
        room_id=room_id,
        livechat_visitor_id=livechat_visitor_id,
        livechat_custom_fields=fields,
        occurred_at=occurred_at,
    )


# The visitor lookup -----------------------------------------------------------------------


def visitor_field(visitor: dict[str, Any], field: str) -> str | None:
    """The value of custom field ``field`` on a visitor from ``visitor.info``, or None."""
    for key in ("livechatData", "customFields"):
        value = custom_fields(visitor.get(key)).get(field)
        if value:
            return value
    return None


def resolve_visitor_id(
    client: ServiceClient, settings: Settings, livechat_visitor_id: str
) -> str | None:
    """The DataFast visitor id stored on a livechat visitor, or None when it has none.

    Raises ``VisitorNotFound`` when Rocket.Chat does not know the visitor, ``AuthFailed`` for
    bad credentials, and the other ``worker.errors`` types as ``ServiceClient`` maps them.
    """
    params = {"visitorId": livechat_visitor_id}
    try:
        try:
            response = client.request("GET", "api/v1/livechat/visitor.info", params=params)
        except Rejected as exc:
            if exc.status_code != 404 or isinstance(exc, AuthFailed):
                raise
            # Newer servers name it visitors.info; older ones have only visitor.info.
            response = client.request("GET", "api/v1/livechat/visitors.info", params=params)
        body = rocketchat_json(response)
    except AuthFailed as exc:
        raise exc.with_hint("check ROCKETCHAT_USER_ID and ROCKETCHAT_AUTH_TOKEN") from None
    except Rejected as exc:
        if "not-found" in exc.message or "not found" in exc.message.lower():
            raise VisitorNotFound(
                f"no livechat visitor {livechat_visitor_id[:60]!r} ({exc.message})",
                service=exc.service,
                status_code=exc.status_code,
            ) from None
        raise
    visitor = body.get("visitor")
    if not isinstance(visitor, dict):
        raise BadResponse("answered visitor.info without a visitor object", service=client.service)
    return visitor_field(visitor, settings.rocketchat_visitor_field)


def complete_livechat_event(rt: Runtime, event: Event) -> tuple[Event, str | None]:
    """Fill in ``visitor_id`` of a livechat event that names only the chat visitor.

    Returns the completed event and None, or the event unchanged and the reason no journey can
    be fetched. The completed event is stored, so ``GET /v1/events/{id}`` shows the id and a
    redelivered task does not ask Rocket.Chat again.
    """
    assert event.livechat_visitor_id is not None
    settings = rt.settings
    if not rocketchat_configured(settings):
        return event, (
            "the event names only the livechat visitor and Rocket.Chat is not configured "
            "(ROCKETCHAT_BASE_URL, ROCKETCHAT_USER_ID, ROCKETCHAT_AUTH_TOKEN)"
        )
    sink = rt.sinks.get(RocketChatSink.name)
    client = sink.http if sink is not None else rocketchat_client(settings, rt.limiter)
    try:
        visitor_id = resolve_visitor_id(client, settings, event.livechat_visitor_id)
    except VisitorNotFound as exc:
        return event, f"Rocket.Chat has {exc.message}"
    field = settings.rocketchat_visitor_field
    if not visitor_id:
        return event, f"no {field} on livechat visitor"
    if rt.source_class.requires_uuid and not is_uuid(visitor_id):
        return event, f"the livechat visitor's {field} {visitor_id[:60]!r} is not a UUID"
    completed = event.model_copy(update={"visitor_id": visitor_id})
    if rt.store.load_event(event.id) is not None:  # not for the CLI's unstored events
        rt.store.replace_event(completed)
        rt.store.add_step(event.id, "livechat_visitor_resolved", field)
    log.info("livechat visitor resolved", extra={"event_id": event.id})
    return completed, None
