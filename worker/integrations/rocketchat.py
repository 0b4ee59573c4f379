"""Rocket.Chat livechat: its webhook in, the visitor lookup, and one message in the room out.

**The webhook** (Administration → Omnichannel → Webhooks) posts JSON with a ``type``
(``LivechatSessionStart``, ``LivechatSessionQueued``, ``LivechatSessionTaken``, ``Message``,
``LivechatSession`` at the end, ...), the room id as ``_id`` and the ``visitor`` (``_id``,
``token``, ``name``, ``email``, ``customFields``). ``parse_rocketchat_webhook`` maps any of
them onto one ``livechat`` event whose id is ``rc:{room _id}``: a chat gets ONE journey note,
whichever of its webhooks arrives first, and every later webhook for the room (further
messages, the session end) and every Rocket.Chat retry is a duplicate, answered 200 and not
queued again. ``LivechatOfflineMessage`` has no room to post into and is refused (422).

**The lookup**: an event that names only the livechat visitor is completed in the worker by
``RocketChatSink.complete_event`` (``resolve_visitor_id``):
``GET /api/v1/livechat/visitor.info?visitorId=`` and the DataFast id from the visitor's
``livechatData`` (or ``customFields``) under ``ROCKETCHAT_VISITOR_FIELD``.

**The message**: ``rocketchat_client`` is the one place a Rocket.Chat client is built
(``X-Auth-Token`` and ``X-User-Id``, the shared ``ROCKETCHAT_RATE_LIMIT``); the sink and the
visitor lookup both use it.

Exactly once: the message is sent with ``chat.sendMessage`` and a message ``_id`` derived from
the event id and the room (Rocket.Chat lets a client choose it; its own clients do, to send
optimistically). ``already_delivered`` asks ``chat.getMessage?msgId=`` for that id, which
answers 400 ``success: false`` when there is no such message; a resend with the same id cannot
create a second message either. The visitor token that ``livechat/messages.history`` needs is
no longer given out by newer servers, so the room history is not used.

Errors: the 400 ``{"success": false, "error": "...", "errorType": "invalid-params"}`` and 401
``{"status": "error", "message": "You must be logged in to do this."}`` envelopes become the
reason (``worker.http.error_message``); a 200 with ``success: false`` is an error too.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from config import Settings
from worker.errors import AuthFailed, BadResponse, Rejected, VisitorNotFound
from worker.events import MAX_ID_LENGTH, Event, EventRejected, is_uuid
from worker.http import ServiceClient, UpstreamResponse, secret_text
from worker.inbound import (
    WebhookAdapter,
    WebhookRequest,
    custom_fields,
    date_field,
    email_field,
    require_signature,
    text_field,
)
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.note import Limits, fit, not_found_text, note_sections, title
from worker.ratelimit import SharedRateLimiter
from worker.signature import matches_any
from worker.sink import Completion, DeliveryResult, Note, Sink
from worker.text import cut

log = logging.getLogger(__name__)

EVENT_ID_PREFIX = "rc:"
# Rocket.Chat's default Message_MaxAllowedSize is 5000; stay well under it.
MESSAGE_MAX_CHARS = 4_000
KEY_PAGES = 5
# The alphabet and length of Rocket.Chat's own ids (Meteor's Random.id()).
_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"
_ID_LENGTH = 17


# The webhook ------------------------------------------------------------------------------


def parse_rocketchat_webhook(
    payload: Any, settings: Settings, *, require_uuid: bool = True
) -> Event:
    """Map a Rocket.Chat livechat webhook payload onto a ``livechat`` event.

    Raises ``EventRejected`` (400/422) for a payload that names no room or visitor, or whose
    visitor id custom field is not a UUID while the configured source needs one.
    """
    if not isinstance(payload, dict):
        raise EventRejected(422, "body: the Rocket.Chat webhook payload must be a JSON object")
    kind = text_field(payload.get("type"), 100)
    if kind == "LivechatOfflineMessage":
        raise EventRejected(
            422,
            "type: LivechatOfflineMessage has no livechat room to post the journey into; "
            "untick offline messages in the Rocket.Chat webhook settings",
        )
    room_id = text_field(payload.get("_id"), MAX_ID_LENGTH)
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
    livechat_visitor_id = text_field(visitor.get("_id"), MAX_ID_LENGTH)
    if not visitor_id and not livechat_visitor_id:
        raise EventRejected(
            422, f"visitor._id: missing, and no {field} in visitor.customFields either"
        )
    if visitor_id and require_uuid and not is_uuid(visitor_id):
        raise EventRejected(400, f"visitor.customFields.{field}: {visitor_id[:60]!r} is not a UUID")

    messages = payload.get("messages")
    first_message = messages[0] if isinstance(messages, list) and messages else {}
    occurred_at = date_field(payload.get("createdAt")) or (
        date_field(first_message.get("ts")) if isinstance(first_message, dict) else None
    )
    return Event(
        id=f"{EVENT_ID_PREFIX}{room_id}",
        type="livechat",
        visitor_id=visitor_id,
        email=email_field(visitor.get("email") or visitor.get("visitorEmails")),
        name=text_field(visitor.get("name")),
        room_id=room_id,
        livechat_visitor_id=livechat_visitor_id,
        livechat_custom_fields=fields,
        inbound="rocketchat",
        occurred_at=occurred_at,
    )


class RocketChatWebhook(WebhookAdapter):
    """``POST /v1/webhooks/rocketchat``: authenticated by ``X-RocketChat-Livechat-Token``."""

    system = "rocketchat"
    label = "Rocket.Chat"
    # Rocket.Chat retries anything but 200, ten times: a queued event is answered 200 too.
    accepted_status = 200

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.rocketchat_webhook_token is not None

    def verify(self, request: WebhookRequest) -> None:
        # Several tokens while one is rotated (README "Privacy").
        given = request.headers.get("x-rocketchat-livechat-token")
        require_signature(
            matches_any(given, self.settings.rocketchat_webhook_tokens),
            "bad or missing X-RocketChat-Livechat-Token",
        )

    def not_configured_message(self) -> str:
        return "bad or missing X-RocketChat-Livechat-Token"

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        return [parse_rocketchat_webhook(payload, self.settings, require_uuid=self.require_uuid)]


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


def rocketchat_configured(settings: Settings) -> bool:
    """Whether the Rocket.Chat URL and the integration user's id and token are all set."""
    return (
        settings.rocketchat_base_url is not None
        and settings.rocketchat_user_id is not None
        and settings.rocketchat_auth_token is not None
    )


