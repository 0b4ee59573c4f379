"""A fake Help Scout (Mailbox API v2 and Chat API) for ``HelpdeskFake``, and its signed
webhooks.

- ``POST /v2/oauth2/token`` (form: ``grant_type=client_credentials``, ``client_id``,
  ``client_secret``) issues ``{"token_type": "bearer", "access_token", "expires_in": 7200}``;
  every other call needs ``Authorization: Bearer`` with an issued, unrevoked token
  (``revoke_tokens`` plays an early expiry);
- ``POST /v2/conversations/{id}/notes`` ``{"text"}``: 201, no body, ``Resource-ID`` header;
  ``GET /v2/conversations/{id}/threads``: ``_embedded.threads`` newest first;
- ``PUT /v2/chats/{id}/notes/{noteId}`` ``{"body"}``: the chat; a reused note id is
  422 "id value is already in use"; ``GET /v2/chats/{id}``: ``_embedded.events``;
- ``GET /v2/customers/{id}`` (properties and emails), ``GET /v2/users/me``;
- errors as ``{"logRef", "message", "_embedded": {"errors": [...]}}``; its 429 with
  ``X-RateLimit-Retry-After`` (``rate_limit_headers``).

``conversation`` / ``chat`` build the ``convo.created`` / ``beacon.chat.created`` bodies and
``signed`` signs them as Help Scout does: ``X-HelpScout-Signature`` = base64 HMAC-SHA1 of the
body, ``X-HelpScout-Event`` naming the event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from helpdesk_fakes import FakeSystem, json_response
from werkzeug.wrappers import Request, Response

HELPSCOUT_APP_ID = "hs-app-id-2f81"
HELPSCOUT_APP_SECRET = "hs-app-secret-9c40d7"
HELPSCOUT_WEBHOOK_SECRET = "hs-webhook-secret-51aa"
VISITOR_FIELD_ID = 8123


def helpscout_error(message: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"logRef": uuid.uuid4().hex[:12], "message": message}
    if errors:
        body["_embedded"] = {"errors": errors}
    return body


def rate_limit_headers(retry_after: int = 2) -> dict[str, str]:
    return {
        "X-RateLimit-Limit-Minute": "200",
        "X-RateLimit-Remaining-Minute": "0",
        "X-RateLimit-Retry-After": str(retry_after),
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeHelpScout(FakeSystem):
    name = "helpscout"

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.conversations: dict[str, list[dict[str, Any]]] = {}  # id -> threads, newest first
        self.chats: dict[str, list[dict[str, Any]]] = {}  # id -> events, oldest first
        self.customers: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(700_001)
        self.page_size = 25  # threads per page of GET /v2/conversations/{id}/threads

    def env(self) -> dict[str, str]:
        return {
            "HELPSCOUT_BASE_URL": self.base_url,
            "HELPSCOUT_APP_ID": HELPSCOUT_APP_ID,
            "HELPSCOUT_APP_SECRET": HELPSCOUT_APP_SECRET,
            "HELPSCOUT_WEBHOOK_SECRET": HELPSCOUT_WEBHOOK_SECRET,
        }

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    # State and payloads ------------------------------------------------------------------

    def add_customer(self, properties: dict[str, Any] | None = None) -> dict[str, Any]:
        customer_id = str(next(self._ids))
        self.customers[customer_id] = {
            "id": int(customer_id),
            "firstName": "Ada",
            "lastName": "Lovelace",
            "properties": [
                {"type": "text", "slug": k, "name": k, "value": v}
                for k, v in (properties or {}).items()
            ],
            "_embedded": {"emails": [{"id": 1, "value": "ada@example.com", "type": "work"}]},
        }
        return self.customers[customer_id]

    def conversation(
        self, customer: dict[str, Any], fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A new conversation and the v2 Conversation object ``convo.created`` posts."""
        conversation_id = str(next(self._ids))
        self.conversations[conversation_id] = [
            {
                "id": next(self._ids),
                "type": "customer",
                "body": "Hi, a question",
                "createdAt": _now(),
            }
        ]
        return {
            "id": int(conversation_id),
            "number": 4000 + int(conversation_id) % 1000,
            "type": "email",
            "status": "active",
            "subject": "A question",
            "mailboxId": 85,
            "createdAt": _now(),
            "primaryCustomer": {
                "id": customer["id"],
                "type": "customer",
                "first": "Ada",
                "last": "Lovelace",
                "email": "ada@example.com",
            },
            "customFields": [
                {
                    "id": VISITOR_FIELD_ID if k == "datafast_visitor_id" else 1,
                    "name": k,
                    "value": v,
                    "text": v,
                }
                for k, v in (fields or {}).items()
            ],
        }

    def chat(
        self, customer: dict[str, Any], fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A new live chat and the Chat object ``beacon.chat.created`` posts."""
        chat_id = str(uuid.uuid4())
        self.chats[chat_id] = []
        return {
            "id": chat_id,
            "beaconId": "ed8e9fe0-acf4-4b44-b1fc-a5bff956e7a8",
            "mailboxId": 85,
            "createdAt": _now(),
            "customer": {
                "id": customer["id"],
                "type": "customer",
                "first": "Ada",
                "last": "Lovelace",
                "email": "ada@example.com",
            },
            "preview": "Hi there",
            "customFields": [
                {"id": VISITOR_FIELD_ID, "name": k, "value": v} for k, v in (fields or {}).items()
            ],
            "tags": [],
        }

    def notes(self, conversation_id: str) -> list[dict[str, Any]]:
        return [t for t in self.conversations.get(conversation_id, []) if t["type"] == "note"]

    def chat_notes(self, chat_id: str) -> list[dict[str, Any]]:
        return [e for e in self.chats.get(chat_id, []) if e["type"] == "note"]

    @staticmethod
    def signed(
        payload: Any, event: str, secret: str = HELPSCOUT_WEBHOOK_SECRET
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        digest = hmac.new(secret.encode(), body, hashlib.sha1).digest()
        return body, {
            "Content-Type": "application/json",
            "X-HelpScout-Event": event,
            "X-HelpScout-Signature": base64.b64encode(digest).decode(),
        }

    # Serving ------------------------------------------------------------------------------

    def error_body(self, status: int) -> bytes:
        message = {429: "Too many requests", 401: "Unauthorized"}.get(status, "Error")
        return json.dumps(helpscout_error(message)).encode()

    def handle(self, request: Request, route: str, body: Any) -> Response:
        if route == "/v2/oauth2/token" and request.method == "POST":
            return self._token(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.tokens:
            return json_response(helpscout_error("Unauthorized: invalid or expired token"), 401)
        if route == "/v2/users/me" and request.method == "GET":
            return json_response({"id": 1, "email": "app-owner@example.com", "role": "owner"})
        notes = re.fullmatch(r"/v2/conversations/(\d+)/notes", route)
        if notes and request.method == "POST":
            return self._add_note(notes.group(1), body)
        threads = re.fullmatch(r"/v2/conversations/(\d+)/threads", route)
        if threads and request.method == "GET":
            if threads.group(1) not in self.conversations:
                return json_response(helpscout_error("Conversation not found"), 404)
            listed = self.conversations[threads.group(1)]
            number = int(request.args.get("page", "1"))
            size = self.page_size
            page = {
                "size": size,
                "totalElements": len(listed),
                "totalPages": max(1, -(-len(listed) // size)),
                "number": number,
            }
            shown = listed[(number - 1) * size : number * size]
            return json_response({"_embedded": {"threads": shown}, "page": page})
        chat_note = re.fullmatch(r"/v2/chats/([0-9a-f-]+)/notes/([0-9a-f-]+)", route)
        if chat_note and request.method == "PUT":
            return self._add_chat_note(chat_note.group(1), chat_note.group(2), body)
        chat = re.fullmatch(r"/v2/chats/([0-9a-f-]+)", route)
        if chat and request.method == "GET":
            if chat.group(1) not in self.chats:
                return json_response(helpscout_error("Chat not found"), 404)
            return json_response(self._chat(chat.group(1)))
        customer = re.fullmatch(r"/v2/customers/(\d+)", route)
        if customer and request.method == "GET":
            found = self.customers.get(customer.group(1))
            if found is None:
                return json_response(helpscout_error("Customer not found"), 404)
            return json_response(found)
        return json_response(helpscout_error("Not found"), 404)

    def _token(self, request: Request) -> Response:
        self.token_requests += 1
        form = request.form
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type"}, 400)
        if form.get("client_id") != HELPSCOUT_APP_ID or form.get("client_secret") != (
            HELPSCOUT_APP_SECRET
        ):
            return json_response(
                {"error": "invalid_client", "error_description": "Bad client credentials"}, 401
            )
        token = uuid.uuid4().hex
        self.tokens.add(token)
        return json_response({"token_type": "bearer", "access_token": token, "expires_in": 7200})

    def _add_note(self, conversation_id: str, body: Any) -> Response:
        if conversation_id not in self.conversations:
            return json_response(helpscout_error("Conversation not found"), 404)
        text = body.get("text") if isinstance(body, dict) else None
        if not text:
            errors = [{"path": "text", "message": "may not be empty", "rejectedValue": ""}]
            return json_response(helpscout_error("Bad request", errors), 400)
        thread_id = next(self._ids)
        thread = {"id": thread_id, "type": "note", "body": text, "createdAt": _now()}
        self.conversations[conversation_id].insert(0, thread)
        location = f"{self.base_url}/v2/conversations/{conversation_id}/threads/{thread_id}"
        return json_response(
            None, 201, headers={"Resource-ID": str(thread_id), "Location": location}
        )

    def _add_chat_note(self, chat_id: str, note_id: str, body: Any) -> Response:
        if chat_id not in self.chats:
            return json_response(helpscout_error("Chat not found"), 404)
        text = body.get("body") if isinstance(body, dict) else None
        if not text:
            return json_response(
                helpscout_error("Bad request", [{"path": "body", "message": "required"}]), 400
            )
        if any(e["id"] == note_id for e in self.chats[chat_id]):
            return json_response(helpscout_error("id value is already in use"), 422)
        self.chats[chat_id].append(
            {
                "id": note_id,
                "chatId": chat_id,
                "type": "note",
                "action": "note-added",
                "body": text,
                "createdAt": _now(),
            }
        )
        return json_response(self._chat(chat_id))

    def _chat(self, chat_id: str) -> dict[str, Any]:
        return {"id": chat_id, "mailboxId": 85, "_embedded": {"events": self.chats[chat_id]}}
