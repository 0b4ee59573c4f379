"""A fake server for the seed systems the shared fake does not play.

``SeedFake`` answers under path prefixes, in the documents' wire formats:

- ``/datafast``: ``GET /api/v1/visitors/{id}`` (seed 000 envelope) and
  ``GET /api/v1/analytics/realtime/map`` (seeds 002/003), or a scripted status for the map
  (``map_status``, e.g. 404 "Website not found");
- ``/postmetric``: ``GET /api/v1/visitor?visitorId=`` (seed 001), its 400 and 401 envelopes;
- ``/rocketchat``: ``GET /api/v1/livechat/visitor.info`` (seed 004, with ``livechatData``),
  ``POST /api/v1/chat.sendMessage`` (keeps the messages per room, honours a client ``_id``),
  ``GET /api/v1/chat.getMessage``, ``GET /api/v1/me``; the 400 ``invalid-params`` and 401
  envelopes; ``X-Auth-Token``/``X-User-Id`` checked.

Slack and Zendesk come from the shared ``tests/fakes.py``; processes from ``tests/harness.py``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

DATAFAST_KEY = "df_seed_test_key"
POSTMETRIC_KEY = "pm_seed_test_key"
RC_USER_ID = "rbAXPnMktTFbNpwtJ"
RC_TOKEN = "RScctEHSmLGZGywfIhWyRpyofhKOiMoUIpimhvheU3f"
RC_WEBHOOK_TOKEN = "rc-webhook-secret-seed"

SEED_VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"

_RC_ID_CHARS = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"


# Seed documents ----------------------------------------------------------------------------


def postmetric_seed_001() -> dict[str, Any]:
    """The ``data`` of seed 001's documented success response, verbatim."""
    return {
        "visitorId": "visitor_123",
        "sessionCount": 5,
        "pageViewCount": 42,
        "firstVisit": "2024-01-15T10:30:00Z",
        "lastVisit": "2024-01-20T14:22:00Z",
        "sessions": [
            {
                "sessionId": "session_456",
                "firstVisitAt": "2024-01-15T10:30:00Z",
                "lastSeenAt": "2024-01-15T10:45:00Z",
                "pageViews": 8,
                "duration": 900,
                "device": "desktop",
                "browser": "chrome",
                "os": "windows",
                "country": "US",
            }
        ],
        "pageViews": [
            {
                "path": "/",
                "title": "Homepage",
                "timestamp": "2024-01-15T10:30:00Z",
                "referrer": "https://google.com",
            }
        ],
    }


def realtime_seed_002() -> dict[str, Any]:
    """The ``data`` of seed 002's documented success response, verbatim."""
    return {
        "count": 2,
        "visitors": [
            {
                "visitorId": SEED_VISITOR,
                "location": {"city": "Paris", "countryCode": "FR"},
                "system": {"browser": "Chrome", "device": "desktop"},
                "currentUrl": "/pricing",
            }
        ],
        "hasConversionPredictions": False,
        "recentEvents": [],
        "recentPayments": [],
    }


