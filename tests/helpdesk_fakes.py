"""The base of the fake helpdesks and chat tools: one local server that plays DataFast and
Zendesk (``tests/fakes.py``, with the fault scripting and in-flight tracking of
``tests/faults_support.py``) plus any number of ``FakeSystem``s, each under its own path
prefix (``/intercom``, ``/helpscout``...).

    with HelpdeskFake(FakeIntercom(), FakeHelpScout()) as fake:
        env = fake.env()            # every system's *_BASE_URL and credentials
        fake.system("intercom")     # the FakeIntercom, for its state and payload builders
        fake.fail("intercom", 429, headers=..., body=...)   # the vendor's own 429

A ``FakeSystem`` speaks one vendor's documented wire format: its note endpoint, its note
listing, its error envelopes; it also builds that vendor's webhook payloads and signs them its
own way, so tests send exactly what the vendor sends. State changes happen under the fake's
lock (``handle`` is called with it held).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from faults_support import FaultyUpstream
from werkzeug.wrappers import Request, Response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body) if body is not None else b"",
        status=status,
        headers=headers or {},
        content_type="application/json",
    )


class FakeSystem(ABC):
    """One vendor's API, served under ``/<name>`` by a ``HelpdeskFake``."""

    name: str

    def __init__(self) -> None:
        self.base_url = ""  # set when the server starts

    @abstractmethod
    def env(self) -> dict[str, str]:
        """The service's variables pointing at this fake (``self.base_url``)."""

    @abstractmethod
    def handle(self, request: Request, route: str, body: Any) -> Response:
        """Answer one request; ``route`` is the path after ``/<name>``."""

    @abstractmethod
    def error_body(self, status: int) -> bytes:
        """The vendor's error envelope for a scripted ``status`` (e.g. its 429)."""


class HelpdeskFake(FaultyUpstream):
    """DataFast and Zendesk, and the given ``FakeSystem``s, on one loopback port."""

    def __init__(self, *systems: FakeSystem, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.systems = {s.name: s for s in systems}
        # ticket id -> (requester user, custom fields {field id: value})
        self.ticket_details: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def start(self) -> HelpdeskFake:
        super().start()
        for system in self.systems.values():
            system.base_url = self.base_url(system.name)
        return self

    def __enter__(self) -> HelpdeskFake:
        return self.start()

    def system(self, name: str) -> Any:
        return self.systems[name]

    def env(self) -> dict[str, str]:
        env = super().env()
        for system in self.systems.values():
            env.update(system.env())
        return env

    def _handlers(self) -> dict[str, Callable[[Request, str, Any, bytes], Response]]:
        handlers = super()._handlers()
        for name, system in self.systems.items():
            handlers[name] = lambda request, route, body, _, s=system: s.handle(
                request, route, body
            )
        return handlers

    # Zendesk's ticket show (the lookup of the event webhook), on top of the shared fake's
    # comments: ``GET /api/v2/tickets/{id}.json[?include=users]`` and ``/api/v2/users/{id}.json``.

    def add_ticket(
        self,
        ticket_id: str,
        description: str | None = None,
        *,
        requester: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """A Zendesk ticket whose show answers ``requester`` (``{"id", "email", "name"}``) and
        custom ``fields`` (field id -> value)."""
        super().add_ticket(ticket_id, description)
        user = {"id": 1, "email": "requester@example.com", "name": "Requester", **(requester or {})}
        with self._lock:
            self.ticket_details[str(ticket_id)] = (user, dict(fields or {}))

    def _zendesk(self, request: Request, route: str, body: Any, raw: bytes) -> Response:
        answer = super()._zendesk(request, route, body, raw)
        if answer.status_code != 404 or request.method != "GET":
            return answer  # handled, or refused (401) before routing
        show = re.fullmatch(r"/api/v2/tickets/(\d+)\.json", route)
        if show and show.group(1) in self.ticket_details:
            user, fields = self.ticket_details[show.group(1)]
            ticket = {
                "id": int(show.group(1)),
                "requester_id": user["id"],
                "status": "new",
                "custom_fields": [{"id": int(k), "value": v} for k, v in fields.items()],
            }
            found: dict[str, Any] = {"ticket": ticket}
            if "users" in request.args.get("include", "").split(","):
                found["users"] = [user]
            return json_response(found)
        person = re.fullmatch(r"/api/v2/users/(\d+)\.json", route)
        for user, _ in self.ticket_details.values() if person else []:
            if person and str(user["id"]) == person.group(1):
                return json_response({"user": user})
        return json_response({"error": "RecordNotFound", "description": "Not found"}, 404)

    def _error_body(self, service: str, status: int) -> bytes:  # type: ignore[override]
        system = self.systems.get(service)
        return system.error_body(status) if system else super()._error_body(service, status)


def helpdesk_settings(fake: HelpdeskFake, prefix: str, queue: str = "q", **overrides: Any) -> Any:
    """Settings pointing every system at ``fake`` (in-process tests: runtime, TestClient),
    on top of the harness's ``web_settings`` (test Redis, secret, API token)."""
    from harness import web_settings

    env = {k.lower(): v for k, v in fake.env().items() if v and not k.startswith("SLACK")}
    return web_settings(prefix, queue, **(env | overrides))


@contextmanager
def helpdesk_web(fake: HelpdeskFake, isolation: tuple[str, str], **overrides: Any) -> Iterator[Any]:
    """The web app in process (a TestClient) configured for ``fake``."""
    from fastapi.testclient import TestClient

    from worker.web import create_app

    with TestClient(create_app(helpdesk_settings(fake, *isolation, **overrides))) as client:
        yield client


@contextmanager
def helpdesk_runtime(fake: HelpdeskFake, prefix: str, **overrides: Any) -> Iterator[Any]:
    """A worker's runtime (sinks, source, store) configured for ``fake``."""
    from worker.runtime import build_runtime

    rt = build_runtime(helpdesk_settings(fake, prefix, **overrides))
    try:
        yield rt
    finally:
        rt.redis.close()
