"""How requests leave this service: one shared ``httpx.Client`` per process, timeouts, size
caps, the shared rate limit, and the mapping of HTTP outcomes onto ``worker.errors``.

Sources and sinks build requests and parse answers; they never talk to httpx directly.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from pydantic import SecretStr

from config import Rate, Settings
from worker import health, metrics
from worker.circuit import CircuitBreaker
from worker.errors import (
    AuthFailed,
    BadResponse,
    RateLimited,
    Rejected,
    Unavailable,
    UpstreamError,
)
from worker.ratelimit import Grant, SharedRateLimiter

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 86400.0
USER_AGENT = "visitor-enrich/0.1 (+https://github.com/visitor-enrich/visitor-enrich)"

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def shared_client(settings: Settings) -> httpx.Client:
    """The process's one HTTP client (connection pool), created on first use."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                timeout=httpx.Timeout(
                    settings.http_read_timeout, connect=settings.http_connect_timeout
                ),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                headers={"User-Agent": USER_AGENT},
                follow_redirects=False,
            )
        return _client


def close_shared_client() -> None:
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
            _client = None


def _forget_client_after_fork() -> None:
    # A pool inherited through fork shares sockets with the parent; start afresh instead.
    global _client
    _client = None


os.register_at_fork(after_in_child=_forget_client_after_fork)


def secret_text(value: SecretStr | None) -> str:
    """A secret's value for a request header, or "" when it is not set."""
    return value.get_secret_value() if value is not None else ""


def bearer_headers(token: SecretStr | None) -> dict[str, str]:
    """Headers of the JSON APIs that take ``Authorization: Bearer`` (DataFast, PostMetric,
    HubSpot)."""
    return {"Authorization": f"Bearer {secret_text(token)}", "Accept": "application/json"}


@dataclass(frozen=True)
class UpstreamResponse:
    """A completed response whose body was read within the size cap."""

    service: str
    status_code: int
    headers: httpx.Headers
    content: bytes
    elapsed: float = 0.0
    request_info: str = field(default="", repr=False)

    def json(self) -> Any:
        """The body as JSON, or ``BadResponse`` when it is not JSON at all."""
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError):
            snippet = self.content[:80].decode("utf-8", "replace")
            raise BadResponse(
                f"answered {self.status_code} with a body that is not JSON: {snippet!r}",
                service=self.service,
                status_code=self.status_code,
            ) from None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf", "nan" or 1e400 are not waits anyone meant; a day is the longest we honour.
        return min(max(0.0, seconds), MAX_WAIT_SECONDS) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return min(max(0.0, when.timestamp() - (time.time() if now is None else now)), MAX_WAIT_SECONDS)


