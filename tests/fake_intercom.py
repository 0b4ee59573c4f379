"""A fake Intercom (REST API 2.x) for ``HelpdeskFake``, and its signed webhooks.

- ``POST /conversations/{id}/reply`` with ``message_type: note`` adds a note part (``admin_id``
  must be a known admin, ``body`` non-empty) and answers the conversation;
- ``GET /conversations/{id}`` answers it with ``conversation_parts`` (the 500 newest);
- ``GET /contacts/{id}`` (custom attributes), ``GET /admins/{id}``;
- Bearer token checked; errors in Intercom's ``{"type": "error.list", "errors": [{code,
  message}]}`` envelope; its 429 (``rate_limit_exceeded``) with ``X-RateLimit-Limit``,
  ``-Remaining`` and ``-Reset`` (unix time) from ``rate_limit_headers``.

``notification`` builds a ``conversation.user.created`` notification_event and ``signed``
signs it as Intercom does: ``X-Hub-Signature: sha1=<hex HMAC-SHA1 of the body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
import uuid
from typing import Any

from helpdesk_fakes import FakeSystem, json_response
from werkzeug.wrappers import Request, Response

INTERCOM_TOKEN = "dG9rOmludGVyY29tLWZha2UtdG9rZW4tN2Yz"
INTERCOM_CLIENT_SECRET = "intercom-client-secret-4b9e"
INTERCOM_ADMIN_ID = "814860"
MAX_PARTS = 500


def intercom_errors(code: str, message: str) -> dict[str, Any]:
    return {
        "type": "error.list",
        "request_id": uuid.uuid4().hex[:20],
        "errors": [{"code": code, "message": message}],
    }


def rate_limit_headers(reset_in: float = 2.0) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "10000",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(time.time() + reset_in)),
    }


class FakeIntercom(FakeSystem):
    name = "intercom"

    def __init__(self) -> None:
        super().__init__()
        self.token = INTERCOM_TOKEN
        self.admins = {
            INTERCOM_ADMIN_ID: {
                "type": "admin",
                "id": INTERCOM_ADMIN_ID,
                "name": "Enrich Bot",
                "email": "bot@example.com",
            }
        }
        self.contacts: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, list[dict[str, Any]]] = {}  # id -> parts, oldest first
        self._ids = itertools.count(9_000_001)

    def env(self) -> dict[str, str]:
        return {
            "INTERCOM_BASE_URL": self.base_url,
            "INTERCOM_ACCESS_TOKEN": self.token,
            "INTERCOM_CLIENT_SECRET": INTERCOM_CLIENT_SECRET,
            "INTERCOM_ADMIN_ID": INTERCOM_ADMIN_ID,
        }

    # State and payloads ------------------------------------------------------------------

    def add_conversation(
        self,
        *,
        contact_attributes: dict[str, Any] | None = None,
        email: str = "ada@example.com",
    ) -> tuple[str, str]:
        """A new conversation started by a new contact; returns (conversation id, contact id)."""
        conversation_id = str(next(self._ids))
        contact_id = uuid.uuid4().hex[:24]
        self.contacts[contact_id] = {
            "type": "contact",
            "id": contact_id,
            "role": "user",
            "email": email,
            "name": "Ada Lovelace",
            "custom_attributes": dict(contact_attributes or {}),
        }
        self.conversations[conversation_id] = []
        return conversation_id, contact_id

    def notes(self, conversation_id: str) -> list[dict[str, Any]]:
        return [p for p in self.conversations.get(conversation_id, []) if p["part_type"] == "note"]

    def notification(
        self,
        conversation_id: str,
        contact_id: str,
        *,
        attributes: dict[str, Any] | None = None,
        topic: str = "conversation.user.created",
    ) -> dict[str, Any]:
        """The notification_event Intercom posts for a conversation a user started."""
        contact = self.contacts[contact_id]
        now = int(time.time())
        return {
            "type": "notification_event",
            "app_id": "abc123de",
            "id": f"notif_{uuid.uuid4()}",
            "topic": topic,
            "delivery_status": "pending",
            "delivery_attempts": 1,
            "created_at": now,
            "data": {
                "type": "notification_event_data",
                "item": {
                    "type": "conversation",
                    "id": conversation_id,
                    "created_at": now,
                    "state": "open",
                    "source": {
                        "type": "conversation",
                        "delivered_as": "customer_initiated",
                        "body": "<p>Hi, a question about pricing</p>",
                        "author": {
                            "type": "user",
                            "id": contact_id,
                            "name": contact["name"],
                            "email": contact["email"],
                        },
                    },
                    "contacts": {
                        "type": "contact.list",
                        "contacts": [{"type": "contact", "id": contact_id, "external_id": None}],
                    },
                    "custom_attributes": dict(attributes or {}),
                    "conversation_parts": {
                        "type": "conversation_part.list",
                        "conversation_parts": [],
                        "total_count": 0,
                    },
                },
            },
        }

    @staticmethod
    def signed(payload: Any, secret: str = INTERCOM_CLIENT_SECRET) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        digest = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        return body, {"Content-Type": "application/json", "X-Hub-Signature": f"sha1={digest}"}

    # Serving ------------------------------------------------------------------------------

    def error_body(self, status: int) -> bytes:
        code, message = {
            429: ("rate_limit_exceeded", "Exceeded rate limit of 10000 in 60_seconds"),
            401: ("unauthorized", "Access Token Invalid"),
            404: ("not_found", "Resource Not Found"),
        }.get(status, ("server_error", "Server Error"))
        return json.dumps(intercom_errors(code, message)).encode()

    def _conversation(self, conversation_id: str) -> dict[str, Any]:
        parts = self.conversations[conversation_id][-MAX_PARTS:]
        return {
            "type": "conversation",
            "id": conversation_id,
            "state": "open",
            "conversation_parts": {
                "type": "conversation_part.list",
                "conversation_parts": parts,
                "total_count": len(self.conversations[conversation_id]),
            },
        }

    def handle(self, request: Request, route: str, body: Any) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return json_response(intercom_errors("unauthorized", "Access Token Invalid"), 401)
        reply = re.fullmatch(r"/conversations/([^/]+)/reply", route)
        if reply and request.method == "POST":
            return self._reply(reply.group(1), body)
        show = re.fullmatch(r"/conversations/([^/]+)", route)
        if show and request.method == "GET":
            if show.group(1) not in self.conversations:
                return json_response(intercom_errors("not_found", "Resource Not Found"), 404)
            return json_response(self._conversation(show.group(1)))
        contact = re.fullmatch(r"/contacts/([^/]+)", route)
        if contact and request.method == "GET":
            found = self.contacts.get(contact.group(1))
            if found is None:
                return json_response(intercom_errors("not_found", "User Not Found"), 404)
            return json_response(found)
        admin = re.fullmatch(r"/admins/([^/]+)", route)
        if admin and request.method == "GET" and admin.group(1) in self.admins:
            return json_response(self.admins[admin.group(1)])
        return json_response(intercom_errors("not_found", "Resource Not Found"), 404)

    def _reply(self, conversation_id: str, body: Any) -> Response:
        if conversation_id not in self.conversations:
            return json_response(intercom_errors("not_found", "Resource Not Found"), 404)
        if not isinstance(body, dict) or body.get("message_type") not in ("comment", "note"):
            return json_response(
                intercom_errors("parameter_invalid", "message_type must be comment or note"), 400
            )
        if body.get("type") != "admin" or str(body.get("admin_id")) not in self.admins:
            return json_response(intercom_errors("parameter_invalid", "Admin not found"), 400)
        if not body.get("body"):
            return json_response(intercom_errors("parameter_invalid", "Body is required"), 400)
        part = {
            "type": "conversation_part",
            "id": str(next(self._ids)),
            "part_type": body["message_type"],
            "body": body["body"],
            "created_at": int(time.time()),
            "author": {"type": "admin", "id": str(body["admin_id"])},
        }
        self.conversations[conversation_id].append(part)
        return json_response(self._conversation(conversation_id))
