"""Crisp: its web hooks in, one private note in the conversation out.

**The hooks** (``{"website_id", "event", "data": {...}, "timestamp"}``):

- ``session:set_data``: the chatbox stored session data; when ``data.data`` holds
  ``CRISP_VISITOR_FIELD`` (``$crisp.push(["set", "session:data", [[["datafast_visitor_id",
  id]]]])`` on the site), that is the visitor id. Session data without it is ignored (200), so
  it does not take the conversation's one event.
- ``message:send`` from the visitor (``data.from == "user"``): the conversation has started;
  the worker reads the conversation's meta (``GET .../conversation/{session_id}/meta``, its
  ``data`` and ``email``) for the visitor id (``Event.lookup = "crisp"``). Operator messages
  are ignored.

**One note per conversation, whichever hook comes first.** Every event of a conversation has
the id ``crisp:{session_id}``; the first one queued takes it and all later hooks of the
conversation (further messages, more session data, Crisp's retries) are answered duplicate.
A ``message:send`` that arrives first still finds the visitor id when the chatbox set it
before the visitor typed (the normal order: set it when the chatbox loads), since the worker
reads the meta a moment later; a conversation whose session data never gets the id gets the
short "no journey" note saying how to set it.

**Verification.** Plugin hooks carry ``X-Crisp-Signature``: hex HMAC-SHA256, keyed with the
plugin's signing secret, of ``"[" + X-Crisp-Request-Timestamp + ";" + body + "]"``, where the
official library's body is ``JSON.stringify`` of the parsed payload, i.e. re-serialized
compact JSON (``js_json``), not necessarily the bytes received; both are accepted. Website
hooks are not signed: their URL carries ``?key=``, compared in constant time. Both secrets go
in ``CRISP_WEBHOOK_KEY`` (comma-separated when both, or during a rotation). A hook for another
website than ``CRISP_WEBSITE_ID`` is ignored.

**The note**: ``POST /v1/website/{website_id}/conversation/{session_id}/message``
``{"type": "note", "from": "operator", "origin": "chat", "content": ...}`` with Basic auth
``CRISP_IDENTIFIER:CRISP_KEY`` and ``X-Crisp-Tier`` (``CRISP_TOKEN_TIER``). Notes are internal:
the visitor never sees them. Exactly once: a redelivered task pages back through
``GET .../messages`` (``timestamp_before``) for a note holding the event's marker.

Limits: Crisp rate-limits in layers without numbers; 429 and ``420 Enhance Your Calm`` pause
every worker (``worker/http.py``), with ``Retry-After`` when given.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

from config import Settings
from worker.errors import BadResponse, Rejected
from worker.events import MAX_ID_LENGTH, Event, is_uuid
from worker.http import ServiceClient, UpstreamResponse, secret_text
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
    secret_matches,
    secret_values,
    signed_by_any,
    text_field,
)
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.sink import (
    Completion,
    DeliveryResult,
    Note,
    Sink,
    looked_up,
    marker_in_pages,
    unless_missing,
)

EVENT_ID_PREFIX = "crisp:"


# JSON.stringify ---------------------------------------------------------------------------


def _js_number(value: float) -> str:
    """A number as JavaScript's ``Number.prototype.toString`` writes it (ECMA-262
    Number::toString): shortest round-trip digits, exponent only below 1e-6 or from 1e21.
    Hand-written: no maintained Python library reproduces it, and Python's ``repr`` differs
    (``1e-07``, ``1e+16``, ``1.0``)."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    leading = len(digits) - len(digits.lstrip("0"))
    # n: where the decimal point stands relative to the significant digits (ECMA-262's n).
    n = len(whole) + int(exponent or 0) - leading
    digits = digits.strip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exp = n - 1
    exp_text = f"e+{exp}" if exp >= 0 else f"e-{-exp}"
    return sign + (digits if k == 1 else digits[0] + "." + digits[1:]) + exp_text


