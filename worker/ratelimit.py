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
reserved (spaced, see ``SPACING_FRACTION``), and the jitter left is one thread's wake-up. A
thread that wakes (or gets the GIL) more than a quarter of the margin after its time does not
send on it: it moves its time to now, or reserves again, so a 40 ms margin covers the rest
(N per 1.04 s at best, 0.96 of the quota).

After a 429 the margin widens for that service (``widen``: 20 ms, doubling with each further
429 up to 200 ms, for all workers through Redis, forgotten ten minutes after the last one).
The 40 ms margin covers the delay between a reserved time and the provider's clock on a quiet
or moderately busy host; when a 429 shows it did not (a host so loaded that a request reached
the provider 40+ ms late, or a provider that counts differently), the same delay would
refuse the next request that shares that window as well. A few per cent of the quota are
worth less than a pause of every worker on each 429.

Waiting is bounded: a caller that would wait longer than ``max_wait`` gets ``Throttled`` and
its task is re-scheduled without using up an attempt. A time is reserved only when it is at
most ``RESERVE_AHEAD_SECONDS`` (and half a window) away; a caller further back polls (at most
once a second), so a provider pause that starts meanwhile still holds it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from config import Rate
from worker.circuit import CircuitBreaker
from worker.errors import Throttled
from worker.health import use_bucket_key
from worker.metrics import rate_limit_wait

DEFAULT_MARGIN_SECONDS = 0.04
# A caller that gets to send its request later than this after its reserved time (a thread
# that waited for the GIL or the CPU) does not send on the stale time: a late send moves
# towards the window of the requests reserved after it. It moves its reservation to now when
# no window then holds more than N (the usual case: the requests that depend on its time are
# not reserved yet), else gives it back and reserves again. A quarter of the margin: the rest
# covers what happens after this check (the write, the provider's own scheduling), which no
# check here can see.
LATE_FRACTION = 0.25
# How often a late caller reserves again before it sends anyway (a 429 then pauses everyone).
MAX_RESERVATIONS = 4
# Reserved times are at least this fraction of (window / N) apart. Without it the first N
# requests of a busy moment are reserved for the same instant, and that burst repeats every
# window: N threads waking at once, racing for the GIL, the provider taking them one by one,
# which spread their arrivals by more than the margin. A quarter keeps a burst of N within a
# quarter of the window (20/s: 12.5 ms apart, all 20 within 240 ms).
SPACING_FRACTION = 0.25
# What a 429 adds to the margin (``widen``): WIDEN_STEP_MS at first, doubled by each further
# 429 up to WIDEN_MAX_MS, kept until WIDEN_MEMORY_SECONDS pass without one.
WIDEN_STEP_MS = 20
WIDEN_MAX_MS = 200
WIDEN_MEMORY_SECONDS = 600
# A send time is reserved only this close to now; further back a caller polls instead.
# (At most half the window: a request N places later is then reserved only once its
# predecessor is more than half a window past its time, so a late predecessor can still move.)
RESERVE_AHEAD_SECONDS = 1.0

