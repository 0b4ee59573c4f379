"""worker/http.py: header parsing, status mapping, size caps, timeouts; the shared limiter on
the real Redis (each test under its own key prefix)."""

from __future__ import annotations

import email.utils
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from config import Rate, Settings
from config.settings import load_settings
from worker.errors import (
    AuthFailed,
    BadResponse,
    RateLimited,
    Rejected,
    Throttled,
    Unavailable,
    UpstreamError,
)
from worker.http import (
    ServiceClient,
    close_shared_client,
    parse_reset,
    parse_retry_after,
)
from worker.ratelimit import WIDEN_STEP_MS, SharedRateLimiter
from worker.retry import backoff_delay, retry_countdown

NOW = 1_800_000_000.0
FAST = Rate(1000, 1)


# Header parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_retry_after_http_date() -> None:
    in_30s = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after(in_30s, now=NOW) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(NOW - 300, usegmt=True)
    assert parse_retry_after(past, now=NOW) == 0.0
    # Without ``now`` it is measured against the clock.
    real = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (parse_retry_after(real) or 0) <= 61


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),  # seconds from now
        (str(int(NOW + 45)), 45.0),  # a unix time
        (str(int((NOW + 12) * 1000)), 12.0),  # unix milliseconds
        (str(int(NOW - 100)), 0.0),  # a time already past
        (None, None),
        ("", None),
        ("later", None),
    ],
)
def test_reset_header(value: str | None, expected: float | None) -> None:
    result = parse_reset(value, now=NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, abs=0.01)


# A ServiceClient over a scripted transport -----------------------------------------------------


@pytest.fixture
def settings(key_prefix: str, redis_server: str) -> Settings:
    return load_settings(
        _env_file=None,
        redis_url=redis_server,
        redis_key_prefix=key_prefix,
        response_max_bytes=1024,
        http_connect_timeout=0.5,
        http_read_timeout=0.3,
    )


@pytest.fixture
def limiter(settings: Settings, redis_client: redis.Redis) -> SharedRateLimiter:
    return SharedRateLimiter(redis_client, settings.redis_key_prefix)


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def make_client(
    settings: Settings, limiter: SharedRateLimiter
) -> Iterator[Callable[[Handler], ServiceClient]]:
    clients: list[httpx.Client] = []

    def make(handler: Handler, *, rate: Rate = FAST) -> ServiceClient:
        http = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(http)
        return ServiceClient(
            "datafast",
            "https://datafa.st/api/v1",
            settings=settings,
            limiter=limiter,
            rate=rate,
            headers={"Authorization": "Bearer df_x"},
            client=http,
        )

    yield make
    for http in clients:
        http.close()


def envelope_error(status: int, message: str, headers: dict[str, str] | None = None) -> Handler:
    body = {"status": "error", "error": {"code": status, "message": message}}
    return lambda request: httpx.Response(status, json=body, headers=headers or {})


def test_success_returns_body_and_sends_headers(make_client) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "data": {"visitorId": "v"}})

    client = make_client(handler)
    response = client.request("GET", "visitors/abc", params={"websiteId": "w1"})
    assert response.status_code == 200
    assert response.json()["data"]["visitorId"] == "v"
    assert str(seen[0].url) == "https://datafa.st/api/v1/visitors/abc?websiteId=w1"
    assert seen[0].headers["authorization"] == "Bearer df_x"


def test_429_is_rate_limited_with_retry_after(make_client) -> None:
    client = make_client(envelope_error(429, "slow down", {"Retry-After": "7"}))
    with pytest.raises(RateLimited) as caught:
        client.request("GET", "visitors/abc")
    assert caught.value.retryable
    assert caught.value.retry_after == 7.0
    assert caught.value.status_code == 429
    assert "slow down" in str(caught.value)


def test_429_with_http_date(make_client) -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    client = make_client(envelope_error(429, "slow down", {"Retry-After": when}))
    with pytest.raises(RateLimited) as caught:
        client.request("GET", "visitors/abc")
    assert caught.value.retry_after is not None
    assert 15 <= caught.value.retry_after <= 21


