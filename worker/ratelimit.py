"""One request rate per upstream service, shared by every worker process through Redis.

Each service keeps a log of grant times in a Redis sorted set; a Lua script admits a request
only while fewer than N grants lie in the last window, so no window of that length ever holds
more than N requests from all workers together. Times come from the Redis server's clock, so
hosts with skewed clocks still agree.

Why not the ``limits`` library's moving window (tried first): its windows are whole seconds
and a request counts from the moment it is granted, while the provider counts it when it
*arrives*, a few milliseconds later and by a varying amount. With waiting threads all
woken at the window's edge, that jitter regularly put N+1 arrivals inside one provider
window (measured by ``bench`` quota scenario: 64-206 429s per 2000 requests). Here every grant
counts for the window *plus* ``margin`` (100 ms), which absorbs the jitter, and the provider
pause (a 429's ``Retry-After``) is checked in the same round trip.

Waiting is bounded: a caller that would wait longer than ``max_wait`` gets ``Throttled`` and
its task is re-scheduled without using up an attempt.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis

from config import Rate
from worker.circuit import CircuitBreaker
from worker.errors import Throttled
from worker.health import use_bucket_key
from worker.metrics import rate_limit_wait

DEFAULT_MARGIN_SECONDS = 0.1

# KEYS[1]: the grant log (sorted set), KEYS[2]: the pause key (value: unix ms until), and
# with a circuit breaker KEYS[3]: its open flag, KEYS[4]: its failure counter.
# ARGV: limit, window_ms, member. Returns {0, 0, failures counted (0/1)} when granted,
# {1, wait_ms} while held by the limit or a pause, {2, ms left} while the circuit is open.
_ACQUIRE = """
if #KEYS > 2 then
  local open = redis.call('PTTL', KEYS[3])
  if open > 0 then return {2, open} end
end
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return {1, paused - now} end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  if ARGV[4] then
    -- The use counter the health page reads (worker/health.py): a key named in ARGV, since
    -- its bucket changes with time; this service runs on one Redis, not a cluster.
    redis.call('INCR', ARGV[4])
    redis.call('EXPIRE', ARGV[4], 90)
  end
  local failures = 0
  if #KEYS > 3 then failures = redis.call('EXISTS', KEYS[4]) end
  return {0, 0, failures}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, math.max(1, tonumber(oldest[2]) + window - now)}
"""

# KEYS[1]: the pause key. ARGV[1]: seconds (as ms). Keeps the later of two deadlines, so two
# 429s seen by two workers never shorten each other's pause.
_PAUSE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= untl then return 0 end
redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]))
return 1
"""

_REMAINING = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
return math.max(0, paused - now)
"""


class SharedRateLimiter:
    """Rate limits and provider pauses for all workers, kept in Redis."""

    def __init__(
        self,
        redis_client: redis.Redis,
        key_prefix: str,
        *,
        margin: float = DEFAULT_MARGIN_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = redis_client
        self.prefix = key_prefix
        self.margin = margin
        self._sleep = sleep
        self._acquire = redis_client.register_script(_ACQUIRE)
        self._pause = redis_client.register_script(_PAUSE)
        self._remaining = redis_client.register_script(_REMAINING)

    def _pause_key(self, service: str) -> str:
        return f"{self.prefix}pause:{service}"

    def _log_key(self, service: str) -> str:
        return f"{self.prefix}rate:{service}"

    def pause(self, service: str, seconds: float) -> None:
        """Hold every request to ``service`` for ``seconds``; a longer pause in force stays."""
        if seconds > 0:
            self._pause(keys=[self._pause_key(service)], args=[max(1, int(seconds * 1000))])

    def paused_for(self, service: str) -> float:
        """Seconds left on a pause of ``service`` (0 when none)."""
        return int(self._remaining(keys=[self._pause_key(service)])) / 1000

    def _try(self, service: str, rate: Rate, circuit: CircuitBreaker | None) -> list[int]:
        window_ms = int((rate.seconds + self.margin) * 1000)
        keys = [self._log_key(service), self._pause_key(service)]
        if circuit is not None:
            failures_key, open_key = circuit.keys(service)
            keys += [open_key, failures_key]
        use_key = use_bucket_key(self.prefix, service, time.time())
        reply = self._acquire(keys=keys, args=[rate.amount, window_ms, uuid.uuid4().hex, use_key])
        return [int(v) for v in reply]

    def try_acquire(self, service: str, rate: Rate) -> float:
        """Take one slot now if there is one: 0.0 when granted, else seconds to wait."""
        code, wait_ms, *_ = self._try(service, rate, None)
        return 0.0 if code == 0 else wait_ms / 1000

    def acquire(
        self,
        service: str,
        rate: Rate,
        *,
        max_wait: float,
        circuit: CircuitBreaker | None = None,
    ) -> bool:
        """Block until one request to ``service`` may leave, or raise ``Throttled``.

        With ``circuit``, its open flag is checked in the same round trip (an open circuit
        raises at once); returns whether that circuit is counting failures, so a success
        knows whether it has a count to reset."""
        deadline = time.monotonic() + max_wait
        while True:
            code, wait_ms, *rest = self._try(service, rate, circuit)
            if code == 0:
                return bool(rest and rest[0])
            if code == 2 and circuit is not None:
                raise circuit.open_error(service, wait_ms)
            wait = wait_ms / 1000
            if time.monotonic() + wait > deadline:
                raise Throttled(
                    f"held by the shared rate limit ({rate}) for {wait:.1f}s",
                    service=service,
                    retry_after=wait,
                )
            rate_limit_wait(service, min(wait, 1.0))
            self._sleep(min(wait, 1.0))
