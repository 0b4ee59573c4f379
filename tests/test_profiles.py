"""The profile cache (worker/profiles.py) against the real Redis: a hit, the expiry, 0 = off,
not-found answers kept only briefly, a failed or dead lock holder, and the single fetch
shared by callers in several threads and in two processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from worker.errors import Unavailable, VisitorNotFound
from worker.integrations.datafast import DataFastSource
from worker.integrations.postmetric import PostMetricSource
from worker.journey import JourneyContext
from worker.profiles import ProfileCache

IDENTITY = "site-a"


@pytest.fixture
def cache(redis_client: redis.Redis, key_prefix: str) -> ProfileCache:
    return ProfileCache(redis_client, key_prefix, 60)


class CountingFetch:
    """A stand-in for the provider call: counts calls, answers after ``delay``."""

    def __init__(self, visitor_id: str, delay: float = 0.0, error: Exception | None = None):
        self.visitor_id = visitor_id
        self.delay = delay
        self.error = error
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> JourneyContext:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return JourneyContext(provider="DataFast", visitor_id=self.visitor_id, visit_count=3)


def _visitor() -> str:
    return str(uuid.uuid4())


def test_a_second_event_uses_the_cached_journey(cache: ProfileCache) -> None:
    visitor = _visitor()
    fetch = CountingFetch(visitor)
    first = cache.journey(IDENTITY, visitor, fetch)
    assert not first.cached and first.context.visit_count == 3
    time.sleep(0.05)
    second = cache.journey(IDENTITY, visitor, fetch)
    assert second.cached and second.age is not None and 0.04 <= second.age < 5
    assert second.context == first.context
    assert fetch.calls == 1


def test_identities_and_visitors_do_not_share_entries(cache: ProfileCache) -> None:
    visitor, other = _visitor(), _visitor()
    fetch = CountingFetch(visitor)
    cache.journey(IDENTITY, visitor, fetch)
    assert not cache.journey("site-b", visitor, fetch).cached
    assert not cache.journey(IDENTITY, other, CountingFetch(other)).cached
    assert fetch.calls == 2


def test_the_entry_expires(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = ProfileCache(redis_client, key_prefix, 0.3)
    visitor = _visitor()
    fetch = CountingFetch(visitor)
    cache.journey(IDENTITY, visitor, fetch)
    assert cache.journey(IDENTITY, visitor, fetch).cached
    time.sleep(0.45)
    assert not cache.journey(IDENTITY, visitor, fetch).cached
    assert fetch.calls == 2


def test_zero_turns_it_off(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = ProfileCache(redis_client, key_prefix, 0)
    visitor = _visitor()
    fetch = CountingFetch(visitor)
    for _ in range(3):
        assert not cache.journey(IDENTITY, visitor, fetch).cached
    assert fetch.calls == 3
    assert list(redis_client.scan_iter(f"{key_prefix}*")) == []


def test_not_found_is_shared_briefly_then_asked_again(
    redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.profiles.NOT_FOUND_SECONDS", 0.3)
    cache = ProfileCache(redis_client, key_prefix, 60)
    visitor = _visitor()
    missing = VisitorNotFound("404 Visitor not found", service="datafast", status_code=404)
    fetch = CountingFetch(visitor, error=missing)
    for _ in range(2):
        with pytest.raises(VisitorNotFound) as caught:
            cache.journey(IDENTITY, visitor, fetch)
        assert caught.value.message == "404 Visitor not found"
        assert caught.value.status_code == 404
    assert fetch.calls == 1
    time.sleep(0.4)
    fetch.error = None
    assert not cache.journey(IDENTITY, visitor, fetch).cached
    assert fetch.calls == 2


def test_concurrent_callers_wait_for_one_fetch(cache: ProfileCache) -> None:
    visitor = _visitor()
    fetch = CountingFetch(visitor, delay=0.3)
    results: list[Any] = []

    def one() -> None:
        results.append(cache.journey(IDENTITY, visitor, fetch))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert fetch.calls == 1
    assert len(results) == 6
    assert sum(1 for r in results if r.cached) == 5


def test_a_failed_holder_hands_over_at_once(cache: ProfileCache) -> None:
    """A fetch that fails (provider down) gives the lock up: the next caller fetches without
    waiting for the lock to expire, and nothing is cached."""
    visitor = _visitor()
    failing = CountingFetch(visitor, error=Unavailable("503", service="datafast"))
    with pytest.raises(Unavailable):
        cache.journey(IDENTITY, visitor, failing)
    started = time.monotonic()
    fetch = CountingFetch(visitor)
    assert not cache.journey(IDENTITY, visitor, fetch).cached
    assert time.monotonic() - started < 1.0
    assert fetch.calls == 1


def test_a_dead_holder_is_replaced_when_its_lock_expires(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    cache = ProfileCache(redis_client, key_prefix, 60, lock_seconds=0.5)
    visitor = _visitor()
    # A worker took the lock and died: nobody will store the entry or unlock.
    redis_client.set(f"{cache.key(IDENTITY, visitor)}:lock", "dead-worker", px=500)
    started = time.monotonic()
    fetch = CountingFetch(visitor)
    result = cache.journey(IDENTITY, visitor, fetch)
    waited = time.monotonic() - started
    assert not result.cached and fetch.calls == 1
    assert 0.3 <= waited < 3.0, waited


def test_forget_removes_every_entry_of_the_visitor(cache: ProfileCache) -> None:
    visitor, other = _visitor(), _visitor()
    cache.journey("site-a", visitor, CountingFetch(visitor))
    cache.journey("site-b", visitor, CountingFetch(visitor))
    cache.journey("site-a", other, CountingFetch(other))
    assert cache.forget(visitor) == 2
    assert not cache.journey("site-a", visitor, CountingFetch(visitor)).cached
    assert cache.journey("site-a", other, CountingFetch(other)).cached


def test_source_identity_follows_the_credentials_and_hides_them(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    from config import load_settings
    from worker.ratelimit import SharedRateLimiter

    limiter = SharedRateLimiter(redis_client, key_prefix)

    def datafast(**overrides: Any) -> DataFastSource:
        settings = load_settings(**{"datafast_api_key": "df_site_a", **overrides})
        return DataFastSource(settings, limiter)

    a = datafast().cache_identity()
    assert a == datafast().cache_identity()
    assert a != datafast(datafast_api_key="df_site_b").cache_identity()
    assert a != datafast(datafast_base_url="https://eu.datafa.st").cache_identity()
    account = datafast(datafast_api_key="dft_account", datafast_website_id="w1").cache_identity()
    other_site = datafast(datafast_api_key="dft_account", datafast_website_id="w2")
    assert account != other_site.cache_identity()
    postmetric = PostMetricSource(
        load_settings(
            source="postmetric",
            postmetric_api_key="df_site_a",
            postmetric_base_url="https://pm.example",
        ),
        limiter,
    )
    assert postmetric.cache_identity() != a
    assert "site_a" not in a and len(a) == 16
    # Several websites (DATAFAST_WEBSITES): each its own identity, the default key's apart.
    sites = datafast(datafast_websites="shop=df_shop,blog=dft_token:blog-id")
    shop, blog = sites.cache_identity("shop"), sites.cache_identity("blog")
    assert len({a, shop, blog}) == 3 and sites.cache_identity(None) == a
    assert shop == datafast(datafast_api_key="df_shop").cache_identity()


# Two processes ---------------------------------------------------------------------------


def _fetch_in_process(
    url: str, prefix: str, visitor: str, counter_key: str, start_at: float, out: Any
) -> None:
    """One worker process: its own Redis client and cache; the 'provider call' counts itself
    in Redis (shared by both processes) and takes 0.5 s."""
    client = redis.Redis.from_url(url)
    cache = ProfileCache(client, prefix, 60)

    def fetch() -> JourneyContext:
        client.incr(counter_key)
        time.sleep(0.5)
        return JourneyContext(provider="DataFast", visitor_id=visitor, visit_count=7)

    time.sleep(max(0.0, start_at - time.time()))
    results = []
    threads = []

    def one() -> None:
        results.append(cache.journey(IDENTITY, visitor, fetch).cached)

    for _ in range(3):
        threads.append(threading.Thread(target=one))
        threads[-1].start()
    for thread in threads:
        thread.join()
    out.put(results)


def test_single_fetch_across_two_processes(redis_server: str, key_prefix: str) -> None:
    visitor = _visitor()
    counter = f"{key_prefix}provider-calls"
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    start_at = time.time() + 2.0  # both processes up before either asks
    procs = [
        spawn.Process(
            target=_fetch_in_process,
            args=(redis_server, key_prefix, visitor, counter, start_at, out),
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    cached = [flag for _ in procs for flag in out.get(timeout=30)]
    for proc in procs:
        proc.join(timeout=10)
    assert int(redis.Redis.from_url(redis_server).get(counter) or 0) == 1
    assert sorted(cached) == [False] + [True] * 5