def rocketchat_client(settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
    """The client for every Rocket.Chat call (room messages and the livechat visitor lookup)."""
    token = settings.rocketchat_auth_token
    return ServiceClient(
        "rocketchat",
        str(settings.rocketchat_base_url or "").rstrip("/"),
        settings=settings,
        limiter=limiter,
        rate=settings.rocketchat_rate_limit,
        headers={
            "X-Auth-Token": secret_text(token),
            "X-User-Id": settings.rocketchat_user_id or "",
            "Accept": "application/json",
        },
    )


def rocketchat_json(response: UpstreamResponse) -> dict[str, Any]:
    """The JSON object of a 2xx answer; ``success: false`` inside it is an error."""
    body = response.json()
    if not isinstance(body, dict):
        raise BadResponse(
            "answered without a JSON object",
            service=response.service,
            status_code=response.status_code,
        )
    if body.get("success") is False:
        error = body.get("error") or body.get("message") or "no reason given"
        kind = body.get("errorType")
        reason = f"{error} ({kind})" if kind and str(kind) not in str(error) else str(error)
        raise Rejected(
            f"{response.status_code} success: false: {reason}",
            service=response.service,
            status_code=response.status_code,
        )
    return body


def message_id(event: Event) -> str:
    """A Rocket.Chat-style message id that is the same on every attempt for this event."""
    digest = hashlib.sha256(f"visitor-enrich:{event.id}:{event.room_id}".encode()).digest()
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(_ID_LENGTH):
        number, index = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[index])
    return "".join(chars)