def rc_visitor_seed_004(
    visitor_id: str = "642fc15452492a08c3a756de", livechat_data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Seed 004's ``visitor``, plus the ``livechatData`` custom fields a server keeps."""
    visitor: dict[str, Any] = {
        "_id": visitor_id,
        "username": "guest-19",
        "status": "online",
        "ts": "2023-04-07T07:08:04.375Z",
        "_updatedAt": "2023-11-03T08:23:23.449Z",
        "name": "Livechat Visitor",
        "phone": [{"phoneNumber": "55 51 5555-5555"}],
        "token": "iNKE8a6k6cjbqWhWd",
        "visitorEmails": [{"address": "visitor@example.com"}],
        "department": "64181a0728384134ed600dcc",
    }
    if livechat_data is not None:
        visitor["livechatData"] = livechat_data
    return visitor


def rc_webhook_payload(
    room_id: str,
    visitor_id: str,
    *,
    kind: str = "LivechatSessionStart",
    custom_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Rocket.Chat livechat webhook body, as its ``sendToCRM`` builds it."""
    return {
        "type": kind,
        "_id": room_id,
        "label": "Livechat Visitor",
        "topic": None,
        "createdAt": "2026-11-22T10:00:00.000Z",
        "lastMessageAt": "2026-11-22T10:00:05.000Z",
        "tags": [],
        "customFields": {},
        "visitor": {
            "_id": visitor_id,
            "token": "iNKE8a6k6cjbqWhWd",
            "name": "Ada Lovelace",
            "username": "guest-19",
            "email": "ada@example.com",
            "phone": None,
            "department": "64181a0728384134ed600dcc",
            "ip": "203.0.113.7",
            "os": "Mac OS 14",
            "browser": "Firefox 133",
            "customFields": custom_fields or {},
        },
        "agent": {"_id": "agent1", "username": "grace", "name": "Grace", "email": "g@example.com"},
        "messages": [
            {"_id": "m1", "username": "guest-19", "msg": "Hi, a question", "ts": "2026-11-22"}
        ],
    }


def realtime_visitor(
    visitor_id: str | None = None,
    *,
    url: str = "/blog/post",
    score: float | None = None,
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "visitorId": visitor_id or str(uuid.uuid4()),
        "location": {"city": "Berlin", "region": "Berlin", "countryCode": "DE"},
        "system": {"browser": "Firefox", "os": "Mac OS", "device": "desktop"},
        "currentUrl": url,
        "profileData": profile or {},
        "conversionLikelihood": None if score is None else {"score": score, "raw": 0.04},
    }


# The fake server ---------------------------------------------------------------------------


@dataclass
class Seen:
    service: str
    method: str
    route: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    mono: float


class SeedFake:
    """DataFast (visitors, realtime map), PostMetric and Rocket.Chat on one local port."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.requests: list[Seen] = []
        self.datafast_visitors: dict[str, dict[str, Any]] = {}
        self.realtime: dict[str, Any] = {
            "count": 0,
            "visitors": [],
            "hasConversionPredictions": True,
            "recentEvents": [],
            "recentPayments": [],
        }
        self.map_status = 200
        self.postmetric_visitors: dict[str, dict[str, Any]] = {}
        self.rc_visitors: dict[str, dict[str, Any]] = {}
        self.rc_messages: dict[str, list[dict[str, Any]]] = {}  # room id -> messages
        self.rc_rooms: set[str] = set()
        self._server: Any = None

    # Lifecycle ---------------------------------------------------------------------------

    def start(self) -> SeedFake:
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SeedFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def env(self) -> dict[str, str]:
        return {
            "DATAFAST_API_KEY": DATAFAST_KEY,
            "DATAFAST_BASE_URL": f"{self.url}/datafast",
            "POSTMETRIC_API_KEY": POSTMETRIC_KEY,
            "POSTMETRIC_BASE_URL": f"{self.url}/postmetric",
            "ROCKETCHAT_BASE_URL": f"{self.url}/rocketchat",
            "ROCKETCHAT_USER_ID": RC_USER_ID,
            "ROCKETCHAT_AUTH_TOKEN": RC_TOKEN,
            "ROCKETCHAT_WEBHOOK_TOKEN": RC_WEBHOOK_TOKEN,
        }

    # State -------------------------------------------------------------------------------

    def set_realtime(
        self, visitors: list[dict[str, Any]], payments: list[dict[str, Any]] | None = None
    ) -> None:
        with self._lock:
            self.realtime = {
                "count": len(visitors),
                "visitors": visitors,
                "conversionMetrics": {"baselineConversionRate": 0.012},
                "hasConversionPredictions": True,
                "recentEvents": [],
                "recentPayments": list(payments or []),
            }

    def add_room(self, room_id: str) -> None:
        with self._lock:
            self.rc_rooms.add(room_id)
            self.rc_messages.setdefault(room_id, [])

    def room_messages(self, room_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self.rc_messages.get(room_id, [])]

    def seen(self, service: str, route: str | None = None) -> list[Seen]:
        with self._lock:
            found = [r for r in self.requests if r.service == service]
        return [r for r in found if route is None or r.route.startswith(route)]

    # WSGI --------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        service, _, rest = request.path.strip("/").partition("/")
        route = "/" + rest
        body = request.get_data(cache=True)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        seen = Seen(
            service,
            request.method,
            route,
            dict(request.args),
            {k.lower(): v for k, v in request.headers.items()},
            parsed,
            time.monotonic(),
        )
        with self._lock:
            self.requests.append(seen)
            handler = {
                "datafast": self._datafast,
                "postmetric": self._postmetric,
                "rocketchat": self._rocketchat,
            }.get(service)
            response = handler(request, route, parsed) if handler else _json({"error": "nope"}, 404)
        return response(environ, start_response)

    # DataFast ----------------------------------------------------------------------------

    def _datafast(self, request: Request, route: str, _: Any) -> Response:
        if request.headers.get("Authorization") != f"Bearer {DATAFAST_KEY}":
            return _envelope_error(401, "Invalid API key")
        if route == "/api/v1/analytics/realtime/map":
            if self.map_status != 200:
                return _envelope_error(self.map_status, "Website not found")
            return _json({"status": "success", "data": self.realtime})
        match = re.fullmatch(r"/api/v1/visitors/([^/]+)", route)
        if match is None:
            return _envelope_error(404, "Route not found")
        profile = self.datafast_visitors.get(match.group(1))
        if profile is None:
            return _envelope_error(404, "No pageviews found for this visitor")
        return _json({"status": "success", "data": profile})

    # PostMetric --------------------------------------------------------------------------

    def _postmetric(self, request: Request, route: str, _: Any) -> Response:
        if request.headers.get("Authorization") != f"Bearer {POSTMETRIC_KEY}":
            return _envelope_error(401, "Unauthorized. Invalid or missing API key.")
        if route != "/api/v1/visitor":
            return _envelope_error(404, "Not found")
        visitor_id = request.args.get("visitorId")
        if not visitor_id:
            return _envelope_error(400, "visitorId parameter is required")
        data = self.postmetric_visitors.get(visitor_id)
        if data is None:
            return _envelope_error(404, "Visitor not found")
        return _json({"status": "success", "data": data})

    # Rocket.Chat -------------------------------------------------------------------------

    def _rocketchat(self, request: Request, route: str, body: Any) -> Response:
        if (
            request.headers.get("X-Auth-Token") != RC_TOKEN
            or request.headers.get("X-User-Id") != RC_USER_ID
        ):
            return _json({"status": "error", "message": "You must be logged in to do this."}, 401)
        if route == "/api/v1/me":
            return _json({"_id": RC_USER_ID, "username": "visitor-enrich", "success": True})
        if route == "/api/v1/livechat/visitor.info":
            visitor_id = request.args.get("visitorId")
            if not visitor_id:
                return _invalid_params("must have required property 'visitorId'")
            visitor = self.rc_visitors.get(visitor_id)
            if visitor is None:
                return _json({"success": False, "error": "visitor-not-found"}, 400)
            return _json({"visitor": visitor, "success": True})
        if route == "/api/v1/chat.sendMessage" and request.method == "POST":
            message = body.get("message") if isinstance(body, dict) else None
            if not isinstance(message, dict) or not message.get("rid"):
                return _invalid_params("must have required property 'rid'")
            rid = str(message["rid"])
            if rid not in self.rc_rooms:
                return _json({"success": False, "error": "error-not-allowed"}, 400)
            mid = str(message.get("_id") or "".join(_RC_ID_CHARS[i % 54] for i in range(17)))
            if any(m["_id"] == mid for messages in self.rc_messages.values() for m in messages):
                return _json({"success": False, "error": "E11000 duplicate key error"}, 400)
            stored = {
                "_id": mid,
                "rid": rid,
                "msg": str(message.get("msg", "")),
                "ts": "2026-11-22T10:00:06.000Z",
                "u": {"_id": RC_USER_ID, "username": "visitor-enrich"},
            }
            self.rc_messages[rid].append(stored)
            return _json({"message": stored, "success": True})
        if route == "/api/v1/chat.getMessage":
            mid = request.args.get("msgId")
            if not mid:
                return _json(
                    {"success": False, "error": 'The "msgId" query parameter must be provided.'},
                    400,
                )
            for messages in self.rc_messages.values():
                for m in messages:
                    if m["_id"] == mid:
                        return _json({"message": m, "success": True})
            return _json({"success": False}, 400)
        return _json({"status": "error", "message": f'API endpoint "{route}" not found'}, 404)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _envelope_error(status: int, message: str) -> Response:
    return _json({"status": "error", "error": {"code": status, "message": message}}, status)


def _invalid_params(text: str) -> Response:
    return _json(
        {"success": False, "error": f"{text} [invalid-params]", "errorType": "invalid-params"},
        400,
    )