# KEYS[1]: the send log (sorted set of reserved send times, ms), KEYS[2]: the pause key
# (value: unix ms until), KEYS[3]: the margin a 429 added (ms, ``widen``), and with a circuit
# breaker KEYS[4]: its open flag, KEYS[5]: its failure counter. ARGV: limit, window_ms,
# member, reserve_ahead_ms, spacing_ms, and the health page's use counter key.
# The earliest send time is the latest of: now, the end of a pause, the N-th latest reserved
# time + window (so no window of that length holds N+1 sends; times are appended in order, so
# that is the only window the new one can overfill) and the latest reserved time + spacing.
# Returns {0, wait_ms, failures counted (0/1)} when a time was reserved (wait_ms from now),
# {1, wait_ms} when it is further than reserve_ahead_ms, {2, ms left} while the circuit is open.
_ACQUIRE = """
if #KEYS > 3 then
  local open = redis.call('PTTL', KEYS[4])
  if open > 0 then return {2, open} end
end
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) + tonumber(redis.call('GET', KEYS[3]) or '0')
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
if last[2] and tonumber(last[2]) + tonumber(ARGV[5]) > at then
  at = tonumber(last[2]) + tonumber(ARGV[5])
end
if at - now > tonumber(ARGV[4]) then return {1, math.max(1, at - now)} end
redis.call('ZADD', KEYS[1], at, ARGV[3])
redis.call('PEXPIRE', KEYS[1], at - now + window + 1000)
if ARGV[6] then
  -- The use counter the health page reads (worker/health.py): a key named in ARGV, since
  -- its bucket changes with time; this service runs on one Redis, not a cluster.
  redis.call('INCR', ARGV[6])
  redis.call('EXPIRE', ARGV[6], 90)
end
local failures = 0
if #KEYS > 4 then failures = redis.call('EXISTS', KEYS[5]) end
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

# KEYS[1]: the send log, KEYS[2]: the margin a 429 added. ARGV: member, window_ms, limit.
# Moves a reserved time to now when every window that now newly holds it stays within the
# limit: the window ending now, and those ending at the reserved times within one window
# after now. Returns 1 when moved, 0 when not (the old time is kept; the caller gives it back
# and reserves again).
_MOVE = """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old then return 0 end
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local window = tonumber(ARGV[2]) + tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
local fits = redis.call('ZCOUNT', KEYS[1], '(' .. (now - window), now) <= limit
if fits then
  local later = redis.call('ZRANGEBYSCORE', KEYS[1], now, '(' .. (now + window), 'WITHSCORES')
  for i = 2, #later, 2 do
    local at = tonumber(later[i])
    if redis.call('ZCOUNT', KEYS[1], '(' .. (at - window), at) > limit then
      fits = false
      break
    end
  end
end
if not fits then
  redis.call('ZADD', KEYS[1], old, ARGV[1])
  return 0
end
return 1
"""

# KEYS[1]: the margin a 429 added. ARGV: step, max, memory (ms). Doubles it (at least the
# step, at most the max) and keeps it for the memory from now; returns the new margin.
_WIDEN = """
local extra = tonumber(redis.call('GET', KEYS[1]) or '0')
extra = math.min(math.max(extra * 2, tonumber(ARGV[1])), tonumber(ARGV[2]))
redis.call('SET', KEYS[1], extra, 'PX', tonumber(ARGV[3]))
return extra
"""

_REMAINING = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
return math.max(0, paused - now)
"""