def test_429_without_retry_after_uses_reset_header(make_client) -> None:
    client = make_client(envelope_error(429, "slow down", {"X-RateLimit-Reset": "9"}))
    with pytest.raises(RateLimited) as caught:
        client.request("GET", "visitors/abc")
    assert caught.value.retry_after == 9.0


def test_429_without_any_hint_has_no_retry_after(make_client) -> None:
    client = make_client(envelope_error(429, "slow down"))
    with pytest.raises(RateLimited) as caught:
        client.request("GET", "visitors/abc")
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_5xx_is_unavailable(make_client, status: int) -> None:
    client = make_client(envelope_error(status, "boom"))
    with pytest.raises(Unavailable) as caught:
        client.request("GET", "visitors/abc")
    assert caught.value.retryable
    assert caught.value.status_code == status
    assert not caught.value.effect_possible


def test_503_keeps_its_retry_after(make_client) -> None:
    client = make_client(envelope_error(503, "maintenance", {"Retry-After": "4"}))
    with pytest.raises(Unavailable) as caught:
        client.request("GET", "visitors/abc")
    assert caught.value.retry_after == 4.0


@pytest.mark.parametrize("status", [401, 403])
def test_401_403_are_auth_failures(make_client, status: int) -> None:
    client = make_client(envelope_error(status, "Invalid API key"))
    with pytest.raises(AuthFailed) as caught:
        client.request("GET", "visitors/abc")
    assert not caught.value.retryable
    assert caught.value.status_code == status
    assert "Invalid API key" in str(caught.value)
    assert "datafast" in str(caught.value)


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_4xx_are_rejected(make_client, status: int) -> None:
    client = make_client(envelope_error(status, "No pageviews found for this visitor"))
    with pytest.raises(Rejected) as caught:
        client.request("GET", "visitors/abc")
    assert not isinstance(caught.value, AuthFailed)
    assert not caught.value.retryable
    assert caught.value.status_code == status
    assert "No pageviews found" in str(caught.value)


def test_error_message_from_other_envelopes(make_client) -> None:
    client = make_client(
        lambda r: httpx.Response(400, json={"status": "error", "message": "Property bad"})
    )
    with pytest.raises(Rejected, match="Property bad"):
        client.request("POST", "x")
    client = make_client(lambda r: httpx.Response(404, json={"error": "RecordNotFound"}))
    with pytest.raises(Rejected, match="RecordNotFound"):
        client.request("PUT", "x")
    client = make_client(lambda r: httpx.Response(500, text="<html>oops</html>"))
    with pytest.raises(Unavailable, match="oops"):
        client.request("GET", "x")


def test_non_json_200_is_a_bad_response_on_json(make_client) -> None:
    client = make_client(lambda r: httpx.Response(200, text="<html>maintenance</html>"))
    response = client.request("GET", "visitors/abc")
    with pytest.raises(BadResponse) as caught:
        response.json()
    assert not caught.value.retryable
    assert caught.value.status_code == 200
    assert "not JSON" in str(caught.value)


def test_body_over_the_cap_is_a_bad_response(make_client) -> None:
    client = make_client(lambda r: httpx.Response(200, content=b"x" * 2000))
    with pytest.raises(BadResponse, match="cap"):
        client.request("GET", "visitors/abc")


def test_streamed_body_over_the_cap_is_a_bad_response(make_client) -> None:
    # No Content-Length: the cap must hold while reading.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([b"y" * 600] * 4))

    client = make_client(handler)
    with pytest.raises(BadResponse, match="cap"):
        client.request("GET", "visitors/abc")


def test_body_at_the_cap_is_fine(make_client) -> None:
    body = json.dumps({"pad": "z" * 1000}).encode()[:1024]
    client = make_client(lambda r: httpx.Response(200, content=body.ljust(1024, b" ")))
    assert len(client.request("GET", "x").content) == 1024