class RocketChatSink(Sink):
    name = "rocketchat"
    label = "Rocket.Chat"
    note_format = "text"  # Rocket.Chat's own markdown: *bold*, _italic_
    wants_empty_context = True  # the agent should know that no journey was found

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return rocketchat_configured(settings)

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return rocketchat_client(settings, limiter)

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.room_id:
            return "no room_id on the event"
        return self.other_system(event) or super().skip_reason(event, context)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        mid = message_id(event)
        body = {
            "message": {
                "_id": mid,
                "rid": event.room_id,
                "msg": note.body,
            }
        }
        try:
            data = rocketchat_json(
                self.http.request("POST", "api/v1/chat.sendMessage", json_body=body)
            )
        except Rejected as exc:
            # An earlier attempt may have got through: then the id is taken and this is no error.
            if isinstance(exc, AuthFailed) or not self._has_message(mid):
                raise
            return DeliveryResult(external_id=mid, detail=f"room {event.room_id} (already there)")
        message = data.get("message")
        sent_id = message.get("_id") if isinstance(message, dict) else None
        return DeliveryResult(external_id=str(sent_id or mid), detail=f"room {event.room_id}")

    def default_note(self, event: Event, context: JourneyContext) -> str:
        return render_rocketchat_message(event, context)

    def _has_message(self, mid: str) -> bool:
        try:
            data = rocketchat_json(
                self.http.request("GET", "api/v1/chat.getMessage", params={"msgId": mid})
            )
        except Rejected as exc:
            # 400 {"success": false}: no message with that id (or none this user may read).
            if isinstance(exc, AuthFailed) or exc.status_code not in (400, 404):
                raise
            return False
        message = data.get("message")
        return isinstance(message, dict) and message.get("_id") == mid

    def already_delivered(self, event: Event) -> bool | None:
        return self._has_message(message_id(event))

    def complete_event(self, event: Event) -> Completion:
        """The DataFast visitor id from the livechat visitor's custom fields."""
        field = self.settings.rocketchat_visitor_field
        if not event.livechat_visitor_id:
            return Completion(event, "the event names no livechat visitor to look up")
        try:
            visitor_id = resolve_visitor_id(self.http, self.settings, event.livechat_visitor_id)
        except VisitorNotFound as exc:
            return Completion(event, f"Rocket.Chat has {exc.message}")
        if not visitor_id:
            return Completion(event, f"no {field} on livechat visitor")
        completed = event.model_copy(update={"visitor_id": visitor_id})
        return Completion(completed, None, f"the livechat visitor's {field}")

    def check(self) -> str:
        data = rocketchat_json(self.http.request("GET", "api/v1/me"))
        user = data.get("username") or data.get("_id") or "the integration user"
        return f"{self.label} answered at {self.http.base_url} as {user}"


# Rendering -----------------------------------------------------------------------------------

_ROCKETCHAT_LEVELS = (
    Limits(pages=KEY_PAGES, items=10, chars=200),
    Limits(pages=KEY_PAGES, items=5, chars=120),
    Limits(pages=3, items=3, chars=60),
)


def _rocketchat(event: Event, ctx: JourneyContext, limits: Limits) -> str:
    lines = [f"*{title(event, ctx)}*"]
    for section in note_sections(event, ctx, limits):
        if section.key == "journey":
            lines += [f"*{f.label}:* {f.value}" for f in section.brief_facts()]
            continue
        heading = f"*{section.title}:*"
        if section.key in ("goals", "payments"):
            lines.append(f"{heading} " + "; ".join(section.items))
            continue
        facts = " · ".join(f"{f.label}: {f.value}" for f in section.full_facts())
        lines.append(f"{heading} {facts}" if facts else heading)
        if section.note:
            lines.append(f"_{section.note}_")
        lines += [f"• {item}" for item in section.items]
    lines.append(event.marker)
    return "\n".join(lines)


def render_rocketchat_message(event: Event, ctx: JourneyContext) -> str:
    """Rocket.Chat markdown for the livechat room, compact enough for an agent to skim."""
    if not ctx.found:
        return f"{not_found_text(ctx)}\n{event.marker}"
    fallback = f"*{cut(title(event, ctx), 500)}*\n{event.marker}"
    return fit(
        lambda limits: _rocketchat(event, ctx, limits),
        MESSAGE_MAX_CHARS,
        fallback,
        _ROCKETCHAT_LEVELS,
    )


INTEGRATION = Integration(
    name="rocketchat", label="Rocket.Chat", sink=RocketChatSink, webhook=RocketChatWebhook
)
