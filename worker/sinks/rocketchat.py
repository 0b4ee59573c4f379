"""Rocket.Chat: one message with the journey in the livechat room, from the integration user.

``rocketchat_client`` is the one place a Rocket.Chat client is built (``X-Auth-Token`` and
``X-User-Id``, the shared ``ROCKETCHAT_RATE_LIMIT``); the sink and the livechat visitor lookup
(``worker.livechat.resolve_visitor_id``) both use it.

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
from typing import Any

from config import Settings
from worker.errors import AuthFailed, BadResponse, Rejected
from worker.events import Event
from worker.http import ServiceClient, UpstreamResponse, secret_text
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.render import render_rocketchat_message
from worker.sinks.base import DeliveryResult, Sink

# The alphabet and length of Rocket.Chat's own ids (Meteor's Random.id()).
_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"
_ID_LENGTH = 17


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
    wants_empty_context = True  # the agent should know that no journey was found

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return rocketchat_configured(settings)

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return rocketchat_client(settings, limiter)

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.room_id:
            return "no room_id on the event"
        return super().skip_reason(event, context)

    def deliver(self, event: Event, context: JourneyContext) -> DeliveryResult:
        mid = message_id(event)
        body = {
            "message": {
                "_id": mid,
                "rid": event.room_id,
                "msg": render_rocketchat_message(event, context),
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

    def check(self) -> str:
        data = rocketchat_json(self.http.request("GET", "api/v1/me"))
        user = data.get("username") or data.get("_id") or "the integration user"
        return f"{self.label} answered at {self.http.base_url} as {user}"
