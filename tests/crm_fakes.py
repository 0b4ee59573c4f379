"""One fake HTTP server playing three CRMs the way their documentation describes them.

- Attio ``/attio/v2``: Bearer auth; ``POST objects/people/records/query`` (filter on
  ``email_addresses``), ``PUT objects/people/records?matching_attribute=email_addresses``
  (assert: find or create), ``POST notes`` / ``GET notes`` (``limit`` ≤ 50, ``offset``),
  ``GET self``; ``attio_limited`` answers 429 with an HTTP-date ``Retry-After`` and Attio's
  error body.
- Pipedrive ``/pipedrive/api/v1``: the ``x-api-token`` header; ``GET persons/search``
  (exact email), ``POST persons``, ``POST notes``, ``GET notes?person_id`` (pagination in
  ``additional_data``), ``GET users/me``; every answer in ``{"success", "data"}``.
- Salesforce ``/salesforce``: ``POST services/oauth2/token`` (client credentials; tokens
  can be revoked with ``revoke_tokens``), ``GET services/data/v60.0/query?q=`` for the SOQL
  this service sends (Contact/Lead by Email, Note by ParentId and Title), ``POST
  sobjects/{Lead,Contact,Note}``, ``GET limits``; 401 ``INVALID_SESSION_ID`` with a stale token.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import re
import threading
import time
from typing import Any

from loopback import LoopbackServer
from werkzeug.wrappers import Request, Response

ATTIO_KEY = "attio-test-key-0123"
PIPEDRIVE_TOKEN = "pipedrive-test-token-0123"
SALESFORCE_ID = "sf-client-id"
SALESFORCE_SECRET = "sf-client-secret-0123"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


class CrmFake(LoopbackServer):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(5001)
        self.people: dict[str, dict[str, Any]] = {}  # system -> {email: id}
        self.notes: dict[str, list[dict[str, Any]]] = {"attio": [], "pipedrive": [], "sf": []}
        self.attio_people: dict[str, str] = {}
        self.pipedrive_people: dict[str, int] = {}
        self.sf_records: dict[str, dict[str, Any]] = {}  # id -> {"type", "Email", ...}
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.attio_limited = 0
        self.requests: list[tuple[str, str]] = []

    def env(self) -> dict[str, str]:
        return {
            "ATTIO_API_KEY": ATTIO_KEY,
            "ATTIO_BASE_URL": f"{self.url}/attio",
            "PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN,
            "PIPEDRIVE_BASE_URL": f"{self.url}/pipedrive",
            "SALESFORCE_INSTANCE_URL": f"{self.url}/salesforce",
            "SALESFORCE_CLIENT_ID": SALESFORCE_ID,
            "SALESFORCE_CLIENT_SECRET": SALESFORCE_SECRET,
        }

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def notes_with(self, system: str, text: str) -> list[dict[str, Any]]:
        with self._lock:
            return [n for n in self.notes[system] if text in json.dumps(n)]

    def _id(self) -> int:
        return next(self._ids)

    # Serving --------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.requests.append((request.method, request.full_path))
            if request.path.startswith("/attio/v2/"):
                response = self._attio(request, request.path.removeprefix("/attio/v2/"))
            elif request.path.startswith("/pipedrive/api/v1/"):
                response = self._pipedrive(request, request.path.removeprefix("/pipedrive/api/v1/"))
            elif request.path.startswith("/salesforce/"):
                response = self._salesforce(request, request.path.removeprefix("/salesforce/"))
            else:
                response = Response("not found", status=404)
        return response(environ, start_response)

    # Attio ----------------------------------------------------------------------------------

    def _attio(self, request: Request, route: str) -> Response:
        if request.headers.get("Authorization") != f"Bearer {ATTIO_KEY}":
            return _json(
                {
                    "status_code": 401,
                    "type": "auth_error",
                    "code": "unauthorized",
                    "message": "Invalid API key",
                },
                401,
            )
        if self.attio_limited > 0:
            self.attio_limited -= 1
            when = email.utils.formatdate(time.time() + 1, usegmt=True)
            return _json(
                {
                    "status_code": 429,
                    "type": "rate_limit_error",
                    "code": "rate_limit_exceeded",
                    "message": "Rate limit exceeded",
                },
                429,
                {"Retry-After": when},
            )
        body = request.get_json(silent=True) or {}
        if route == "self":
            return _json({"active": True, "workspace_name": "Acme"})
        if route == "objects/people/records/query" and request.method == "POST":
            email_ = (body.get("filter") or {}).get("email_addresses")
            rid = self.attio_people.get(str(email_).lower())
            data = [{"id": {"workspace_id": "w", "object_id": "people", "record_id": rid}}]
            return _json({"data": data if rid else []})
        if route == "objects/people/records" and request.method == "PUT":
            if request.args.get("matching_attribute") != "email_addresses":
                return _json({"status_code": 400, "message": "matching_attribute required"}, 400)
            (email_,) = body["data"]["values"]["email_addresses"]
            rid = self.attio_people.setdefault(email_.lower(), f"rec-{self._id()}")
            return _json(
                {"data": {"id": {"workspace_id": "w", "object_id": "people", "record_id": rid}}}
            )
        if route == "notes" and request.method == "POST":
            data = body["data"]
            if data.get("format") not in ("plaintext", "markdown") or not data.get("title"):
                return _json({"status_code": 400, "message": "format and title required"}, 400)
            note = {
                "id": {"workspace_id": "w", "note_id": f"note-{self._id()}"},
                "parent_object": data["parent_object"],
                "parent_record_id": data["parent_record_id"],
                "title": data["title"],
                "content_markdown": data["content"],
                # Attio renders the Markdown; the plain text keeps a code span's text.
                "content_plaintext": re.sub(r"[*_`]", "", data["content"]),
            }
            self.notes["attio"].append(note)
            return _json({"data": note})
        if route == "notes" and request.method == "GET":
            limit = int(request.args.get("limit", 10))
            if limit > 50:
                return _json({"status_code": 400, "message": "limit must be ≤ 50"}, 400)
            offset = int(request.args.get("offset", 0))
            mine = [
                n
                for n in self.notes["attio"]
                if n["parent_record_id"] == request.args.get("parent_record_id")
            ]
            return _json({"data": mine[offset : offset + limit]})
        return _json({"status_code": 404, "message": "Not found"}, 404)

    # Pipedrive -------------------------------------------------------------------------------

    def _pipedrive(self, request: Request, route: str) -> Response:
        if request.headers.get("x-api-token") != PIPEDRIVE_TOKEN:
            return _json({"success": False, "error": "unauthorized access", "errorCode": 401}, 401)
        body = request.get_json(silent=True) or {}
        if route == "users/me":
            return _json({"success": True, "data": {"id": 1, "company_domain": "acme"}})
        if route == "persons/search":
            if request.args.get("exact_match") != "true" or request.args.get("fields") != "email":
                return _json({"success": True, "data": {"items": []}})
            pid = self.pipedrive_people.get(request.args.get("term", "").lower())
            items = [{"result_score": 1, "item": {"id": pid, "type": "person"}}] if pid else []
            return _json({"success": True, "data": {"items": items}})
        if route == "persons" and request.method == "POST":
            email_ = body["email"][0]["value"].lower()
            pid = self.pipedrive_people.setdefault(email_, self._id())
            return _json({"success": True, "data": {"id": pid, "name": body.get("name")}}, 201)
        if route == "notes" and request.method == "POST":
            if not body.get("person_id") or not body.get("content"):
                return _json({"success": False, "error": "content and person_id required"}, 400)
            note = {"id": self._id(), "content": body["content"], "person_id": body["person_id"]}
            self.notes["pipedrive"].append(note)
            return _json({"success": True, "data": note}, 201)
        if route == "notes" and request.method == "GET":
            start, limit = int(request.args.get("start", 0)), int(request.args.get("limit", 100))
            mine = [
                n
                for n in reversed(self.notes["pipedrive"])
                if str(n["person_id"]) == request.args.get("person_id")
            ]
            page = mine[start : start + limit]
            more = start + limit < len(mine)
            return _json(
                {
                    "success": True,
                    "data": page or None,
                    "additional_data": {
                        "pagination": {
                            "start": start,
                            "limit": limit,
                            "more_items_in_collection": more,
                            "next_start": start + limit,
                        }
                    },
                }
            )
        return _json({"success": False, "error": "Unknown method"}, 404)

    # Salesforce -------------------------------------------------------------------------------

    def _salesforce(self, request: Request, route: str) -> Response:
        if route == "services/oauth2/token":
            self.token_requests += 1
            form = request.form
            if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
                "client_credentials",
                SALESFORCE_ID,
                SALESFORCE_SECRET,
            ):
                return _json(
                    {"error": "invalid_client", "error_description": "invalid client credentials"},
                    400,
                )
            token = f"00D-token-{self._id()}"
            self.tokens.add(token)
            return _json(
                {
                    "access_token": token,
                    "instance_url": self.url + "/salesforce",
                    "token_type": "Bearer",
                    "issued_at": str(int(time.time() * 1000)),
                }
            )
        auth = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if auth not in self.tokens:
            return _json(
                [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}], 401
            )
        route = route.removeprefix("services/data/v60.0/")
        if route == "limits":
            return _json({"DailyApiRequests": {"Max": 15000, "Remaining": 14990}})
        if route == "query":
            return _json(self._soql(request.args.get("q", "")))
        if route.startswith("sobjects/") and request.method == "POST":
            kind = route.removeprefix("sobjects/")
            body = request.get_json(silent=True) or {}
            if kind == "Lead" and not (body.get("LastName") and body.get("Company")):
                return _json(
                    [
                        {
                            "message": "Required fields are missing: [LastName, Company]",
                            "errorCode": "REQUIRED_FIELD_MISSING",
                        }
                    ],
                    400,
                )
            if kind == "Note" and (len(body.get("Title", "")) > 80 or not body.get("ParentId")):
                return _json(
                    [{"message": "Title: data value too large", "errorCode": "STRING_TOO_LONG"}],
                    400,
                )
            rid = f"{kind[:3]}{self._id():012d}"
            self.sf_records[rid] = {"type": kind, **body}
            if kind == "Note":
                self.notes["sf"].append({"Id": rid, **body})
            return _json({"id": rid, "success": True, "errors": []}, 201)
        return _json(
            [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}], 404
        )

    def _soql(self, soql: str) -> dict[str, Any]:
        def literal(name: str) -> str | None:
            match = re.search(rf"{name} = '((?:[^'\\]|\\.)*)'", soql)
            return re.sub(r"\\(.)", r"\1", match.group(1)) if match else None

        kind = re.search(r"FROM (\w+)", soql)
        sobject = kind.group(1) if kind else ""
        if sobject in ("Contact", "Lead"):
            wanted = (literal("Email") or "").lower()
            found = [
                {"Id": rid}
                for rid, r in self.sf_records.items()
                if r["type"] == sobject and str(r.get("Email", "")).lower() == wanted
            ]
        elif sobject == "Note":
            parent, title = literal("ParentId"), literal("Title")
            found = [
                {"Id": n["Id"], "Title": n["Title"]}
                for n in self.notes["sf"]
                if n["ParentId"] == parent and n["Title"] == title
            ]
        else:
            found = []
        found = found[:1] if "LIMIT 1" in soql else found
        return {"totalSize": len(found), "done": True, "records": found}
