"""One fake upstream HTTP server playing DataFast, HubSpot, Zendesk and Slack.

Each provider lives under a path prefix (``/datafast``, ``/hubspot``, ``/zendesk``,
``/slack``) so a test points the service at it with base URLs such as
``http://127.0.0.1:PORT/datafast``. The fake speaks the documented wire formats (see
``../shared/API-NOTES.md`` and seed 000), including their error envelopes, and keeps state the
way the real APIs do:

- DataFast: visitor profiles by id; unknown visitor -> 404 envelope; non-UUID -> 400; a wrong
  Bearer key -> 401; a ``dft_`` key without ``?websiteId=`` -> 400.
- HubSpot: contacts by email (search finds what create made; create assigns ids; 409 on a
  second create for the same email; PATCH updates), notes with their associations, notes
  search with ``CONTAINS_TOKEN`` on ``hs_note_body``; contact properties must exist.
- Zendesk: comments per ticket (``PUT /api/v2/tickets/{id}.json`` adds one;
  ``comments.json`` lists them with ``html_body``, ``body``, ``public``); Basic auth.
- Slack: the incoming webhook keeps every message; answers ``ok`` as text.
- ``/webhook/receiver``: a receiver of the signed outbound webhook; keeps every request
  (headers and raw body, to verify the signature as a receiver would) and answers 204.
- HubSpot also reads one contact (``GET /crm/v3/objects/contacts/{id}?properties=``), as the
  ``contact.creation`` lookup does.

Every request is recorded (monotonic and wall time at arrival, method, path, headers, parsed
JSON body, the status answered). A test scripts failures per route with ``fail`` (answer a
status instead of the real behaviour) and ``delay`` (behave for real, answer late).
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import logging
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

SERVICES = ("datafast", "hubspot", "zendesk", "slack", "webhook")

DATAFAST_KEY = "df_test_0123456789abcdef"
HUBSPOT_TOKEN = "pat-na1-test-token-0123456789"
ZENDESK_EMAIL = "agent@example.com"
ZENDESK_TOKEN = "zd-test-token-0123456789"
SLACK_HOOK_PATH = "/slack/hook"
# A receiver of the outbound webhook (OUTBOUND_WEBHOOK_URL): keeps what it is sent.
WEBHOOK_RECEIVER_PATH = "/webhook/receiver"

# Properties every HubSpot portal has on contacts.
HUBSPOT_DEFAULT_PROPERTIES = frozenset(
    {
        "email",
        "firstname",
        "lastname",
        "phone",
        "company",
        "website",
        "lifecyclestage",
        "hs_object_id",
        "createdate",
        "lastmodifieddate",
    }
)


@dataclass
class Recorded:
    """One request as the fake received it."""

    service: str
    method: str
    path: str  # the full path, prefix included
    route: str  # the path after the service prefix
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any
    mono: float  # time.monotonic() at arrival
    wall: float  # time.time() at arrival
    status: int = 0  # what the fake answered

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Delivery:
    """One request the outbound webhook's receiver took: what a receiver verifies."""

    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Rule:
    """A scripted answer for the next ``times`` matching requests (``None``: every one)."""

    service: str
    status: int | None  # None: behave for real (used with ``delay``)
    match: str | None = None  # substring of "path\nbody"
    method: str | None = None
    times: int | None = 1
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str | None = None
    delay: float = 0.0

    def matches(self, service: str, method: str, path: str, body: bytes, at: float) -> bool:
        """Whether this rule answers the request (``at``: its arrival, time.monotonic())."""
        if self.service != service or (self.times is not None and self.times <= 0):
            return False
        if self.method and self.method.upper() != method:
            return False
        return self.match is None or self.match in f"{path}\n{body.decode('utf-8', 'replace')}"


# Linux's SO_TIMESTAMPNS (asm-generic value, x86-64 and arm64); the socket module does not
# name it. Its control message has the same number.
SO_TIMESTAMPNS = 35
ARRIVAL_KEY = "fake.arrived"  # environ key: time.time() at which the request reached the socket


def socket_arrival(connection: socket.socket) -> float:
    """time.time() at which the kernel received the first bytes of the next request on
    ``connection`` (waits for them without taking them), or now when it gives no stamp.
    The first bytes: no client here pipelines requests, so a handler that is ready for the
    next request has nothing of it buffered yet."""
    try:
        _data, ancillary, _flags, _addr = connection.recvmsg(
            1, socket.CMSG_SPACE(16), socket.MSG_PEEK
        )
    except OSError:
        return time.time()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            if seconds:
                return seconds + nanoseconds / 1e9
    return time.time()