def js_json(value: Any) -> str:
    """``JSON.stringify(value)`` of a parsed JSON value, as Crisp's Node library signs it.

    Compact separators, keys in their received order, non-ASCII unescaped (as ``json.dumps``
    with ``ensure_ascii=False`` writes strings); numbers as JavaScript writes them, integers
    beyond 2**53 rounded to doubles as ``JSON.parse`` would have read them.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value) if abs(value) <= 2**53 else _js_number(float(value))
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(js_json(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            json.dumps(str(k), ensure_ascii=False) + ":" + js_json(v) for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


# The hooks --------------------------------------------------------------------------------


def visitor_missing_reason(field: str) -> str:
    return (
        f"no {field} in the Crisp session data; set it in the chatbox with "
        f'$crisp.push(["set", "session:data", [[["{field}", <the datafast_visitor_id cookie>]]]])'
    )


def parse_crisp_hook(payload: Any, settings: Settings, *, require_uuid: bool = True) -> Event:
    """Map a ``session:set_data`` or visitor ``message:send`` hook onto a ``livechat`` event.

    Raises ``Ignored`` for other events, operator messages, session data without the visitor
    field and other websites; ``EventRejected`` for a hook without a session.
    """
    if not isinstance(payload, dict):
        raise reject("body", "the Crisp hook body must be a JSON object")
    kind = text_field(payload.get("event"), 100)
    data = payload.get("data")
    if kind not in ("session:set_data", "message:send"):
        raise Ignored(f"Crisp event {kind!r} is not handled (session:set_data, message:send)")
    if not isinstance(data, dict):
        raise reject("data", "missing; Crisp sends the event data there")
    website_id = text_field(payload.get("website_id")) or text_field(data.get("website_id"))
    if settings.crisp_website_id and website_id and website_id != settings.crisp_website_id:
        raise Ignored(f"the hook is for Crisp website {website_id[:60]}, not CRISP_WEBSITE_ID")
    session_id = text_field(data.get("session_id"), MAX_ID_LENGTH)
    if not session_id:
        raise reject("data.session_id", "missing; Crisp names the conversation there")
    if len(session_id) > MAX_ID_LENGTH - len(EVENT_ID_PREFIX):
        raise reject("data.session_id", "too long for a Crisp session id")

    field = settings.crisp_visitor_field
    visitor_id: str | None = None
    name: str | None = None
    if kind == "session:set_data":
        session_data = data.get("data")
        visitor_id = text_field(object_field(session_data).get(field))
        if not visitor_id:
            raise Ignored(f"session data without {field}")
        if require_uuid and not is_uuid(visitor_id):
            raise reject(f"data.data.{field}", f"{visitor_id[:60]!r} is not a UUID", 400)
    else:
        if data.get("from") != "user":
            raise Ignored("not a message from the visitor")
        user = data.get("user")
        name = text_field(object_field(user).get("nickname"))
    return Event(
        id=f"{EVENT_ID_PREFIX}{session_id}",
        type="livechat",
        ticket_id=session_id,
        visitor_id=visitor_id,
        name=name,
        inbound="crisp",
        # A message: the session data is read in the worker, whether or not it is set yet.
        lookup=None if visitor_id else "crisp",
        occurred_at=date_field(payload.get("timestamp")),
    )


class CrispWebhook(WebhookAdapter):
    """``POST /v1/webhooks/crisp``: plugin hooks signed with ``X-Crisp-Signature``, website
    hooks with ``?key=`` in the URL (both ``CRISP_WEBHOOK_KEY``)."""

    system = "crisp"
    label = "Crisp"
    # Crisp retries a hook that is not answered 200 (X-Delivery-Attempt-Count).
    accepted_status = 200

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.crisp_webhook_key is not None

    def verify(self, request: WebhookRequest) -> None:
        secrets = secret_values(self.settings.crisp_webhook_key)
        signature = request.headers.get("x-crisp-signature")
        if signature is None:
            require_signature(
                secret_matches(request.query.get("key", ""), secrets),
                "bad or missing ?key= (website hook)",
            )
            return
        timestamp = request.headers.get("x-crisp-request-timestamp", "").strip()
        require_signature(bool(timestamp), "X-Crisp-Request-Timestamp missing")
        if self.settings.crisp_timestamp_tolerance:
            # Milliseconds (Crisp's unit) or seconds; CRISP_TIMESTAMP_TOLERANCE=0 turns it off.
            require_fresh_timestamp(timestamp, self.settings.crisp_timestamp_tolerance)
        bodies = [request.body]
        # Not JSON: only the bytes as received can match.
        with contextlib.suppress(ValueError, TypeError, RecursionError):
            bodies.append(js_json(json.loads(request.body)).encode())
        ok = any(
            signed_by_any(secrets, b"[" + timestamp.encode() + b";" + body + b"]", signature)
            for body in bodies
        )
        require_signature(ok, "bad X-Crisp-Signature")

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        return [parse_crisp_hook(payload, self.settings, require_uuid=self.require_uuid)]


# The sink ---------------------------------------------------------------------------------


def crisp_configured(settings: Settings) -> bool:
    return (
        settings.crisp_website_id is not None
        and settings.crisp_identifier is not None
        and settings.crisp_key is not None
    )


def crisp_data(response: UpstreamResponse) -> Any:
    """The ``data`` of Crisp's ``{"error": false, "reason": ..., "data": ...}`` envelope."""
    body = response.json()
    if not isinstance(body, dict):
        raise BadResponse("answered without a JSON object", service=response.service)
    if body.get("error") is True:
        raise Rejected(
            f"{response.status_code} {body.get('reason') or 'error'}",
            service=response.service,
            status_code=response.status_code,
        )
    return body.get("data")


