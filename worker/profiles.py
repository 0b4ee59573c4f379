"""One profile fetch per visitor per ``PROFILE_CACHE_SECONDS``, across all workers.

The same visitor often sends several events a minute apart (a signup, then a ticket, then a
chat), and each fetched the same journey again, spending the provider's quota. A fetched
journey is kept in Redis; events of the same visitor within that time use it, and events that
arrive *while* it is being fetched wait for that one fetch instead of making their own.

Keys (under ``REDIS_KEY_PREFIX``):

    profile:{visitor id}:{source identity}        JSON: fetch time and the journey (or why
                                                   the provider found none), with a TTL
    profile:{visitor id}:{source identity}:lock   held by the one worker fetching it

The source identity (``Source.cache_identity``) is a digest of the provider, its base URL and
the credentials that pick the website: two DataFast websites never share an entry, and no key
holds a secret. The visitor id comes first so that erasing a visitor finds every entry
(``forget``).

Single flight: a Lua script reads the entry or, when there is none, takes the lock (SET NX PX)
in one round trip. The lock holder fetches and stores the answer; the others poll (20 ms,
growing to 200 ms) until the entry appears. A holder that dies leaves its lock to expire after
``LOCK_SECONDS``; the next poll then takes it and fetches. A holder that fails (provider down,
throttled) gives the lock up at once, so a waiter takes over without waiting for the expiry.

Not-found answers are kept only ``NOT_FOUND_SECONDS``: long enough that the events waiting on
that fetch share it, short enough that a new visitor whose first pageviews the provider has
not processed yet is looked up again by its next event, which a full minute of "no journey"
would hide.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import redis

from worker.errors import VisitorNotFound
from worker.journey import JourneyContext

# How long the lock outlives a holder that died mid-fetch.
LOCK_SECONDS = 10.0
# How long a provider's "no such visitor" is kept (see the module's docstring).
NOT_FOUND_SECONDS = 5.0
# A waiter polls at first this often, then each time half as long again, at most MAX.
POLL_SECONDS = 0.02
MAX_POLL_SECONDS = 0.2

# KEYS[1]: the entry, KEYS[2]: the lock. ARGV: token, lock ttl (ms).
# Returns {1, entry} when cached, {2} when this caller now holds the lock, {0} to wait.
_READ_OR_LOCK = """
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return {2} end
return {0}
"""

# KEYS[1]: the entry, KEYS[2]: the lock. ARGV: token, entry ('' stores nothing), ttl (ms).
_STORE_AND_UNLOCK = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3])) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


@dataclass(frozen=True)
class CachedFetch:
    """A journey and, when it came from the cache, how old it is."""

    context: JourneyContext
    age: float | None = None

    @property
    def cached(self) -> bool:
        return self.age is not None


class ProfileCache:
    """Fetched journeys by (visitor, source identity), shared by every worker process."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_seconds: float,
        *,
        lock_seconds: float = LOCK_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.lock_seconds = lock_seconds
        self._sleep = sleep
        self._read_or_lock = client.register_script(_READ_OR_LOCK)
        self._store = client.register_script(_STORE_AND_UNLOCK)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def key(self, identity: str, visitor_id: str) -> str:
        return f"{self.prefix}profile:{visitor_id}:{identity}"

    def journey(
        self, identity: str, visitor_id: str, fetch: Callable[[], JourneyContext]
    ) -> CachedFetch:
        """The visitor's journey from the cache, from another worker's fetch in flight, or
        from ``fetch`` (under the lock). A not-found answer raises ``VisitorNotFound`` for
        every event that shares it; any other error of ``fetch`` is raised to its caller
        only, and the next waiter fetches."""
        if not self.enabled:
            return CachedFetch(fetch())
        key = self.key(identity, visitor_id)
        lock = f"{key}:lock"
        token = secrets.token_hex(8)
        # Bounded: past the lock's lifetime the holder is gone and this caller would have
        # taken the lock; the deadline only guards against a Redis that never answers 2.
        deadline = time.monotonic() + self.lock_seconds + 2.0
        poll = POLL_SECONDS
        while True:
            lock_ms = int(self.lock_seconds * 1000)
            reply = self._read_or_lock(keys=[key, lock], args=[token, lock_ms])
            if int(reply[0]) == 1:
                return _decode(reply[1])
            if int(reply[0]) == 2:
                return CachedFetch(self._fetch_locked(key, lock, token, fetch))
            if time.monotonic() >= deadline:
                return CachedFetch(fetch())
            self._sleep(poll)
            poll = min(poll * 1.5, MAX_POLL_SECONDS)

    def _fetch_locked(
        self, key: str, lock: str, token: str, fetch: Callable[[], JourneyContext]
    ) -> JourneyContext:
        entry, ttl = b"", 0.0
        try:
            context = fetch()
            if context.found:
                entry, ttl = _encode(context=context.model_dump(mode="json")), self.ttl
            return context
        except VisitorNotFound as exc:
            missing = {"message": exc.message, "service": exc.service, "status": exc.status_code}
            entry, ttl = _encode(missing=missing), min(self.ttl, NOT_FOUND_SECONDS)
            raise
        finally:
            # Stored and unlocked in one step: a waiter never sees the lock gone and no entry
            # (it would fetch again). On any other error nothing is stored and the lock goes.
            self._store(keys=[key, lock], args=[token, entry, max(1, int(ttl * 1000))])

    def forget(self, visitor_id: str) -> int:
        """Delete every cached entry of ``visitor_id`` (erasure); returns how many."""
        keys = visitor_profile_keys(self.redis, self.prefix, visitor_id)
        return int(self.redis.delete(*keys)) if keys else 0


def visitor_profile_keys(client: redis.Redis, prefix: str, visitor_id: str) -> list[str]:
    """Every key of ``visitor_id``'s cached profiles (one per source identity, and a lock)."""
    escaped = re.sub(r"([*?\[\]\\])", r"\\\1", visitor_id)
    keys = client.scan_iter(match=f"{prefix}profile:{escaped}:*", count=500)
    return [k.decode() if isinstance(k, bytes) else str(k) for k in keys]


def _encode(**fields: object) -> bytes:
    return orjson.dumps({"at": time.time(), **fields})


def _decode(raw: bytes) -> CachedFetch:
    entry = orjson.loads(raw)
    age = max(0.0, time.time() - float(entry["at"]))
    missing = entry.get("missing")
    if missing is not None:
        raise VisitorNotFound(
            str(missing["message"]),
            service=str(missing.get("service") or ""),
            status_code=missing.get("status"),
        )
    return CachedFetch(JourneyContext.model_validate(entry["context"]), age)
