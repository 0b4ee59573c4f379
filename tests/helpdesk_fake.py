"""``FakeHelpdesk``: the shared base of the fake helpdesk and chat-tool servers (one per
system, e.g. tests/fake_freshdesk.py), so each fake only speaks its vendor's API.

The base is a ``ScriptedServer`` (tests/fakes.py): served on a free loopback port, every
request recorded (``requests_to``), scripted failures (``fail(fake.service, status)``, answered
with the vendor's own error envelope, ``error_body``, and for 429 its own rate-limit headers,
``rate_limit_headers``) and delays (``delay``: the effect happens at once, the answer comes
late), and the requests still being answered (``in_flight``, to find and kill -9 the worker
process waiting on a held note call).

A subclass sets ``service`` and implements ``handle(request, route, body)``; it keeps its
state under ``self._lock``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from fakes import Rule, ScriptedServer
from fastapi.testclient import TestClient
from harness import REDIS_URL, TEST_SECRET
from werkzeug.wrappers import Request, Response

from config import Settings, load_settings
from worker.runtime import Runtime, build_runtime
from worker.web import create_app


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers or {}, content_type="application/json"
    )


class FakeHelpdesk(ScriptedServer, ABC):
    """One vendor's fake API under ``/``: ``fail(self.service, ...)``, ``delay``,
    ``requests_to`` and ``in_flight`` come from ``ScriptedServer`` (tests/fakes.py)."""

    service: ClassVar[str]

    @abstractmethod
    def handle(self, request: Request, route: str, body: Any) -> Response:
        """The vendor's real behaviour for one request (called under ``self._lock``)."""

    def error_body(self, status: int) -> bytes:
        """The vendor's error envelope for a scripted status."""
        return json.dumps({"message": f"error {status}"}).encode()

    def rate_limit_headers(self, status: int) -> dict[str, str]:
        """The headers the vendor sends with a 429 (or Crisp's 420)."""
        return {"Retry-After": "1"}

    def _locate(self, path: str) -> tuple[str, str]:
        return self.service, path

    def _dispatch(
        self, service: str, request: Request, route: str, parsed: Any, body: bytes
    ) -> Response:
        with self._lock:
            return self.handle(request, route, parsed)

    def _error_body(self, service: str, status: int) -> bytes:
        return self.error_body(status)

    def _scripted(self, service: str, rule: Rule) -> Response:
        response = super()._scripted(service, rule)
        if rule.status in (420, 429):
            for name, value in self.rate_limit_headers(rule.status).items():
                response.headers.setdefault(name, value)
        return response


# Settings, runtimes and web apps pointed at fakes --------------------------------------------


def fake_settings(env: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings from environment-style names (a fake's ``env()``), plus ``overrides``."""
    values: dict[str, Any] = {k.lower(): v for k, v in env.items()}
    values.update(overrides)
    return load_settings(_env_file=None, **values)


@contextmanager
def fake_runtime(env: Mapping[str, str], key_prefix: str, **overrides: Any) -> Iterator[Runtime]:
    """A worker runtime (sinks, limiter, store) on the shared Redis under ``key_prefix``."""
    settings = fake_settings(env, redis_url=REDIS_URL, redis_key_prefix=key_prefix, **overrides)
    rt = build_runtime(settings)
    try:
        yield rt
    finally:
        rt.redis.close()


@contextmanager
def fake_web(
    env: Mapping[str, str], isolation: tuple[str, str], **overrides: Any
) -> Iterator[TestClient]:
    """The web app (in process) with ``env``, its own key prefix and queue."""
    prefix, queue = isolation
    settings = fake_settings(
        env,
        redis_url=REDIS_URL,
        redis_key_prefix=prefix,
        celery_queue=queue,
        webhook_secret=TEST_SECRET,
        datafast_api_key="df_helpdesk_fake_key",
        **overrides,
    )
    with TestClient(create_app(settings)) as client:
        yield client
