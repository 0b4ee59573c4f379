"""A fake Freshdesk (API v2) and the automation rule's webhook as the README tells an admin to
write it.

Speaks: ``GET /api/v2/tickets/{id}`` (``?include=requester``), ``POST
/api/v2/tickets/{id}/notes`` (``body`` HTML, ``private``; 201 with the note),
``GET /api/v2/tickets/{id}/conversations`` (``page``, ``per_page`` ≤ 100), ``GET
/api/v2/agents/me``; Basic auth with the API key and ``X``; its error envelopes
(``{"code", "message"}`` for 401/404, ``{"description": "Validation failed", "errors": [...]}``
for 400) and, on every answer, ``X-Ratelimit-Total`` / ``X-Ratelimit-Remaining`` /
``X-Ratelimit-Used-CurrentRequest``; a 429 adds ``Retry-After``.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
import threading
from typing import Any

from helpdesk_fakes import FakeSystem, json_response
from werkzeug.wrappers import Request, Response

FRESHDESK_API_KEY = "fdKEYsupportB9xQ2wL7"
FRESHDESK_WEBHOOK_TOKEN = "fd-hook-token-supportB-4Rt8"
VISITOR_FIELD = "cf_datafast_visitor_id"
RATE_TOTAL = 200

_ticket_numbers = itertools.count(5001)


def new_ticket_id() -> str:
    return str(next(_ticket_numbers))


def rule_body(
    ticket_id: str, visitor_id: str | None, *, email: str = "ada@example.com"
) -> dict[str, Any]:
    """The automation rule's JSON body as Freshdesk renders the README's placeholders
    (an empty custom field renders as "")."""
    return {
        "ticket_id": ticket_id,
        "email": email,
        "name": "Ada Lovelace",
        "visitor_id": visitor_id or "",
    }


def rule_headers(token: str = FRESHDESK_WEBHOOK_TOKEN) -> dict[str, str]:
    return {"content-type": "application/json", "X-Visitor-Enrich-Token": token}


def _text(markup: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


class FakeFreshdesk(FakeSystem):
    """Served under ``/freshdesk`` by ``HelpdeskFake`` (tests/helpdesk_fakes.py)."""

    name = "freshdesk"

    def __init__(self, api_key: str = FRESHDESK_API_KEY) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self.api_key = api_key
        self.tickets: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        self._ids = itertools.count(9_000_001)

    def env(self) -> dict[str, str]:
        return {
            "FRESHDESK_BASE_URL": self.base_url,
            "FRESHDESK_API_KEY": self.api_key,
            "FRESHDESK_WEBHOOK_TOKEN": FRESHDESK_WEBHOOK_TOKEN,
        }

    def add_ticket(
        self, ticket_id: str, visitor_id: str | None = None, email: str = "ada@example.com"
    ) -> None:
        with self._lock:
            self.tickets[ticket_id] = {
                "id": int(ticket_id),
                "subject": "Cannot find the export button",
                "requester_id": 77,
                "custom_fields": {VISITOR_FIELD: visitor_id},
                "requester": {"id": 77, "name": "Ada Lovelace", "email": email},
            }
            self.conversations[ticket_id] = []

    def notes(self, ticket_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(n) for n in self.conversations.get(ticket_id, []) if n["private"]]

    # Answers -----------------------------------------------------------------------------

    def error_body(self, status: int) -> bytes:
        messages = {
            401: ("invalid_credentials", "You have to be logged in to perform this action."),
            404: ("not_found", "The requested resource could not be found"),
            429: ("rate_limit_exceeded", "You have exceeded the limit of requests per minute"),
        }
        code, message = messages.get(status, ("error", "Something went wrong"))
        return json.dumps({"code": code, "message": message}).encode()

    def rate_limit_headers(self, status: int = 429) -> dict[str, str]:
        return {
            "Retry-After": "1",
            "X-Ratelimit-Total": str(RATE_TOTAL),
            "X-Ratelimit-Remaining": "0",
            "X-Ratelimit-Used-CurrentRequest": "1",
        }

    def _json(self, body: Any, status: int = 200) -> Response:
        headers = {
            "X-Ratelimit-Total": str(RATE_TOTAL),
            "X-Ratelimit-Remaining": str(RATE_TOTAL - 1),
            "X-Ratelimit-Used-CurrentRequest": "1",
        }
        return json_response(body, status, headers)

    def _error(self, status: int) -> Response:
        return Response(self.error_body(status), status=status, content_type="application/json")

    def handle(self, request: Request, route: str, body: Any) -> Response:
        with self._lock:  # the test thread reads and sets up the same state
            return self._answer(request, route, body)

    def _answer(self, request: Request, route: str, body: Any) -> Response:
        expected = base64.b64encode(f"{self.api_key}:X".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return self._error(401)
        if request.method == "GET" and route == "/api/v2/agents/me":
            return self._json(
                {"id": 42, "contact": {"name": "API agent", "email": "api@example.com"}}
            )
        match = re.fullmatch(r"/api/v2/tickets/(\d+)(/notes|/conversations)?", route)
        if match is None:
            return self._error(404)
        ticket_id, tail = match.group(1), match.group(2)
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return self._error(404)
        if tail is None and request.method == "GET":
            answer = {k: v for k, v in ticket.items() if k != "requester"}
            if request.args.get("include") == "requester":
                answer["requester"] = ticket["requester"]
            return self._json(answer)
        if tail == "/notes" and request.method == "POST":
            return self._add_note(ticket_id, body)
        if tail == "/conversations" and request.method == "GET":
            page = int(request.args.get("page", "1"))
            per_page = min(int(request.args.get("per_page", "30")), 100)
            items = self.conversations[ticket_id]
            return self._json(items[(page - 1) * per_page : page * per_page])
        return self._error(404)

    def _add_note(self, ticket_id: str, body: Any) -> Response:
        errors = []
        if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
            errors.append(
                {"field": "body", "message": "It should be a/an String", "code": "missing_field"}
            )
        elif not isinstance(body.get("private", True), bool):
            errors.append(
                {
                    "field": "private",
                    "message": "It should be a/an Boolean",
                    "code": "datatype_mismatch",
                }
            )
        if errors:
            return self._json({"description": "Validation failed", "errors": errors}, 400)
        note = {
            "id": next(self._ids),
            "body": body["body"],
            "body_text": _text(body["body"]),
            "private": body.get("private", True),
            "incoming": False,
            "ticket_id": int(ticket_id),
            "user_id": 42,
            "created_at": "2026-12-01T10:00:00Z",
        }
        self.conversations[ticket_id].append(note)
        return self._json(note, 201)
