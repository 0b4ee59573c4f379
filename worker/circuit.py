"""A circuit breaker per upstream service, shared by all workers through Redis.

After ``threshold`` failures that say "the service is down" (5xx, timeouts, refused
connections) within ``window`` seconds, the circuit opens: no request to that service leaves
for ``cooldown`` seconds, and tasks are re-scheduled (``Throttled``) instead of spending their
attempts on a service that is known to be down. After the cool-down requests flow again (there
is no single half-open probe): a success resets the count, and ``threshold`` more failures
within the window open the circuit again.

Written here rather than taken from a library: the maintained Python breakers (pybreaker,
circuitbreaker) keep their state per process, or in Redis only through a client that must be
shared with their own locking; the whole state here is two Redis keys.
"""

from __future__ import annotations

import redis

from worker.errors import Throttled


class CircuitBreaker:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        threshold: int,
        window: float,
        cooldown: float,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self.threshold = threshold
        self.window = window
        self.cooldown = cooldown

    def keys(self, service: str) -> tuple[str, str]:
        """The failure counter and the open flag of ``service``: the shared rate limiter's
        script reads both in the same round trip that grants a request (worker/ratelimit.py)."""
        return f"{self._prefix}circuit:{service}:failures", f"{self._prefix}circuit:{service}:open"

    def open_error(self, service: str, remaining_ms: int) -> Throttled:
        return Throttled(
            f"circuit open after repeated failures; next try in {remaining_ms / 1000:.1f}s",
            service=service,
            retry_after=remaining_ms / 1000,
        )

    def record_failure(self, service: str) -> bool:
        """Count one failure; True when this one opened the circuit."""
        failures_key, open_key = self.keys(service)
        pipe = self._redis.pipeline()
        pipe.incr(failures_key)
        pipe.pexpire(failures_key, int(self.window * 1000), nx=True)
        count, _ = pipe.execute()
        if int(count) >= self.threshold:
            self._redis.delete(failures_key)
            return bool(self._redis.set(open_key, 1, px=int(self.cooldown * 1000), nx=True))
        return False

    def record_success(self, service: str, failures_counted: bool = True) -> None:
        """Reset the failure count; ``failures_counted=False`` (from the limiter's grant)
        skips the round trip when there was nothing to reset, the common case."""
        if failures_counted:
            failures_key, _ = self.keys(service)
            self._redis.delete(failures_key)

    def is_open(self, service: str) -> bool:
        return bool(self._redis.exists(self.keys(service)[1]))
