"""A fake Crisp REST API (v1) and Crisp's web hooks, signed its way.

Speaks, under ``/v1/website/{website_id}``: ``GET conversation/{session_id}/meta`` (``email``,
``nickname``, ``data``), ``POST conversation/{session_id}/message`` (a ``note`` from the
``operator``; answers ``dispatched`` with the fingerprint), ``GET
conversation/{session_id}/messages`` (the newest ``PAGE`` messages before ``timestamp_before``,
oldest first), ``GET conversations/{page}``; Basic auth ``identifier:key`` with
``X-Crisp-Tier``; the ``{"error": true, "reason": ...}`` envelope; ``429`` and ``420 Enhance
Your Calm`` when rate-limited.

``plugin_hook_headers`` signs a hook as Crisp's plugin hooks are signed (official library:
HMAC-SHA256 of ``[timestamp;JSON.stringify(body)]``, hex); ``website_hook_url`` adds ``?key=``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from typing import Any

from helpdesk_fakes import FakeSystem, json_response
from werkzeug.wrappers import Request, Response

CRISP_WEBSITE_ID = "42286ab3-b29a-4fde-8538-da0ae501d825"
CRISP_IDENTIFIER = "7c3a1f0e-crisp-identifier-supportB"
CRISP_KEY = "crispKEYsupportB5fGh2Jk8"
CRISP_HOOK_SECRET = "crisp-plugin-signing-secret-supportB-Zq3"
CRISP_WEBSITE_KEY = "crisp-website-hook-key-supportB-Wm6"
# Messages per page of the messages listing (small, so the marker check pages back).
PAGE = 5


def new_session_id() -> str:
    return f"session_{uuid.uuid4()}"


def compact(body: Any) -> bytes:
    """``JSON.stringify(body)`` for the plain values the tests send."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def set_data_hook(session_id: str, data: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "website_id": CRISP_WEBSITE_ID,
        "event": "session:set_data",
        "data": {"website_id": CRISP_WEBSITE_ID, "session_id": session_id, "data": data},
        "timestamp": now,
    }


def message_hook(
    session_id: str, *, sender: str = "user", content: str = "Hey :)"
) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "website_id": CRISP_WEBSITE_ID,
        "event": "message:send",
        "data": {
            "website_id": CRISP_WEBSITE_ID,
            "session_id": session_id,
            "type": "text",
            "content": content,
            "from": sender,
            "origin": "chat",
            "stamped": True,
            "timestamp": now,
            "fingerprint": 150698569649423,
            "user": {"nickname": "visitor493603", "user_id": session_id},
        },
        "timestamp": now,
    }


