"""``FakeHelpdesk``: the shared base of the fake helpdesk and chat-tool servers (one per
system, e.g. tests/fake_freshdesk.py), so each fake only speaks its vendor's API.

The base serves a werkzeug app on a free loopback port in a thread and gives every fake:

- every request recorded (``Recorded`` from tests/fakes.py: method, path, query, lower-case
  headers, raw and parsed body, arrival times, the status answered), ``requests_to`` to find
  them;
- scripted answers (``fail``): the next N matching requests get a status with the vendor's own
  error envelope (``error_body``) and, for 429, the vendor's own rate-limit headers
  (``rate_limit_headers``);
- ``delay``: behave for real (the effect happens at once) but answer late; with
  ``in_flight`` (from ``LoopbackServer``, tests/fakes.py, which also serves it) a test finds
  the worker process waiting on a held note call and kills it.

A subclass sets ``service`` and implements ``handle(request, route, body)``; it keeps its
state under ``self.lock``.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from fakes import LoopbackServer, Recorded, Rule
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


class FakeHelpdesk(LoopbackServer, ABC):
    """One vendor's fake API. Use as a context manager, or ``start()`` / ``stop()``."""

    service: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self.rules: list[Rule] = []

    # Scripting ---------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        times: int | None = 1,
        match: str | None = None,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> Rule:
        """Answer the next ``times`` matching requests (``match``: text in path or body) with
        ``status``, the vendor's error envelope (or ``body``) and, for 429, its headers."""
        all_headers = {**(self.rate_limit_headers(status) if status in (420, 429) else {})}
        all_headers.update(headers or {})
        raw = json.dumps(body).encode() if body is not None else self.error_body(status)
        rule = Rule(
            service=self.service,
            status=status,
            match=match,
            method=method,
            times=times,
            headers=all_headers,
            body=raw,
            content_type="application/json",
        )
        with self.lock:
            self.rules.append(rule)
        return rule

    def delay(
        self,
        seconds: float,
        *,
        times: int | None = 1,
        match: str | None = None,
        method: str | None = None,
    ) -> Rule:
        """Behave for real (the effect happens at once) but answer ``seconds`` late."""
        rule = Rule(
            service=self.service,
            status=None,
            match=match,
            method=method,
            times=times,
            delay=seconds,
        )
        with self.lock:
            self.rules.append(rule)
        return rule

    # Reading -----------------------------------------------------------------------------

    def requests_to(
        self, *, method: str | None = None, route: str | None = None, contains: str | None = None
    ) -> list[Recorded]:
        with self.lock:
            found = list(self.requests)
        if method:
            found = [r for r in found if r.method == method.upper()]
        if route:
            found = [r for r in found if r.route.startswith(route)]
        if contains:
            found = [r for r in found if contains in r.path or contains in r.text]
        return found

    # What a subclass says ----------------------------------------------------------------

    @abstractmethod
    def handle(self, request: Request, route: str, body: Any) -> Response:
        """The vendor's real behaviour for one request (called under ``self.lock``)."""

    def error_body(self, status: int) -> bytes:
        """The vendor's error envelope for a scripted status."""
        return json.dumps({"message": f"error {status}"}).encode()

    def rate_limit_headers(self, status: int) -> dict[str, str]:
        """The headers the vendor sends with a 429 (or Crisp's 420)."""
        return {"Retry-After": "1"}

    # Serving -----------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._answer(Request(environ))(environ, start_response)

    def _answer(self, request: Request) -> Response:
        raw = request.get_data(cache=True)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        record = Recorded(
            service=self.service,
            method=request.method,
            path=request.path,
            route=request.path,
            query=dict(request.args),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=raw,
            json=parsed,
            mono=time.monotonic(),
            wall=time.time(),
        )
        with self.lock:
            self.requests.append(record)
            rule = next(
                (
                    r
                    for r in self.rules
                    if r.matches(self.service, request.method, request.path, raw)
                ),
                None,
            )
            if rule is not None and rule.times is not None:
                rule.times -= 1
            if rule is not None and rule.status is not None:
                response = Response(
                    rule.body or b"",
                    status=rule.status,
                    headers=rule.headers,
                    content_type=rule.content_type or "application/json",
                )
            else:
                response = self.handle(request, request.path, parsed)
        if rule is not None and rule.delay:
            time.sleep(rule.delay)
        record.status = response.status_code
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