@dataclass(frozen=True)
class Grant:
    """One request let go: its entry in the service's send log, whether the circuit breaker
    was counting failures, and when it was let go (``time.monotonic()``)."""

    service: str
    member: str
    failures_counted: bool
    at: float


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
        self._move = redis_client.register_script(_MOVE)
        self._widen = redis_client.register_script(_WIDEN)

    def _pause_key(self, service: str) -> str:
        return f"{self.prefix}pause:{service}"

    def _log_key(self, service: str) -> str:
        return f"{self.prefix}rate:{service}"

    def _margin_key(self, service: str) -> str:
        return f"{self.prefix}margin:{service}"

    def widen(self, service: str) -> float:
        """A 429 came although the limit was kept: widen ``service``'s margin for every worker
        (see the module's docstring). Returns the margin added now, in seconds."""
        extra = self._widen(
            keys=[self._margin_key(service)],
            args=[WIDEN_STEP_MS, WIDEN_MAX_MS, WIDEN_MEMORY_SECONDS * 1000],
        )
        return int(extra) / 1000

    def added_margin(self, service: str) -> float:
        """Seconds a 429 added to ``service``'s margin (0 when none is remembered)."""
        return int(self.redis.get(self._margin_key(service)) or 0) / 1000

    def pause(self, service: str, seconds: float) -> None:
        """Hold every request to ``service`` for ``seconds``; a longer pause in force stays."""
        if seconds > 0:
            self._pause(keys=[self._pause_key(service)], args=[max(1, int(seconds * 1000))])

    def paused_for(self, service: str) -> float:
        """Seconds left on a pause of ``service`` (0 when none)."""
        return int(self._remaining(keys=[self._pause_key(service)])) / 1000

    def _try(
        self,
        service: str,
        rate: Rate,
        circuit: CircuitBreaker | None,
        ahead: float,
        member: str | None = None,
    ) -> list[int]:
        window_ms = int((rate.seconds + self.margin) * 1000)
        keys = [self._log_key(service), self._pause_key(service), self._margin_key(service)]
        if circuit is not None:
            failures_key, open_key = circuit.keys(service)
            keys += [open_key, failures_key]
        # Spacing smooths the sends of callers that wait anyway; one that cannot wait (a
        # probe) is held only by the limit itself.
        spacing = rate.seconds / rate.amount * SPACING_FRACTION if ahead > 0 else 0.0
        spacing_ms = int(spacing * 1000)
        use_key = use_bucket_key(self.prefix, service, time.time())
        args = [
            rate.amount,
            window_ms,
            member or uuid.uuid4().hex,
            int(ahead * 1000),
            spacing_ms,
            use_key,
        ]
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
        return self.reserve(service, rate, max_wait=max_wait, circuit=circuit).failures_counted

    def reserve(
        self,
        service: str,
        rate: Rate,
        *,
        max_wait: float,
        circuit: CircuitBreaker | None = None,
    ) -> Grant:
        """``acquire``, returning the grant, so that ``left_late`` can correct its time."""
        deadline = time.monotonic() + max_wait
        late_limit = self.margin * LATE_FRACTION
        reservations = 0
        reserve_ahead = min(RESERVE_AHEAD_SECONDS, rate.seconds / 2)
        while True:
            ahead = min(reserve_ahead, max(0.0, deadline - time.monotonic()))
            member = uuid.uuid4().hex
            asked = time.monotonic()
            code, wait_ms, *rest = self._try(service, rate, circuit, ahead, member)
            wait = wait_ms / 1000
            if code == 0:
                if wait > 0:
                    # The time is ours: sleep to it and go (the caller built its request
                    # beforehand, so it leaves right after).
                    rate_limit_wait(service, wait)
                    self._sleep(wait)
                reservations += 1
                # An upper bound of the lateness (it includes the round trip).
                late = time.monotonic() - (asked + wait)
                too_late = late > late_limit and reservations < MAX_RESERVATIONS
                if too_late and not self._moved(service, rate, member):
                    self.redis.zrem(self._log_key(service), member)
                    continue
                return Grant(service, member, bool(rest and rest[0]), time.monotonic())
            if code == 2 and circuit is not None:
                raise circuit.open_error(service, wait_ms)
            if time.monotonic() + wait > deadline:
                raise Throttled(
                    f"held by the shared rate limit ({rate}) for {wait:.1f}s",
                    service=service,
                    retry_after=wait,
                )
            # Come back when a reservation is within reach (or in a second, for a pause).
            pause = min(max(wait - reserve_ahead, 0.01), 1.0)
            rate_limit_wait(service, pause)
            self._sleep(pause)

    def left_late(self, grant: Grant, sent_at: float) -> bool:
        """Say when the granted request was written out (``time.monotonic()``). When that was
        later than the late limit after the grant (a new connection, a thread or process
        held up between the grant and the write), its time in the log moves later by as much,
        so the requests reserved after it keep their distance from when it really left.
        Returns whether it moved."""
        delay = sent_at - grant.at
        if delay <= self.margin * LATE_FRACTION:
            return False
        key = self._log_key(grant.service)
        self.redis.zadd(key, {grant.member: round(delay * 1000)}, xx=True, incr=True)
        return True

    def _moved(self, service: str, rate: Rate, member: str) -> bool:
        """Move a late caller's reserved time to now if no window then holds more than N."""
        window_ms = int((rate.seconds + self.margin) * 1000)
        return bool(
            self._move(
                keys=[self._log_key(service), self._margin_key(service)],
                args=[member, window_ms, rate.amount],
            )
        )
