"""One request rate per upstream service, shared by every worker process through Redis.

Each service keeps a log of reserved send times in a Redis sorted set; a Lua script gives a
request the earliest time at which no window of that length holds more than N sends from all
workers together, records it, and the caller sleeps until then. Times come from the Redis
server's clock, so hosts with skewed clocks still agree.

Why not the ``limits`` library's moving window (tried first): its windows are whole seconds
and a request counts from the moment it is granted, while the provider counts it when it
*arrives*, a few milliseconds later and by a varying amount. With waiting threads all
woken at the window's edge, that jitter regularly put N+1 arrivals inside one provider
window (measured by ``bench`` quota scenario: 64-206 429s per 2000 requests). Here every send
counts for the window *plus* ``margin``, which absorbs the jitter, and the provider pause (a
429's ``Retry-After``) is checked in the same round trip.

Why reservations rather than "try, sleep until the oldest grant leaves, try again" (the
previous version, 0.915 of the quota): every waiting thread woke at the same instant and raced
for the freed slots, so the winners' sends left in a burst whose spread (thread wake-ups, the
provider serving them one by one) needed a 100 ms margin, i.e. N per 1.1 s at best. A
reservation names one time per request: nobody races, the sends leave spread as they were
reserved, and the jitter left is one thread's wake-up, which a 30 ms margin covers
(N per 1.03 s at best).

Waiting is bounded: a caller that would wait longer than ``max_wait`` gets ``Throttled`` and
its task is re-scheduled without using up an attempt. A time is reserved only when it is at
most ``RESERVE_AHEAD_SECONDS`` away; a caller further back polls (at most once a second), so a
provider pause that starts meanwhile still holds it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis

from config import Rate
from worker.circuit import CircuitBreaker
from worker.errors import Throttled

DEFAULT_MARGIN_SECONDS = 0.03
# A send time is reserved only this close to now; further back a caller polls instead.
RESERVE_AHEAD_SECONDS = 1.0

# KEYS[1]: the send log (sorted set of reserved send times, ms), KEYS[2]: the pause key
# (value: unix ms until), and with a circuit breaker KEYS[3]: its open flag, KEYS[4]: its
# failure counter. ARGV: limit, window_ms, member, reserve_ahead_ms.
# The earliest send time is the latest of: now, the end of a pause, and the N-th latest
# reserved time + window (so no window of that length holds N+1 sends; times are appended in
# order, so that is the only window the new one can overfill).
# Returns {0, wait_ms, failures counted (0/1)} when a time was reserved (wait_ms from now),
# {1, wait_ms} when it is further than reserve_ahead_ms, {2, ms left} while the circuit is open.
_ACQUIRE = """
if #KEYS > 2 then
  local open = redis.call('PTTL', KEYS[3])
  if open > 0 then return {2, open} end
end
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local at = now
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > at then at = paused end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local nth = redis.call('ZRANGE', KEYS[1], -limit, -limit, 'WITHSCORES')
  local free = tonumber(nth[2]) + window
  if free > at then at = free end
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) > at then at = tonumber(last[2]) end
if at - now > tonumber(ARGV[4]) then return {1, math.max(1, at - now)} end
redis.call('ZADD', KEYS[1], at, ARGV[3])
redis.call('PEXPIRE', KEYS[1], at - now + window + 1000)
local failures = 0
if #KEYS > 3 then failures = redis.call('EXISTS', KEYS[4]) end
return {0, at - now, failures}
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

    def _try(
        self, service: str, rate: Rate, circuit: CircuitBreaker | None, ahead: float
    ) -> list[int]:
        window_ms = int((rate.seconds + self.margin) * 1000)
        keys = [self._log_key(service), self._pause_key(service)]
        if circuit is not None:
            failures_key, open_key = circuit.keys(service)
            keys += [open_key, failures_key]
        args = [rate.amount, window_ms, uuid.uuid4().hex, int(ahead * 1000)]
        reply = self._acquire(keys=keys, args=args)
        return [int(v) for v in reply]

    def try_acquire(self, service: str, rate: Rate) -> float:
        """Take one send now if the limit allows it: 0.0 when taken, else seconds to wait
        (nothing reserved)."""
        code, wait_ms, *_ = self._try(service, rate, None, 0.0)
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
            ahead = min(RESERVE_AHEAD_SECONDS, max(0.0, deadline - time.monotonic()))
            code, wait_ms, *rest = self._try(service, rate, circuit, ahead)
            wait = wait_ms / 1000
            if code == 0:
                if wait > 0:
                    # The time is ours: sleep to it and go (the caller built its request
                    # beforehand, so it leaves right after).
                    self._sleep(wait)
                return bool(rest and rest[0])
            if code == 2 and circuit is not None:
                raise circuit.open_error(service, wait_ms)
            if time.monotonic() + wait > deadline:
                raise Throttled(
                    f"held by the shared rate limit ({rate}) for {wait:.1f}s",
                    service=service,
                    retry_after=wait,
                )
            # Come back when a reservation is within reach (or in a second, for a pause).
            self._sleep(min(max(wait - RESERVE_AHEAD_SECONDS, 0.01), 1.0))