@pytest.mark.parametrize(
    ("exc", "effect_possible_on_post"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow connect"), False),
        (httpx.ReadTimeout("slow read"), True),
        (httpx.RemoteProtocolError("hung up"), True),
    ],
)
def test_transport_errors_are_unavailable(
    make_client, exc: Exception, effect_possible_on_post: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client = make_client(handler)
    with pytest.raises(Unavailable) as caught:
        client.request("GET", "visitors/abc")
    assert caught.value.retryable
    assert not caught.value.effect_possible  # a GET has no effect to find
    with pytest.raises(Unavailable) as caught:
        client.request("POST", "notes", json_body={})
    assert caught.value.effect_possible is effect_possible_on_post


def test_a_silent_server_times_out_with_the_configured_read_timeout(
    settings: Settings, limiter: SharedRateLimiter
) -> None:
    """A real socket that accepts and never answers: the shared client's read timeout
    (HTTP_READ_TIMEOUT=0.3) turns it into Unavailable quickly."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    close_shared_client()  # the next request builds the shared client from these settings
    try:
        port = listener.getsockname()[1]
        client = ServiceClient(
            "datafast",
            f"http://127.0.0.1:{port}/datafast/api/v1",
            settings=settings,
            limiter=limiter,
            rate=Rate(100, 1),
        )
        started = time.monotonic()
        with pytest.raises(Unavailable, match="timeout"):
            client.request("GET", "visitors/abc")
        assert time.monotonic() - started < 3
    finally:
        close_shared_client()
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


# Shared rate limit and pauses ------------------------------------------------------------------


def test_a_429_pauses_every_worker(make_client, settings: Settings, redis_server: str) -> None:
    client = make_client(envelope_error(429, "slow down", {"Retry-After": "30"}))
    with pytest.raises(RateLimited):
        client.request("GET", "visitors/abc")
    # Another process: its own Redis connection and limiter, same prefix.
    other_redis = redis.Redis.from_url(redis_server)
    try:
        other = SharedRateLimiter(other_redis, settings.redis_key_prefix)
        assert 25 < other.paused_for("datafast") <= 30
        assert other.paused_for("hubspot") == 0
        with pytest.raises(Throttled) as caught:
            other.acquire("datafast", Rate(100, 1), max_wait=0.5)
        assert caught.value.retry_after > 25
    finally:
        other_redis.close()


def test_a_429_widens_the_margin_and_a_quota_header_does_not(make_client, limiter) -> None:
    assert limiter.added_margin("datafast") == 0
    ok_but_spent = make_client(
        lambda r: httpx.Response(
            200, json={"ok": 1}, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}
        )
    )
    assert ok_but_spent.request("GET", "x").status_code == 200
    assert limiter.added_margin("datafast") == 0  # the provider said so: nothing overran
    refused = make_client(envelope_error(429, "slow down", {"Retry-After": "0"}))
    with pytest.raises(RateLimited):
        refused.request("GET", "visitors/abc")
    assert limiter.added_margin("datafast") == pytest.approx(WIDEN_STEP_MS / 1000)
    assert limiter.added_margin("hubspot") == 0


def test_quota_exhausted_on_success_pauses_until_reset(make_client, limiter) -> None:
    client = make_client(
        lambda r: httpx.Response(
            200, json={"ok": 1}, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "20"}
        )
    )
    assert client.request("GET", "x").status_code == 200
    assert 15 < limiter.paused_for("datafast") <= 20


def test_a_shorter_pause_does_not_cut_a_longer_one(limiter: SharedRateLimiter) -> None:
    limiter.pause("zendesk", 30)
    limiter.pause("zendesk", 1)
    assert limiter.paused_for("zendesk") > 25


def test_limit_is_shared_across_limiter_instances(settings: Settings, redis_server: str) -> None:
    """Two limiters (two Redis clients, as two worker processes would have) admit at most
    N requests per window between them."""
    clients = [redis.Redis.from_url(redis_server) for _ in range(2)]
    try:
        limiters = [SharedRateLimiter(c, settings.redis_key_prefix) for c in clients]
        rate = Rate(5, 30)
        admitted = refused = 0
        for i in range(20):
            try:
                limiters[i % 2].acquire("datafast", rate, max_wait=0)
                admitted += 1
            except Throttled as exc:
                refused += 1
                assert exc.retry_after > 0
        assert (admitted, refused) == (5, 15)
    finally:
        for c in clients:
            c.close()


def test_limit_holds_under_concurrency(settings: Settings, redis_server: str) -> None:
    clients = [redis.Redis.from_url(redis_server) for _ in range(2)]
    try:
        limiters = [SharedRateLimiter(c, settings.redis_key_prefix) for c in clients]
        rate = Rate(7, 30)
        admitted: list[int] = []
        lock = threading.Lock()

        def hammer(limiter: SharedRateLimiter) -> None:
            for _ in range(10):
                try:
                    limiter.acquire("hubspot", rate, max_wait=0)
                except Throttled:
                    continue
                with lock:
                    admitted.append(1)

        threads = [threading.Thread(target=hammer, args=(limiters[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(admitted) == 7
    finally:
        for c in clients:
            c.close()


def test_acquire_waits_within_max_wait(settings: Settings, redis_client) -> None:
    slept: list[float] = []

    def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        raise _Stop

    limiter = SharedRateLimiter(redis_client, settings.redis_key_prefix, sleep=fake_sleep)
    rate = Rate(1, 30)
    limiter.acquire("slack", rate, max_wait=0)
    # Full: with a generous max_wait it sleeps (our fake sleep stops it) instead of failing.
    with pytest.raises(_Stop):
        limiter.acquire("slack", rate, max_wait=60)
    assert slept and 0 < slept[0] <= 1.0
    # With a small max_wait it gives up at once, asking to come back when the window frees.
    with pytest.raises(Throttled) as caught:
        limiter.acquire("slack", rate, max_wait=1)
    # The window plus the limiter's margin for arrival jitter.
    assert 20 < caught.value.retry_after <= 30 + limiter.margin


class _Stop(Exception):
    pass


# Retry policy ----------------------------------------------------------------------------


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(25.0, 1.0 * 2 ** (attempt - 1))
        values = [backoff_delay(attempt, 1.0, 25.0, rng=rng) for _ in range(50)]
        assert all(0 <= v <= ceiling for v in values)
    assert max(backoff_delay(10, 1.0, 25.0, rng=rng) for _ in range(200)) > 12


def test_retry_countdown_never_earlier_than_asked_nor_past_the_cap(settings: Settings) -> None:
    rng = random.Random(1)
    assert retry_countdown(1, 2.0, settings, rng=rng) >= 2.0
    assert retry_countdown(1, 10_000, settings, rng=rng) == settings.max_countdown
    assert retry_countdown(30, None, settings, rng=rng) <= settings.max_countdown


def test_upstream_errors_say_who_failed() -> None:
    exc: UpstreamError = RateLimited("429 slow", service="datafast", retry_after=2)
    assert str(exc) == "datafast: 429 slow"


@pytest.mark.parametrize(
    "value",
    ["inf", "1e400", "Infinity", "nan"],
)
def test_retry_after_that_is_not_a_finite_number_is_ignored(value: str) -> None:
    """RFC 9110 delta-seconds are digits; "inf" must not become an endless wait."""
    assert parse_retry_after(value, now=NOW) in (None, 0.0)


def test_429_with_an_absurd_retry_after_is_still_rate_limited(make_client) -> None:
    client = make_client(envelope_error(429, "slow down", {"Retry-After": "inf"}))
    with pytest.raises(RateLimited):
        client.request("GET", "visitors/abc")


def test_each_grant_counts_for_the_window_plus_the_margin(settings: Settings, redis_client) -> None:
    """A request granted at t keeps its slot until t + window + margin, so one that leaves at
    the window's edge cannot arrive inside the provider's previous window."""
    limiter = SharedRateLimiter(redis_client, settings.redis_key_prefix, margin=0.25)
    rate = Rate(2, 1)
    assert limiter.try_acquire("datafast", rate) == 0.0
    assert limiter.try_acquire("datafast", rate) == 0.0
    wait = limiter.try_acquire("datafast", rate)
    assert 1.0 < wait <= 1.25


def test_with_hint_keeps_the_type_and_adds_advice() -> None:
    from worker.errors import AuthFailed

    hinted = AuthFailed("401 bad key", service="postmetric", status_code=401).with_hint(
        "check POSTMETRIC_API_KEY"
    )
    assert isinstance(hinted, AuthFailed) and not hinted.retryable
    assert str(hinted) == "postmetric: 401 bad key (check POSTMETRIC_API_KEY)"
    assert hinted.status_code == 401