def parse_reset(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds until a rate-limit reset header says the quota returns.

    Providers send either seconds from now or a unix time; a number past 10^9 is a time.
    HubSpot and PostMetric-style headers may also be milliseconds since the epoch.
    """
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return parse_retry_after(value, now=now)
    current = time.time() if now is None else now
    if not math.isfinite(number):
        return None
    if number > 1e12:
        number /= 1000.0
    if number > 1e9:
        return min(max(0.0, number - current), MAX_WAIT_SECONDS)
    return min(max(0.0, number), MAX_WAIT_SECONDS)


# 429, and Crisp's "420 Enhance Your Calm".
RATE_LIMIT_STATUSES = frozenset({429, 420})

_WAIT_SECONDS = re.compile(r"wait (\d+(?:\.\d+)?) seconds?", re.IGNORECASE)


def _body_retry_after(content: bytes) -> float | None:
    """``retry_after`` seconds in a JSON error body: Discord's ``{"retry_after": 1.5}`` and
    Telegram's ``{"parameters": {"retry_after": 35}}``."""
    if not content.lstrip().startswith(b"{"):
        return None
    try:
        body = json.loads(content[:10_000])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    parameters = body.get("parameters")
    for value in (
        body.get("retry_after"),
        parameters.get("retry_after") if isinstance(parameters, dict) else None,
    ):
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return min(float(value), MAX_WAIT_SECONDS)
    return None


def wait_hint(response: UpstreamResponse) -> float | None:
    """How long the upstream asks us to wait, from whichever header or body says so."""
    headers = response.headers
    # Retry-After (RFC 9110); Help Scout's X-RateLimit-Retry-After; Discord's
    # X-RateLimit-Reset-After (seconds, fractional).
    for name in ("retry-after", "x-ratelimit-retry-after", "x-ratelimit-reset-after"):
        seconds = parse_retry_after(headers.get(name))
        if seconds is not None:
            return seconds
    for name in ("x-ratelimit-reset", "x-rate-limit-reset", "ratelimit-reset"):
        seconds = parse_reset(headers.get(name))
        if seconds is not None:
            return seconds
    if response.status_code in RATE_LIMIT_STATUSES:
        seconds = _body_retry_after(response.content)
        if seconds is not None:
            return seconds
    # Rocket.Chat says "error-too-many-requests: You must wait 12 seconds" in the body.
    match = _WAIT_SECONDS.search(response.content[:2000].decode("utf-8", "replace"))
    return float(match.group(1)) if match else None


def quota_exhausted(response: UpstreamResponse) -> bool:
    for name in ("x-ratelimit-remaining", "x-rate-limit-remaining", "ratelimit-remaining"):
        value = response.headers.get(name)
        if value is not None:
            try:
                return float(value) <= 0
            except ValueError:
                return False
    return False


def _listed_errors(errors: Any) -> str:
    """``field: message`` of the first few entries of an ``errors`` list, or ""."""
    if not isinstance(errors, list):
        return ""
    parts = []
    for item in errors[:3]:
        if isinstance(item, dict):
            words = [str(item[k]) for k in ("field", "message") if item.get(k)]
            if words:
                parts.append(": ".join(words))
    return "; ".join(parts)


def error_message(response: UpstreamResponse) -> str:
    """The upstream's own words for an error, from the envelopes the providers document."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])  # DataFast, PostMetric
        if error is True and isinstance(body.get("reason"), str):
            return str(body["reason"])  # Crisp: {"error": true, "reason": "session_not_found"}
        detail = _listed_errors(body.get("errors"))
        if detail:
            # Freshdesk's {"description": "Validation failed", "errors": [{field, message}]}
            # and GraphQL's {"errors": [{"message"}]} (Plain).
            lead = body.get("description") or body.get("message")
            return f"{lead}: {detail}" if isinstance(lead, str) and lead else detail
        for key in ("message", "description", "error"):  # HubSpot, Zendesk, Rocket.Chat
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
        if isinstance(error, str) and error:
            return error
    text = response.content[:200].decode("utf-8", "replace").strip()
    return text or httpx.codes.get_reason_phrase(response.status_code) or "no message"


class ServiceClient:
    """Requests to one upstream service, under its shared rate limit and error mapping."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        settings: Settings,
        limiter: SharedRateLimiter,
        rate: Rate,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        client: httpx.Client | None = None,
        auth_hint: str | None = None,
    ) -> None:
        """``auth_hint`` ("check X_API_TOKEN") is appended to every 401/403 of this service."""
        self.service = service
        self.base_url = base_url.rstrip("/")
        self._settings = settings
        self._limiter = limiter
        self._breaker = CircuitBreaker(
            limiter.redis,
            limiter.prefix,
            threshold=settings.circuit_failure_threshold,
            window=settings.circuit_window_seconds,
            cooldown=settings.circuit_cooldown_seconds,
        )
        self._rate = rate
        self._headers = headers or {}
        self._auth = auth
        self._client = client
        self._auth_hint = auth_hint

    @property
    def rate(self) -> Rate:
        return self._rate

    @property
    def client(self) -> httpx.Client:
        return self._client or shared_client(self._settings)

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        max_wait: float | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send one request and return its 2xx response, or raise an ``UpstreamError``.

        ``content`` is a body sent byte for byte (one that is signed), ``headers`` are added
        to the client's own for this request only.
        ``Throttled`` (our limiter, a provider pause or an open circuit) means nothing was sent.
        """
        try:
            response, failures_counted = self._request(
                method,
                path,
                params=params,
                json_body=json_body,
                max_wait=max_wait,
                content=content,
                headers=headers,
            )
        except UpstreamError as exc:
            health.record_error(self._limiter.redis, self._limiter.prefix, self.service, str(exc))
            if isinstance(exc, Unavailable) and self._breaker.record_failure(self.service):
                log.warning("circuit opened", extra={"service": self.service})
            raise
        self._breaker.record_success(self.service, failures_counted)
        return response

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None,
        json_body: Any,
        max_wait: float | None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[UpstreamResponse, bool]:
        """The response, and whether the circuit breaker was counting failures when the
        request left (one Redis round trip checks the circuit and takes the rate slot)."""
        wait_limit = self._settings.max_countdown / 2 if max_wait is None else max_wait
        # Everything slow (the process's first use creates the client) happens before the
        # limiter's slot is taken: the limiter stamps the slot when it grants it, so a request
        # that left much later would land in the provider's next window.
        request = self.client.build_request(
            method,
            self.url(path),
            params=params,
            json=json_body,
            content=content,
            headers={**self._headers, **headers} if headers else self._headers,
        )
        grant = self._limiter.reserve(
            self.service, self._rate, max_wait=wait_limit, circuit=self._breaker
        )
        failures_counted = grant.failures_counted
        request.extensions["trace"] = self._departure_tracer(grant)
        started = time.monotonic()
        try:
            raw, body = self._send(request)
        except AuthFailed as exc:
            # Refused by the auth flow itself (an OAuth token endpoint, worker/oauth.py).
            raise exc.with_hint(self._auth_hint) if self._auth_hint else exc from None
        except httpx.ConnectError as exc:
            raise Unavailable(
                f"cannot connect: {type(exc).__name__}", service=self.service
            ) from None
        except httpx.TimeoutException as exc:
            raise Unavailable(
                f"no answer within the timeout ({type(exc).__name__})",
                service=self.service,
                effect_possible=method != "GET" and not isinstance(exc, httpx.ConnectTimeout),
            ) from None
        except httpx.TransportError as exc:
            raise Unavailable(
                f"connection failed: {type(exc).__name__}",
                service=self.service,
                effect_possible=method != "GET",
            ) from None
        response = UpstreamResponse(
            service=self.service,
            status_code=raw.status_code,
            headers=raw.headers,
            content=body,
            elapsed=time.monotonic() - started,
        )
        metrics.upstream_request(self.service, response.elapsed, response.status_code)
        log.debug(
            "upstream call",
            extra={
                "service": self.service,
                "method": method,
                "status": response.status_code,
                "elapsed_ms": round(response.elapsed * 1000),
            },
        )
        self._check(response)
        return response, failures_counted

    def _departure_tracer(self, grant: Grant) -> Callable[[str, dict[str, Any]], None]:
        """An httpcore trace hook that tells the limiter when the request was written out:
        a request that left late (a new connection, a thread held up) moves its time in the
        shared log, before the requests that depend on it are reserved."""

        def trace(name: str, info: dict[str, Any]) -> None:
            if name.endswith("send_request_body.complete"):
                try:
                    self._limiter.left_late(grant, time.monotonic())
                except redis.RedisError:
                    # The request is on its way; the limiter's margin must do without.
                    log.warning("could not correct a late send", extra={"service": self.service})

        return trace

    def _send(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
        """Send and read the body, refusing one larger than ``RESPONSE_MAX_BYTES``."""
        cap = self._settings.response_max_bytes
        response = self.client.send(request, auth=self._auth, stream=True)
        try:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise BadResponse(
                    f"response of {int(declared)} bytes is over the {cap}-byte cap",
                    service=self.service,
                    status_code=response.status_code,
                )
            chunks: list[bytes] = []
            size = 0
            # Decoded bytes are counted, so a small compressed body cannot unpack past the cap.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > cap:
                    raise BadResponse(
                        f"response is over the {cap}-byte cap",
                        service=self.service,
                        status_code=response.status_code,
                    )
                chunks.append(chunk)
        finally:
            response.close()
        return response, b"".join(chunks)

    def _check(self, response: UpstreamResponse) -> None:
        status = response.status_code
        wait = wait_hint(response)
        limited = status in RATE_LIMIT_STATUSES
        if limited or (quota_exhausted(response) and wait is not None):
            # Everyone waits, not only this worker.
            self._limiter.pause(self.service, wait if wait is not None else 1.0)
        if limited:
            # Refused although the shared limit was kept: send with more room from now on.
            self._limiter.widen(self.service)
        if 200 <= status < 300:
            return
        message = f"{status} {error_message(response)}"
        if limited:
            raise RateLimited(message, service=self.service, status_code=status, retry_after=wait)
        if status >= 500:
            raise Unavailable(message, service=self.service, status_code=status, retry_after=wait)
        if status in (401, 403):
            refused = AuthFailed(message, service=self.service, status_code=status)
            raise refused.with_hint(self._auth_hint) if self._auth_hint else refused
        if status == 408:
            raise Unavailable(message, service=self.service, status_code=status)
        raise Rejected(message, service=self.service, status_code=status)


__all__ = [
    "ServiceClient",
    "UpstreamError",
    "UpstreamResponse",
    "close_shared_client",
    "error_message",
    "parse_reset",
    "parse_retry_after",
    "shared_client",
    "wait_hint",
]