def plugin_hook_headers(
    body: Any, *, secret: str = CRISP_HOOK_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """The headers of a signed plugin hook for ``body`` (signed over its compact JSON)."""
    stamp = str(timestamp if timestamp is not None else int(time.time() * 1000))
    trace = b"[" + stamp.encode() + b";" + compact(body) + b"]"
    signature = hmac.new(secret.encode(), trace, hashlib.sha256).hexdigest()
    return {
        "content-type": "application/json",
        "X-Crisp-Hook-Origin": "plugin/rtm 38b411d9377a6a00 production",
        "X-Crisp-Request-Timestamp": stamp,
        "X-Crisp-Signature": signature,
        "X-Delivery-Attempt-Limit": "3",
        "X-Delivery-Attempt-Count": "1",
    }


class FakeCrisp(FakeSystem):
    """Served under ``/crisp`` by ``HelpdeskFake`` (tests/helpdesk_fakes.py)."""

    name = "crisp"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self.conversations: dict[str, dict[str, Any]] = {}
        self._fingerprints = itertools.count(160_000_000_000_000)

    def env(self) -> dict[str, str]:
        return {
            "CRISP_BASE_URL": self.base_url,
            "CRISP_WEBSITE_ID": CRISP_WEBSITE_ID,
            "CRISP_IDENTIFIER": CRISP_IDENTIFIER,
            "CRISP_KEY": CRISP_KEY,
            "CRISP_WEBHOOK_KEY": f"{CRISP_HOOK_SECRET},{CRISP_WEBSITE_KEY}",
        }

    def add_conversation(
        self, session_id: str, data: dict[str, Any] | None = None, *, messages: int = 0
    ) -> None:
        """A conversation whose session data is ``data``, with ``messages`` visitor texts."""
        base = int(time.time() * 1000) - 60_000
        with self._lock:
            self.conversations[session_id] = {
                "meta": {
                    "nickname": "visitor493603",
                    "email": "ada@example.com",
                    "data": dict(data or {}),
                },
                "messages": [
                    {
                        "session_id": session_id,
                        "website_id": CRISP_WEBSITE_ID,
                        "type": "text",
                        "from": "user",
                        "origin": "chat",
                        "content": f"message {i}",
                        "fingerprint": next(self._fingerprints),
                        "timestamp": base + i * 10,
                    }
                    for i in range(messages)
                ],
            }

    def set_data(self, session_id: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.conversations[session_id]["meta"]["data"].update(data)

    def notes(self, session_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(m) for m in self.conversations[session_id]["messages"] if m["type"] == "note"
            ]

    # Answers -----------------------------------------------------------------------------

    def error_body(self, status: int) -> bytes:
        reasons = {
            401: "invalid_session",
            404: "session_not_found",
            420: "rate_limited",
            429: "rate_limited",
        }
        return json.dumps(
            {"error": True, "reason": reasons.get(status, "error"), "data": {}}
        ).encode()

    def rate_limit_headers(self, status: int = 429) -> dict[str, str]:
        return {"Retry-After": "1"}

    def _error(self, status: int, reason: str) -> Response:
        return json_response({"error": True, "reason": reason, "data": {}}, status)

    @staticmethod
    def _ok(data: Any, reason: str = "resolved") -> Response:
        return json_response({"error": False, "reason": reason, "data": data})

    def handle(self, request: Request, route: str, body: Any) -> Response:
        with self._lock:  # the test thread reads and sets up the same state
            return self._answer(request, route, body)

    def _answer(self, request: Request, route: str, body: Any) -> Response:
        expected = base64.b64encode(f"{CRISP_IDENTIFIER}:{CRISP_KEY}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return self._error(401, "invalid_session")
        if request.headers.get("X-Crisp-Tier") != "plugin":
            return self._error(403, "not_allowed")
        match = re.fullmatch(r"/v1/website/([^/]+)/(.+)", route)
        if match is None:
            return self._error(404, "not_found")
        if match.group(1) != CRISP_WEBSITE_ID:
            return self._error(404, "website_not_found")
        rest = match.group(2)
        if re.fullmatch(r"conversations/\d+", rest) and request.method == "GET":
            return self._ok([{"session_id": s} for s in list(self.conversations)[:20]])
        conv = re.fullmatch(r"conversation/([^/]+)/(meta|message|messages)", rest)
        if conv is None:
            return self._error(404, "not_found")
        conversation = self.conversations.get(conv.group(1))
        if conversation is None:
            return self._error(404, "session_not_found")
        what = conv.group(2)
        if what == "meta" and request.method == "GET":
            return self._ok(conversation["meta"])
        if what == "message" and request.method == "POST":
            if not isinstance(body, dict) or body.get("type") not in ("text", "note"):
                return self._error(400, "invalid_data")
            if body.get("from") not in ("user", "operator") or not body.get("content"):
                return self._error(400, "invalid_data")
            fingerprint = next(self._fingerprints)
            conversation["messages"].append(
                {
                    "session_id": conv.group(1),
                    "website_id": CRISP_WEBSITE_ID,
                    "type": body["type"],
                    "from": body["from"],
                    "origin": body.get("origin", "chat"),
                    "content": body["content"],
                    "fingerprint": fingerprint,
                    "timestamp": int(time.time() * 1000),
                }
            )
            return self._ok({"fingerprint": fingerprint}, "dispatched")
        if what == "messages" and request.method == "GET":
            before = request.args.get("timestamp_before")
            items = conversation["messages"]
            if before is not None:
                items = [m for m in items if m["timestamp"] < int(before)]
            return self._ok(items[-PAGE:])
        return self._error(404, "not_found")
