"""One request rate per upstream service, shared by every worker process through Redis.

The counting is the ``limits`` library's moving-window limiter on Redis storage: it keeps a
log of request times per key and admits a request only while fewer than N were made in the
last window, so no window of that length ever holds more than N requests from all workers
together. A provider can also *pause* a service (a 429 with ``Retry-After``, or
``X-RateLimit-Remaining: 0`` with a reset): the pause is one Redis key with a TTL that every
worker checks before it sends.

Waiting is bounded: a caller that would wait longer than ``max_wait`` gets ``Throttled`` and
its task is re-scheduled without using up an attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from config import Rate
from worker.errors import Throttled


class SharedRateLimiter:
    """Rate limits and provider pauses for all workers, kept in Redis."""

    def __init__(
        self,
        redis_client: redis.Redis,
        redis_url: str,
        key_prefix: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = redis_client
        self.prefix = key_prefix
        self._limiter = MovingWindowRateLimiter(
            RedisStorage(redis_url, key_prefix=f"{key_prefix}limits")
        )
        self._sleep = sleep

    def _pause_key(self, service: str) -> str:
        return f"{self.prefix}pause:{service}"

    def pause(self, service: str, seconds: float) -> None:
        """Hold every request to ``service`` for ``seconds``; a longer pause in force stays."""
        if seconds <= 0:
            return
        key = self._pause_key(service)
        until_ms = int((time.time() + seconds) * 1000)
        # Keep the later of the two deadlines: two 429s seen by two workers must not shorten
        # each other's pause.
        current = self.redis.get(key)
        if current is not None and int(current) >= until_ms:
            return
        self.redis.set(key, until_ms, px=max(1, int(seconds * 1000)))

    def paused_for(self, service: str) -> float:
        """Seconds left on a pause of ``service`` (0 when none)."""
        value = self.redis.get(self._pause_key(service))
        if value is None:
            return 0.0
        return max(0.0, int(value) / 1000 - time.time())

    def acquire(self, service: str, rate: Rate, *, max_wait: float) -> None:
        """Block until one request to ``service`` may leave, or raise ``Throttled``."""
        item = _rate_item(rate)
        deadline = time.monotonic() + max_wait
        while True:
            pause = self.paused_for(service)
            if pause <= 0 and self._limiter.hit(item, service):
                return
            if pause > 0:
                wait = pause
            else:
                stats = self._limiter.get_window_stats(item, service)
                wait = max(0.005, stats.reset_time - time.time())
            if time.monotonic() + wait > deadline:
                raise Throttled(
                    f"held by the shared rate limit ({rate}) for {wait:.1f}s",
                    service=service,
                    retry_after=wait,
                )
            self._sleep(min(wait, 1.0))


def _rate_item(rate: Rate) -> RateLimitItem:
    return RateLimitItemPerSecond(rate.amount, rate.seconds)
