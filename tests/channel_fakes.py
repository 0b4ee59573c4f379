"""One fake HTTP server playing the team channels: a Discord webhook, a Teams Workflow URL and
the Telegram Bot API, speaking their documented formats.

- Discord ``POST /discord/webhooks/{id}/{token}?wait=true``: validates the embed limits and
  that mentions are off, answers the saved message (``id``); ``GET`` the same URL answers the
  webhook object. Flood control: ``discord_limited`` answers that many 429s
  ``{"message", "retry_after", "global": false}`` with ``X-RateLimit-*`` and ``Retry-After``.
- Teams ``POST /teams/workflow``: takes the ``message`` envelope with one Adaptive Card,
  answers 202; more than 28 KB -> 413.
- Telegram ``POST /telegram/bot{token}/sendMessage``: a wrong token -> 401
  ``{"ok": false, "error_code": 401, "description": "Unauthorized"}``; text over 4,096
  characters -> 400; ``telegram_limited`` answers 429 with ``parameters.retry_after``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

from loopback import LoopbackServer
from werkzeug.wrappers import Request, Response

DISCORD_PATH = "/discord/webhooks/1234567890/discord-secret-token"
TEAMS_PATH = "/teams/workflow"
TELEGRAM_TOKEN = "123456:telegram-secret-token"
TELEGRAM_CHAT = "-1001234567890"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


class ChannelFake(LoopbackServer):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(900_000)
        self.discord: list[dict[str, Any]] = []
        self.teams: list[dict[str, Any]] = []
        self.telegram: list[dict[str, Any]] = []
        self.arrivals: dict[str, list[float]] = {"discord": [], "teams": [], "telegram": []}
        self.discord_limited = 0
        self.telegram_limited = 0
        self.retry_after = 0.5

    def env(self) -> dict[str, str]:
        return {
            "DISCORD_WEBHOOK_URL": f"{self.url}{DISCORD_PATH}",
            "TEAMS_WEBHOOK_URL": f"{self.url}{TEAMS_PATH}",
            "TELEGRAM_BASE_URL": f"{self.url}/telegram",
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "TELEGRAM_CHAT_ID": TELEGRAM_CHAT,
        }

    def messages(self, channel: str, contains: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = list(getattr(self, channel))
        return [m for m in found if contains is None or contains in json.dumps(m)]

    # Serving --------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        path = request.path
        if path == DISCORD_PATH:
            response = self._discord(request)
        elif path == TEAMS_PATH:
            response = self._teams(request)
        elif path.startswith("/telegram/bot"):
            response = self._telegram(request)
        else:
            response = Response("not found", status=404)
        return response(environ, start_response)

    def _discord(self, request: Request) -> Response:
        if request.method == "GET":
            return _json({"id": "1234567890", "type": 1, "channel_id": "555", "name": "leads"})
        with self._lock:
            self.arrivals["discord"].append(time.monotonic())
            if self.discord_limited > 0:
                self.discord_limited -= 1
                return _json(
                    {
                        "message": "You are being rate limited.",
                        "retry_after": self.retry_after,
                        "global": False,
                    },
                    429,
                    {
                        "Retry-After": str(self.retry_after),
                        "X-RateLimit-Limit": "5",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset-After": str(self.retry_after),
                        "X-RateLimit-Scope": "user",
                    },
                )
        body = request.get_json(silent=True)
        problem = _discord_problem(body, request.args.get("wait"))
        if problem:
            return _json({"message": problem, "code": 50035}, 400)
        with self._lock:
            message = {"id": str(next(self._ids)), **body}
            self.discord.append(message)
        return _json(message)

    def _teams(self, request: Request) -> Response:
        if len(request.get_data()) > 28 * 1024:
            return Response("Request Entity Too Large", status=413)
        body = request.get_json(silent=True)
        try:
            (attachment,) = body["attachments"]
            card = attachment["content"]
            ok = (
                body["type"] == "message"
                and attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
                and card["type"] == "AdaptiveCard"
                and isinstance(card["body"], list)
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            return Response("Bad payload", status=400)
        with self._lock:
            self.arrivals["teams"].append(time.monotonic())
            self.teams.append(body)
        return Response("", status=202)

    def _telegram(self, request: Request) -> Response:
        token, _, method = request.path.removeprefix("/telegram/bot").partition("/")
        if token != TELEGRAM_TOKEN:
            return _json({"ok": False, "error_code": 401, "description": "Unauthorized"}, 401)
        if method == "getMe":
            return _json(
                {"ok": True, "result": {"id": 123456, "is_bot": True, "username": "leads_bot"}}
            )
        if method != "sendMessage":
            return _json({"ok": False, "error_code": 404, "description": "Not Found"}, 404)
        body = request.get_json(silent=True) or {}
        with self._lock:
            self.arrivals["telegram"].append(time.monotonic())
            if self.telegram_limited > 0:
                self.telegram_limited -= 1
                seconds = max(1, round(self.retry_after))
                return _json(
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {seconds}",
                        "parameters": {"retry_after": seconds},
                    },
                    429,
                )
        if str(body.get("chat_id")) != TELEGRAM_CHAT:
            return _json(
                {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}, 400
            )
        text = body.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= 4096:
            return _json(
                {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"},
                400,
            )
        with self._lock:
            message = {"message_id": next(self._ids), **body}
            self.telegram.append(message)
        return _json({"ok": True, "result": {"message_id": message["message_id"]}})


def _discord_problem(body: Any, wait: str | None) -> str | None:
    if wait != "true":
        return "the service must wait for the message to be saved (?wait=true)"
    if not isinstance(body, dict):
        return "Cannot send an empty message"
    if body.get("allowed_mentions") != {"parse": []}:
        return "mentions must be off"
    if len(body.get("content") or "") > 2000:
        return "content: Must be 2000 or fewer in length."
    for embed in body.get("embeds") or []:
        if len(embed.get("title", "")) > 256 or len(embed.get("description", "")) > 4096:
            return "embeds.0: title or description too long"
        if len(embed.get("fields", [])) > 25:
            return "embeds.0.fields: Must be 25 or fewer in length."
        for f in embed.get("fields", []):
            if len(f["name"]) > 256 or len(f["value"]) > 1024 or not f["value"]:
                return "embeds.0.fields: name or value too long or empty"
    if not body.get("content") and not body.get("embeds"):
        return "Cannot send an empty message"
    return None