class _ArrivalStampingHandler(WSGIRequestHandler):
    """Stamps each request with when it reached the server's socket, the moment a provider
    counts it against a quota. The handler thread itself can run much later: this server
    shares a Python process (and its GIL) with the test's own load, which delayed it by up to
    78 ms in the fault suite's rate test, a delay a real provider's edge does not add."""

    arrived: float = 0.0

    def handle_one_request(self) -> None:
        self.arrived = socket_arrival(self.connection)
        super().handle_one_request()

    def make_environ(self) -> Any:
        environ = super().make_environ()
        environ[ARRIVAL_KEY] = self.arrived
        return environ


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def html_to_text(markup: str) -> str:
    """Roughly what Zendesk stores as ``body`` for an ``html_body``."""
    text = re.sub(r"<\s*(br|/p|/li|/h\d|/ul|/ol)\s*/?>", "\n", markup, flags=re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    text = html.unescape(text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class FakeUpstream:
    """The fake server. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        datafast_key: str = DATAFAST_KEY,
        datafast_website_id: str | None = None,
        hubspot_token: str = HUBSPOT_TOKEN,
        zendesk_email: str = ZENDESK_EMAIL,
        zendesk_token: str = ZENDESK_TOKEN,
    ) -> None:
        self.datafast_key = datafast_key
        self.datafast_website_id = datafast_website_id
        self.hubspot_token = hubspot_token
        self.zendesk_email = zendesk_email
        self.zendesk_token = zendesk_token
        self._lock = threading.RLock()
        self._ids = itertools.count(1001)
        self.requests: list[Recorded] = []
        self.rules: list[Rule] = []
        self.visitors: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}  # id -> HubSpot object
        self.notes: dict[str, dict[str, Any]] = {}  # id -> HubSpot object with associations
        self.contact_properties: set[str] = set(HUBSPOT_DEFAULT_PROPERTIES)
        self.property_groups: set[str] = set()
        self.tickets: dict[str, list[dict[str, Any]]] = {}  # ticket id -> comments
        self.slack: list[dict[str, Any]] = []
        self.webhooks: list[Delivery] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # Lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request is noise
        self._server = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_ArrivalStampingHandler
        )
        # Accepted connections inherit it: the kernel stamps every request's arrival.
        self._server.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def base_url(self, service: str) -> str:
        if service == "slack":
            return f"{self.url}{SLACK_HOOK_PATH}"
        if service == "webhook":
            return f"{self.url}{WEBHOOK_RECEIVER_PATH}"
        return f"{self.url}/{service}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing the service at this fake, with its credentials."""
        return {
            "DATAFAST_API_KEY": self.datafast_key,
            "DATAFAST_WEBSITE_ID": self.datafast_website_id or "",
            "DATAFAST_BASE_URL": self.base_url("datafast"),
            "HUBSPOT_TOKEN": self.hubspot_token,
            "HUBSPOT_BASE_URL": self.base_url("hubspot"),
            "ZENDESK_BASE_URL": self.base_url("zendesk"),
            "ZENDESK_EMAIL": self.zendesk_email,
            "ZENDESK_API_TOKEN": self.zendesk_token,
            "SLACK_WEBHOOK_URL": self.base_url("slack"),
        }

    # Scripting ---------------------------------------------------------------------------

    def fail(
        self,
        service: str,
        status: int,
        *,
        times: int | None = 1,
        match: str | None = None,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | str | dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Rule:
        """Answer the next ``times`` matching requests with ``status`` (``None``: always).

        ``body`` defaults to the provider's own error envelope for that status; a dict is sent
        as JSON, bytes or str as they are (``content_type`` then says what they are).
        """
        if isinstance(body, dict):
            raw: bytes | None = json.dumps(body).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = body
        rule = Rule(
            service=service,
            status=status,
            match=match,
            method=method,
            times=times,
            headers=dict(headers or {}),
            body=raw,
            content_type=content_type,
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    def delay(
        self,
        service: str,
        seconds: float,
        *,
        times: int | None = 1,
        match: str | None = None,
        method: str | None = None,
    ) -> Rule:
        """Behave for real (the effect happens at once) but answer ``seconds`` late."""
        rule = Rule(
            service=service, status=None, match=match, method=method, times=times, delay=seconds
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    # State set-up ------------------------------------------------------------------------

    def add_visitor(self, profile: dict[str, Any]) -> str:
        """Store a DataFast ``data`` object (seed 000 shape); returns its ``visitorId``."""
        with self._lock:
            self.visitors[str(profile["visitorId"])] = profile
        return str(profile["visitorId"])

    def add_contact(self, email: str, **properties: str) -> str:
        """A HubSpot contact that exists before the test; returns its id."""
        with self._lock:
            return self._create_contact({"email": email, **properties})["id"]

    def define_contact_properties(self, names: Iterator[str] | list[str]) -> None:
        """As if ``visitor-enrich hubspot-setup`` had created these custom properties."""
        with self._lock:
            self.contact_properties.update(names)

    def add_ticket(self, ticket_id: str, description: str | None = None) -> None:
        """A Zendesk ticket; with ``description`` it starts with the requester's comment."""
        with self._lock:
            comments = self.tickets.setdefault(str(ticket_id), [])
            if description:
                comments.append(self._comment(description, None, public=True, author=1))

    # Reading -----------------------------------------------------------------------------

    def requests_to(
        self,
        service: str,
        *,
        method: str | None = None,
        contains: str | None = None,
        route: str | None = None,
    ) -> list[Recorded]:
        """Recorded requests to ``service``, optionally by method, route prefix, or text in
        the path or body."""
        with self._lock:
            found = [r for r in self.requests if r.service == service]
        if method:
            found = [r for r in found if r.method == method.upper()]
        if route:
            found = [r for r in found if r.route.startswith(route)]
        if contains:
            found = [r for r in found if contains in r.path or contains in r.text]
        return found

    def zendesk_comments(self, ticket_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self.tickets.get(str(ticket_id), [])]

    def hubspot_notes(self, contains: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            notes = [json.loads(json.dumps(n)) for n in self.notes.values()]
        if contains:
            notes = [n for n in notes if contains in n["properties"].get("hs_note_body", "")]
        return notes

    def hubspot_contact(self, email: str) -> dict[str, Any] | None:
        with self._lock:
            for contact in self.contacts.values():
                if contact["properties"].get("email", "").lower() == email.lower():
                    return json.loads(json.dumps(contact))
        return None

    def slack_messages(self, contains: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            messages = list(self.slack)
        if contains:
            messages = [m for m in messages if contains in json.dumps(m)]
        return messages

    # WSGI --------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        response = self._handle(request)
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        path = request.path
        body = request.get_data(cache=True)
        service = path.strip("/").split("/", 1)[0]
        handlers = self._handlers()
        route = path[len(service) + 1 :] if service in handlers else path
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        handled = time.time()
        wall = float(request.environ.get(ARRIVAL_KEY) or handled)
        mono = time.monotonic() - (handled - wall)
        record = Recorded(
            service=service,
            method=request.method,
            path=path,
            route=route,
            query=dict(request.args),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
            mono=mono,
            wall=wall,
        )
        with self._lock:
            self.requests.append(record)
            rule = next(
                (r for r in self.rules if r.matches(service, request.method, path, body, mono)),
                None,
            )
            if rule is not None and rule.times is not None:
                rule.times -= 1
        if rule is not None and rule.status is not None:
            response = self._scripted(service, rule)
        else:
            handler = handlers.get(service)
            if handler is None:
                response = Response("no such service", status=404)
            else:
                with self._lock:
                    response = handler(request, route, parsed, body)
        if rule is not None and rule.delay:
            time.sleep(rule.delay)
        record.status = response.status_code
        return response

    def _handlers(self) -> dict[str, Callable[[Request, str, Any, bytes], Response]]:
        """The services this fake plays, by path prefix (a subclass adds its own)."""
        return {
            "datafast": self._datafast,
            "hubspot": self._hubspot,
            "zendesk": self._zendesk,
            "slack": self._slack,
            "webhook": self._webhook_receiver,
        }

    def _scripted(self, service: str, rule: Rule) -> Response:
        assert rule.status is not None
        if rule.body is not None:
            body, content_type = rule.body, rule.content_type or "text/plain"
        else:
            body, content_type = self._error_body(service, rule.status), "application/json"
            if service == "slack":
                content_type = "text/html"
        return Response(body, status=rule.status, headers=rule.headers, content_type=content_type)

    @staticmethod
    def _error_body(service: str, status: int) -> bytes:
        messages = {
            400: "Bad request",
            401: "Invalid or missing API key",
            403: "Missing permission",
            404: "Not found",
            429: "Too many requests",
            500: "Internal server error",
            502: "Bad gateway",
            503: "Service unavailable",
        }
        message = messages.get(status, "Error")
        if service == "datafast":
            return json.dumps(
                {"status": "error", "error": {"code": status, "message": message}}
            ).encode()
        if service == "hubspot":
            category = {429: "RATE_LIMITS", 401: "INVALID_AUTHENTICATION"}.get(status, "ERROR")
            return json.dumps(
                {
                    "status": "error",
                    "message": message,
                    "correlationId": str(uuid.uuid4()),
                    "category": category,
                }
            ).encode()
        if service == "zendesk":
            return json.dumps({"error": message.replace(" ", ""), "description": message}).encode()
        return {429: b"rate_limited", 500: b"internal_error"}.get(status, b"invalid_payload")

    # DataFast ----------------------------------------------------------------------------

    @staticmethod
    def _df_error(status: int, message: str) -> Response:
        return Response(
            json.dumps({"status": "error", "error": {"code": status, "message": message}}),
            status=status,
            content_type="application/json",
        )

    def _datafast(self, request: Request, route: str, _: Any, __: bytes) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.datafast_key}":
            return self._df_error(401, "Invalid API key")
        if self.datafast_key.startswith("dft_") and not request.args.get("websiteId"):
            return self._df_error(400, "websiteId is required with an account token")
        if request.method == "GET" and route == "/api/v1/analytics/realtime/map":
            # Seed 002's documented shape with nobody active (checks use it as a cheap read).
            empty = {
                "count": 0,
                "visitors": [],
                "hasConversionPredictions": False,
                "recentEvents": [],
                "recentPayments": [],
            }
            return Response(
                json.dumps({"status": "success", "data": empty}),
                status=200,
                content_type="application/json",
            )
        match = re.fullmatch(r"/api/v1/visitors/([^/]+)", route)
        if request.method != "GET" or match is None:
            return self._df_error(404, "Route not found")
        visitor_id = match.group(1)
        if not _is_uuid(visitor_id):
            return self._df_error(400, "Invalid visitorId: must be a UUID v4")
        profile = self.visitors.get(visitor_id)
        if profile is None:
            return self._df_error(404, "No pageviews found for this visitor")
        return Response(
            json.dumps({"status": "success", "data": profile}),
            status=200,
            content_type="application/json",
        )

    # HubSpot -----------------------------------------------------------------------------

    @staticmethod
    def _hs(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json")

    def _hs_error(self, status: int, message: str, category: str) -> Response:
        return self._hs(
            {
                "status": "error",
                "message": message,
                "correlationId": str(uuid.uuid4()),
                "category": category,
            },
            status,
        )

    def _hs_object(self, properties: dict[str, Any]) -> dict[str, Any]:
        object_id = str(next(self._ids))
        now = _now_iso()
        return {
            "id": object_id,
            "properties": {
                **{k: str(v) for k, v in properties.items()},
                "hs_object_id": object_id,
                "createdate": now,
                "lastmodifieddate": now,
            },
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
        }

    def _create_contact(self, properties: dict[str, Any]) -> dict[str, Any]:
        contact = self._hs_object(properties)
        self.contacts[contact["id"]] = contact
        return contact

    def _unknown_properties(self, properties: dict[str, Any]) -> list[str]:
        return sorted(k for k in properties if k not in self.contact_properties)

    @staticmethod
    def _filter_ok(props: dict[str, Any], flt: dict[str, Any]) -> bool:
        name, op, value = flt.get("propertyName"), flt.get("operator"), flt.get("value")
        have = props.get(name)
        if op == "EQ":
            return have is not None and str(have).lower() == str(value).lower()
        if op == "CONTAINS_TOKEN":
            return have is not None and str(value).lower() in str(have).lower()
        if op == "HAS_PROPERTY":
            return have not in (None, "")
        raise ValueError(f"operator {op} not supported by the fake")

    def _search(self, objects: dict[str, dict[str, Any]], body: Any) -> Response:
        if not isinstance(body, dict):
            return self._hs_error(400, "Invalid input JSON", "VALIDATION_ERROR")
        groups = body.get("filterGroups") or []
        try:
            found = [
                obj
                for obj in objects.values()
                if not groups
                or any(
                    all(self._filter_ok(obj["properties"], f) for f in g.get("filters", []))
                    for g in groups
                )
            ]
        except ValueError as exc:
            return self._hs_error(400, str(exc), "VALIDATION_ERROR")
        limit = int(body.get("limit") or 10)
        wanted = body.get("properties")
        results = []
        for obj in found[:limit]:
            shown = dict(obj)
            if wanted:
                keep = {*wanted, "hs_object_id", "createdate", "lastmodifieddate"}
                shown["properties"] = {k: v for k, v in obj["properties"].items() if k in keep}
            shown.pop("associations", None)
            results.append(shown)
        return self._hs({"total": len(found), "results": results})

    def _hubspot(self, request: Request, route: str, body: Any, _: bytes) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.hubspot_token}":
            return self._hs_error(
                401,
                "Authentication credentials not found.",
                "INVALID_AUTHENTICATION",
            )
        method = request.method
        if method == "POST" and route == "/crm/v3/objects/contacts/search":
            return self._search(self.contacts, body)
        if method == "POST" and route == "/crm/v3/objects/notes/search":
            return self._search(self.notes, body)
        if method == "POST" and route == "/crm/v3/objects/contacts":
            properties = (body or {}).get("properties") or {}
            unknown = self._unknown_properties(properties)
            if unknown:
                return self._hs_error(
                    400,
                    f"Property values were not valid: Property {unknown[0]!r} does not exist",
                    "VALIDATION_ERROR",
                )
            email = str(properties.get("email") or "")
            if email and self.hubspot_contact(email) is not None:
                existing = self.hubspot_contact(email)
                assert existing is not None
                return self._hs_error(
                    409, f"Contact already exists. Existing ID: {existing['id']}", "CONFLICT"
                )
            return self._hs(self._create_contact(properties), 201)
        patch = re.fullmatch(r"/crm/v3/objects/contacts/(\d+)", route)
        if method == "PATCH" and patch:
            contact = self.contacts.get(patch.group(1))
            if contact is None:
                return self._hs_error(404, "resource not found", "OBJECT_NOT_FOUND")
            properties = (body or {}).get("properties") or {}
            unknown = self._unknown_properties(properties)
            if unknown:
                return self._hs_error(
                    400,
                    f"Property values were not valid: Property {unknown[0]!r} does not exist",
                    "VALIDATION_ERROR",
                )
            contact["properties"].update({k: str(v) for k, v in properties.items()})
            contact["updatedAt"] = contact["properties"]["lastmodifieddate"] = _now_iso()
            return self._hs(contact)
        if method == "POST" and route == "/crm/v3/objects/notes":
            return self._create_note(body)
        read = re.fullmatch(r"/crm/v3/objects/contacts/(\d+)", route)
        if method == "GET" and read:
            contact = self.contacts.get(read.group(1))
            if contact is None:
                return self._hs_error(404, "resource not found", "OBJECT_NOT_FOUND")
            # The requested properties, null when unset, plus the ones HubSpot always returns.
            wanted = [p for p in request.args.get("properties", "").split(",") if p]
            always = ("hs_object_id", "createdate", "lastmodifieddate")
            shown = {p: contact["properties"].get(p) for p in [*wanted, *always]}
            return self._hs({**contact, "properties": shown})
        if method == "GET" and route.startswith("/crm/v3/properties/contacts/"):
            name = route.rsplit("/", 1)[1]
            if name in self.contact_properties:
                return self._hs({"name": name, "type": "string"})
            return self._hs_error(404, f"Property {name} does not exist", "OBJECT_NOT_FOUND")
        if method == "POST" and route == "/crm/v3/properties/notes/groups":
            return self._hs(body, 201)
        if method == "POST" and route == "/crm/v3/properties/notes":
            return self._hs(body, 201)
        if method == "POST" and route == "/crm/v3/properties/contacts/groups":
            name = str((body or {}).get("name"))
            if name in self.property_groups:
                return self._hs_error(409, f"group {name} already exists", "CONFLICT")
            self.property_groups.add(name)
            return self._hs(body, 201)
        if method == "POST" and route == "/crm/v3/properties/contacts":
            name = str((body or {}).get("name"))
            if name in self.contact_properties:
                return self._hs_error(409, f"property {name} already exists", "CONFLICT")
            self.contact_properties.add(name)
            return self._hs(body, 201)
        return self._hs_error(404, f"no route {method} {route}", "OBJECT_NOT_FOUND")

    def _create_note(self, body: Any) -> Response:
        properties = (body or {}).get("properties") or {}
        if not properties.get("hs_timestamp"):
            return self._hs_error(
                400, "Property values were not valid: hs_timestamp is required", "VALIDATION_ERROR"
            )
        if len(str(properties.get("hs_note_body", ""))) > 65_536:
            return self._hs_error(400, "hs_note_body is too long", "VALIDATION_ERROR")
        associations = (body or {}).get("associations") or []
        for assoc in associations:
            to = str((assoc.get("to") or {}).get("id"))
            if to not in self.contacts:
                return self._hs_error(
                    400, f"association target {to} does not exist", "VALIDATION_ERROR"
                )
        note = self._hs_object(properties)
        note["associations"] = associations
        self.notes[note["id"]] = note
        shown = {k: v for k, v in note.items() if k != "associations"}
        return self._hs(shown, 201)

    # Zendesk -----------------------------------------------------------------------------

    @staticmethod
    def _zd(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json")

    def _comment(
        self, text: str, html_body: str | None, *, public: bool, author: int
    ) -> dict[str, Any]:
        markup = html_body if html_body is not None else f"<p>{html.escape(text)}</p>"
        plain = html_to_text(markup) if html_body is not None else text
        return {
            "id": next(self._ids),
            "type": "Comment",
            "author_id": author,
            "body": plain,
            "html_body": markup,
            "plain_body": plain,
            "public": public,
            "attachments": [],
            "created_at": _now_iso(),
        }

    def _zendesk(self, request: Request, route: str, body: Any, _: bytes) -> Response:
        expected = base64.b64encode(
            f"{self.zendesk_email}/token:{self.zendesk_token}".encode()
        ).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return self._zd({"error": "Couldn't authenticate you"}, 401)
        if request.method == "GET" and route == "/api/v2/users/me.json":
            return self._zd({"user": {"id": 1, "email": self.zendesk_email, "role": "agent"}})
        put = re.fullmatch(r"/api/v2/tickets/(\d+)\.json", route)
        if request.method == "PUT" and put:
            ticket_id = put.group(1)
            comment_in = ((body or {}).get("ticket") or {}).get("comment")
            if not isinstance(comment_in, dict) or not (
                comment_in.get("html_body") or comment_in.get("body")
            ):
                return self._zd(
                    {
                        "error": "RecordInvalid",
                        "description": "Record validation errors",
                        "details": {"base": [{"description": "Comment: cannot be blank"}]},
                    },
                    422,
                )
            comment = self._comment(
                str(comment_in.get("body") or ""),
                comment_in.get("html_body"),
                public=bool(comment_in.get("public", True)),
                author=42,
            )
            self.tickets.setdefault(ticket_id, []).append(comment)
            audit_event = {k: comment[k] for k in ("id", "type", "body", "html_body", "public")}
            return self._zd(
                {
                    "ticket": {"id": int(ticket_id), "status": "open", "updated_at": _now_iso()},
                    "audit": {
                        "id": next(self._ids),
                        "ticket_id": int(ticket_id),
                        "created_at": _now_iso(),
                        "author_id": 42,
                        "events": [audit_event],
                    },
                }
            )
        listing = re.fullmatch(r"/api/v2/tickets/(\d+)/comments\.json", route)
        if request.method == "GET" and listing:
            comments = list(self.tickets.get(listing.group(1), []))
            if request.args.get("sort_order") == "desc":
                comments.reverse()
            return self._zd(
                {
                    "comments": comments,
                    "next_page": None,
                    "previous_page": None,
                    "count": len(comments),
                }
            )
        return self._zd({"error": "InvalidEndpoint", "description": "Not found"}, 404)

    # Slack -------------------------------------------------------------------------------

    def _slack(self, request: Request, route: str, body: Any, _: bytes) -> Response:
        if request.path != SLACK_HOOK_PATH:
            return Response("no_service", status=404, content_type="text/html")
        if request.method != "POST":
            return Response("invalid_request", status=405, content_type="text/html")
        if not isinstance(body, dict):
            return Response("invalid_payload", status=400, content_type="text/html")
        if not body.get("text") and not body.get("blocks"):
            return Response("no_text", status=400, content_type="text/html")
        self.slack.append(body)
        return Response("ok", status=200, content_type="text/html")

    # The outbound webhook's receiver ------------------------------------------------------

    def _webhook_receiver(self, request: Request, route: str, body: Any, _: bytes) -> Response:
        if request.path != WEBHOOK_RECEIVER_PATH or request.method != "POST":
            return Response("not found", status=404)
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.webhooks.append(Delivery(headers, request.get_data(cache=True)))
        return Response(status=204)

    def webhook_deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self.webhooks)


@contextmanager
def running_fake(**kwargs: Any) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


# Visitor profiles -----------------------------------------------------------------------


def seed_000_profile() -> dict[str, Any]:
    """The ``data`` of seed 000's documented success response, verbatim."""
    return {
        "visitorId": "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd",
        "identity": {
            "country": "US",
            "browser": {"name": "Chrome"},
            "device": {"type": "desktop"},
        },
        "activity": {
            "visitCount": 3,
            "pageViewCount": 8,
            "completedGoals": [],
            "visitedPages": [],
        },
        "profile": {
            "userId": "user_123",
            "metadata": {"plan": "pro"},
            "identifiedAt": "2026-05-21T00:00:00.000Z",
        },
        "prediction": {
            "score": 72,
            "conversionRate": 0.0138,
            "expectedValue": 3.09,
            "confidence": 0.831,
        },
    }


def full_profile(
    visitor_id: str | None = None,
    *,
    score: float | None = 85,
    referrer: str = "https://news.ycombinator.com/",
    utm_source: str = "hn-launch-week",
    visit_count: int = 17,
    pages: int = 12,
) -> dict[str, Any]:
    """A profile with every documented field set (and the undocumented ``referrer``).

    ``visitedPages`` holds ``pages`` entries oldest first, ``/page-0`` ... ``/page-{n-1}``,
    one hour apart from 2026-11-20 08:00 UTC, the newest being ``/pricing`` when pages > 0.
    """
    visitor_id = visitor_id or str(uuid.uuid4())
    visited = [
        {
            "url": f"https://example.com/page-{i}"
            if i < pages - 1
            else "https://example.com/pricing",
            "timestamp": f"2026-11-20T{8 + i // 2:02d}:{(i % 2) * 30:02d}:00.000Z",
        }
        for i in range(pages)
    ]
    return {
        "visitorId": visitor_id,
        "identity": {
            "country": "Germany",
            "countryCode": "DE",
            "region": "Berlin",
            "city": "Berlin",
            "referrer": referrer,
            "params": {
                "utm_source": utm_source,
                "utm_medium": "social",
                "utm_campaign": "black-friday",
                "utm_term": "journey analytics",
                "utm_content": "banner-a",
                "ref": "producthunt",
                "via": "partner-42",
            },
            "adClickIds": {"gclid": "Cj0KCQ-test-gclid", "fbclid": "IwAR-test-fbclid"},
            "browser": {"name": "Firefox", "version": "133.0"},
            "os": {"name": "Mac OS", "version": "14.6"},
            "device": {"type": "desktop", "vendor": "Apple", "model": "Macintosh"},
            "viewport": {"width": 1512, "height": 857},
        },
        "activity": {
            "visitCount": visit_count,
            "pageViewCount": 42,
            "timeSinceFirstVisit": 3 * 24 * 3600 * 1000,
            "timeSinceCurrentVisit": 5 * 60 * 1000,
            "firstVisitAt": "2026-11-17T09:15:00.000Z",
            "lastVisitAt": "2026-11-20T14:00:00.000Z",
            "currentUrl": "https://example.com/pricing",
            "completedGoals": [
                {
                    "name": "newsletter_signup",
                    "origin": "manual",
                    "type": "custom",
                    "timestamp": "2026-11-18T10:00:00.000Z",
                },
                {
                    "name": "trial_started",
                    "origin": "payment_provider",
                    "type": "trial_started",
                    "timestamp": "2026-11-19T10:00:00.000Z",
                },
                {
                    "name": "Payment",
                    "origin": "payment_provider",
                    "type": "payment",
                    "timestamp": "2026-11-20T13:00:00.000Z",
                },
            ],
            "visitedPages": visited,
        },
        "profile": {
            "userId": "user_789",
            "metadata": {"plan": "team", "seats": 5},
            "identifiedAt": "2026-11-19T10:05:00.000Z",
        },
        "prediction": None
        if score is None
        else {"score": score, "conversionRate": 0.042, "expectedValue": 129.5, "confidence": 0.9},
    }
