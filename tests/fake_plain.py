"""A fake Plain GraphQL API (``POST /graphql/v1``) and Plain's webhooks, signed its way.

Answers the operations the service sends, recognised by their root fields: ``createNote``
(``customerId``, ``threadId``, ``text``, ``markdown``; a mutation ``error`` for an unknown
thread or a customer that is not the thread's), ``thread { timelineEntries(first, after,
filters: {entryTypes: [NOTE]}) }`` (cursor pages of ``NoteEntry``), ``thread { threadFields,
customer, externalId }``, ``myWorkspace``. ``Authorization: Bearer`` is checked (401 with a
GraphQL ``errors`` body); a 429 carries ``Retry-After``.

``thread_created`` builds the documented ``thread.thread_created`` webhook body (as in Plain's
TypeScript SDK test payloads); ``signed_headers`` signs it as Plain does
(``Plain-Request-Signature``: hex HMAC-SHA256 of the body) with the delivery headers.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from helpdesk_fakes import FakeSystem, json_response
from werkzeug.wrappers import Request, Response

PLAIN_API_KEY = "plainApiKey_supportB_Xk29dLq"
PLAIN_WEBHOOK_SECRET = "plain-request-signing-secret-supportB-7Hn"
WORKSPACE_ID = "w_01GST0W989ZNAW53X6XYHAY87P"


def _ulid_like(prefix: str) -> str:
    return f"{prefix}_01{uuid.uuid4().hex[:24].upper()}"


def _now_iso(offset: float = 0.0) -> str:
    when = datetime.now(UTC) + timedelta(seconds=offset)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def thread_created(
    thread_id: str,
    customer_id: str,
    *,
    event_id: str | None = None,
    customer_external_id: str | None = None,
    attempt_offset: float = 0.0,
) -> dict[str, Any]:
    """A ``thread.thread_created`` webhook body (webhook version 2026-02-27)."""
    now = _now_iso()
    actor = {"actorType": "system", "system": "email_inbound_handler"}
    return {
        "timestamp": now,
        "workspaceId": WORKSPACE_ID,
        "payload": {
            "eventType": "thread.thread_created",
            "thread": {
                "id": thread_id,
                "customer": {
                    "id": customer_id,
                    "email": {
                        "email": "peter@example.com",
                        "isVerified": False,
                        "verifiedAt": None,
                    },
                    "externalId": customer_external_id,
                    "fullName": "Peter Santos",
                    "shortName": "Peter",
                    "markedAsSpamAt": None,
                    "markedAsSpamBy": None,
                    "customerGroupMemberships": [],
                    "createdAt": now,
                    "createdBy": actor,
                    "updatedAt": now,
                    "updatedBy": actor,
                },
                "title": "Unable to tail logs",
                "previewText": "Hey, I am currently unable to tail the logs",
                "priority": 2,
                "externalId": None,
                "status": "TODO",
                "statusChangedAt": now,
                "statusChangedBy": actor,
                "statusDetail": {"type": "CREATED", "createdAt": now},
                "assignee": None,
                "assignedAt": None,
                "additionalAssignees": [],
                "labels": [],
                "firstInboundMessageInfo": None,
                "firstOutboundMessageInfo": None,
                "lastInboundMessageInfo": None,
                "lastOutboundMessageInfo": None,
                "supportEmailAddresses": ["help@example.com"],
                "createdAt": now,
                "createdBy": actor,
                "updatedAt": now,
                "updatedBy": actor,
            },
        },
        "id": event_id or _ulid_like("pEv"),
        "webhookMetadata": {
            "webhookTargetId": "whTarget_01HD4400VTDJQ646V6RY37SR7K",
            "webhookTargetVersion": "2026-02-27",
            "webhookDeliveryAttemptId": _ulid_like("whAttempt"),
            "webhookDeliveryAttemptNumber": 1,
            "webhookDeliveryAttemptTimestamp": _now_iso(attempt_offset),
        },
        "type": "thread.thread_created",
    }


def signed_headers(
    body: bytes, payload: dict[str, Any], *, secret: str = PLAIN_WEBHOOK_SECRET
) -> dict[str, str]:
    meta = payload["webhookMetadata"]
    return {
        "content-type": "application/json",
        "Plain-Request-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "Plain-Event-Type": payload["type"],
        "Plain-Event-Id": payload["id"],
        "Plain-Workspace-Id": WORKSPACE_ID,
        "Plain-Webhook-Target-Id": meta["webhookTargetId"],
        "Plain-Webhook-Delivery-Attempt-Id": meta["webhookDeliveryAttemptId"],
        "Plain-Webhook-Delivery-Attempt-Number": str(meta["webhookDeliveryAttemptNumber"]),
        "Plain-Webhook-Delivery-Attempt-Timestamp": meta["webhookDeliveryAttemptTimestamp"],
    }


def _gql_error(message: str, code: str, status: int) -> Response:
    return json_response({"errors": [{"message": message, "extensions": {"code": code}}]}, status)


class FakePlain(FakeSystem):
    """Served under ``/plain`` by ``HelpdeskFake`` (tests/helpdesk_fakes.py)."""

    name = "plain"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self.threads: dict[str, dict[str, Any]] = {}
        self._notes = itertools.count(1)

    def env(self) -> dict[str, str]:
        return {
            "PLAIN_BASE_URL": self.base_url,
            "PLAIN_API_KEY": PLAIN_API_KEY,
            "PLAIN_WEBHOOK_SECRET": PLAIN_WEBHOOK_SECRET,
        }

    def add_thread(
        self, fields: dict[str, str] | None = None, *, other_entries: int = 0
    ) -> tuple[str, str]:
        """A thread with thread fields ``fields``; returns (thread id, customer id)."""
        thread_id, customer_id = _ulid_like("th"), _ulid_like("c")
        with self._lock:
            self.threads[thread_id] = {
                "customer_id": customer_id,
                "externalId": None,
                "fields": dict(fields or {}),
                "notes": [
                    {"noteId": _ulid_like("note"), "text": f"older note {i}", "markdown": None}
                    for i in range(other_entries)
                ],
            }
        return thread_id, customer_id

    def notes(self, thread_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(n) for n in self.threads[thread_id]["notes"]]

    # Answers -----------------------------------------------------------------------------

    def error_body(self, status: int) -> bytes:
        code = {401: "unauthorized", 403: "forbidden", 429: "rate_limited"}.get(status, "internal")
        return json.dumps(
            {"errors": [{"message": f"HTTP {status}", "extensions": {"code": code}}]}
        ).encode()

    def rate_limit_headers(self, status: int = 429) -> dict[str, str]:
        return {"Retry-After": "1"}

    def handle(self, request: Request, route: str, body: Any) -> Response:
        with self._lock:  # the test thread reads and sets up the same state
            return self._answer(request, route, body)

    def _answer(self, request: Request, route: str, body: Any) -> Response:
        if request.headers.get("Authorization") != f"Bearer {PLAIN_API_KEY}":
            return _gql_error("Authentication failed", "unauthorized", 401)
        if route != "/graphql/v1" or request.method != "POST":
            return Response("not found", status=404)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _gql_error("Must provide query string.", "bad_request", 400)
        query, variables = body["query"], body.get("variables") or {}
        if "createNote" in query:
            return json_response(
                {"data": {"createNote": self._create_note(variables.get("input") or {})}}
            )
        if "myWorkspace" in query:
            return json_response({"data": {"myWorkspace": {"id": WORKSPACE_ID, "name": "Acme"}}})
        thread = self.threads.get(str(variables.get("threadId")))
        if "timelineEntries" in query:
            return json_response({"data": {"thread": self._timeline(thread, variables)}})
        if "threadFields" in query:
            return json_response({"data": {"thread": self._visitor(variables, thread)}})
        return _gql_error("Unknown operation", "bad_request", 400)

    def _create_note(self, note_input: dict[str, Any]) -> dict[str, Any]:
        thread = self.threads.get(str(note_input.get("threadId")))
        fields = []
        if thread is None:
            fields.append(
                {"field": "threadId", "message": "Thread not found", "type": "VALIDATION"}
            )
        elif note_input.get("customerId") != thread["customer_id"]:
            fields.append(
                {"field": "customerId", "message": "Customer not in thread", "type": "VALIDATION"}
            )
        if not note_input.get("text"):
            fields.append({"field": "text", "message": "Required", "type": "REQUIRED"})
        if fields or thread is None:
            error = {
                "message": "Invalid input",
                "type": "VALIDATION",
                "code": "input_validation",
                "fields": fields,
            }
            return {"note": None, "error": error}
        note = {
            "noteId": _ulid_like("note"),
            "text": note_input["text"],
            "markdown": note_input.get("markdown"),
        }
        thread["notes"].append(note)
        return {"note": {"id": note["noteId"]}, "error": None}

    @staticmethod
    def _timeline(
        thread: dict[str, Any] | None, variables: dict[str, Any]
    ) -> dict[str, Any] | None:
        if thread is None:
            return None
        first = int(variables.get("first") or 25)
        start = int(variables.get("after") or 0)
        notes = thread["notes"][start : start + first]
        edges = [
            {
                "cursor": str(start + i + 1),
                "node": {"id": _ulid_like("t"), "entry": {"__typename": "NoteEntry", **note}},
            }
            for i, note in enumerate(notes)
        ]
        end = start + len(notes)
        return {
            "timelineEntries": {
                "edges": edges,
                "pageInfo": {
                    "hasNextPage": end < len(thread["notes"]),
                    "endCursor": str(end) if edges else None,
                },
            }
        }

    @staticmethod
    def _visitor(variables: dict[str, Any], thread: dict[str, Any] | None) -> dict[str, Any] | None:
        if thread is None:
            return None
        return {
            "id": variables.get("threadId"),
            "externalId": thread["externalId"],
            "threadFields": [{"key": k, "stringValue": v} for k, v in thread["fields"].items()],
            "customer": {
                "id": thread["customer_id"],
                "externalId": None,
                "fullName": "Peter Santos",
                "email": {"email": "peter@example.com"},
            },
        }