class CrispSink(Sink):
    name = "crisp"
    label = "Crisp"
    # Crisp notes are chat text (its own light markup); the plain-text note reads well there.
    note_format = "text"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return crisp_configured(settings)

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "crisp",
            str(settings.crisp_base_url),
            settings=settings,
            limiter=limiter,
            rate=settings.crisp_rate_limit,
            auth=(settings.crisp_identifier or "", secret_text(settings.crisp_key)),
            headers={"X-Crisp-Tier": settings.crisp_token_tier, "Accept": "application/json"},
            auth_hint=(
                "check CRISP_IDENTIFIER, CRISP_KEY, CRISP_TOKEN_TIER and the token's "
                "conversation scopes"
            ),
        )

    def _conversation(self, event: Event) -> str:
        website = self.settings.crisp_website_id
        return f"v1/website/{website}/conversation/{event.ticket_id}"

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.ticket_id:
            return "no Crisp session id (ticket_id) on the event"
        # A session id means nothing elsewhere: only the Crisp hooks' own events.
        return self.not_from_own_webhook(event) or super().skip_reason(event, context)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        body = {"type": "note", "from": "operator", "origin": "chat", "content": note.body}
        data = crisp_data(
            self.http.request("POST", f"{self._conversation(event)}/message", json_body=body)
        )
        fingerprint = object_field(data).get("fingerprint")
        return DeliveryResult(
            external_id=str(fingerprint) if fingerprint is not None else None,
            detail=f"conversation {event.ticket_id}",
        )

    def _message_pages(self, event: Event) -> Iterator[list[Any]]:
        path = f"{self._conversation(event)}/messages"
        params: dict[str, str] | None = None
        while True:
            messages = crisp_data(self.http.request("GET", path, params=params))
            if not isinstance(messages, list):
                raise BadResponse("answered messages without a list", service=self.name)
            yield [m for m in messages if isinstance(m, dict) and m.get("type") == "note"]
            stamps = [
                m["timestamp"]
                for m in messages
                if isinstance(m, dict) and isinstance(m.get("timestamp"), int | float)
            ]
            if not stamps:
                return
            # The next (older) batch: everything before the oldest message of this one.
            params = {"timestamp_before": str(int(min(stamps)))}

    def already_delivered(self, event: Event) -> bool | None:
        return marker_in_pages(self._message_pages(event), event.marker, ("content",))

    def complete_event(self, event: Event) -> Completion:
        """The visitor id from the conversation's session data; the email and nickname."""
        field = self.settings.crisp_visitor_field
        meta = unless_missing(
            lambda: crisp_data(self.http.request("GET", f"{self._conversation(event)}/meta"))
        )
        if meta is None:
            return Completion(event, f"Crisp has no conversation {event.ticket_id}")
        if not isinstance(meta, dict):
            raise BadResponse("answered the meta without an object", service=self.name)
        return looked_up(
            event,
            text_field(object_field(meta.get("data")).get(field)),
            missing=visitor_missing_reason(field),
            found=f"the conversation's session data {field}",
            email=email_field(meta.get("email")),
            name=text_field(meta.get("nickname")),
        )

    def check(self) -> str:
        website = self.settings.crisp_website_id
        crisp_data(self.http.request("GET", f"v1/website/{website}/conversations/1"))
        return f"{self.label} answered at {self.http.base_url} for website {website}"


INTEGRATION = Integration(name="crisp", label="Crisp", sink=CrispSink, webhook=CrispWebhook)
