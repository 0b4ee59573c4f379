"""The circuit breaker, shared through real Redis by two 'workers' (two clients). Requests
check it where they take their rate-limit slot (``SharedRateLimiter.acquire``), as here."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from config import Rate
from worker.circuit import CircuitBreaker
from worker.errors import Throttled
from worker.ratelimit import SharedRateLimiter


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"test-circuit-{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis()
    keys = list(client.scan_iter(f"{value}*"))
    if keys:
        client.delete(*keys)


def _breaker(prefix: str, cooldown: float = 0.5) -> CircuitBreaker:
    return CircuitBreaker(redis.Redis(), prefix, threshold=3, window=10, cooldown=cooldown)


def _before_call(breaker: CircuitBreaker, service: str) -> bool:
    """What a request does before it leaves: take a slot, raising while the circuit is open;
    True when failures are being counted."""
    limiter = SharedRateLimiter(redis.Redis(), breaker._prefix)
    return limiter.acquire(service, Rate(1000, 1), max_wait=1, circuit=breaker)


def test_opens_after_threshold_failures_across_workers(prefix: str) -> None:
    one, two = _breaker(prefix), _breaker(prefix)
    assert not one.record_failure("datafast")
    assert not two.record_failure("datafast")
    _before_call(one, "datafast")  # still closed
    assert two.record_failure("datafast")  # the third failure, from either worker, opens it
    for breaker in (one, two):
        with pytest.raises(Throttled) as caught:
            _before_call(breaker, "datafast")
        assert 0 < caught.value.retry_after <= 0.5
    # Other services are not affected.
    _before_call(one, "zendesk")


def test_closes_after_cooldown_and_success_resets_the_count(prefix: str) -> None:
    breaker = _breaker(prefix, cooldown=0.2)
    for _ in range(3):
        breaker.record_failure("hubspot")
    assert breaker.is_open("hubspot")
    time.sleep(0.3)
    _before_call(breaker, "hubspot")  # the probe may go
    breaker.record_success("hubspot")
    assert not breaker.record_failure("hubspot")
    assert not breaker.record_failure("hubspot")
    assert not breaker.is_open("hubspot")


def test_the_grant_says_whether_a_success_has_a_count_to_reset(prefix: str) -> None:
    breaker, other = _breaker(prefix), _breaker(prefix)
    assert _before_call(breaker, "slack") is False
    other.record_failure("slack")  # counted by another worker
    counted = _before_call(breaker, "slack")
    assert counted is True
    breaker.record_success("slack", counted)
    assert _before_call(breaker, "slack") is False
    # Two more failures no longer open it: the success reset the shared count.
    assert not other.record_failure("slack")
    assert not other.record_failure("slack")
    assert not breaker.is_open("slack")


def test_the_limiters_grant_checks_the_circuit_in_the_same_round_trip(prefix: str) -> None:
    client = redis.Redis()
    breaker = _breaker(prefix, cooldown=0.3)
    limiter = SharedRateLimiter(client, prefix)
    rate = Rate(1000, 1)
    assert limiter.acquire("datafast", rate, max_wait=1, circuit=breaker) is False
    breaker.record_failure("datafast")
    assert limiter.acquire("datafast", rate, max_wait=1, circuit=breaker) is True
    breaker.record_failure("datafast")
    breaker.record_failure("datafast")  # the third: open
    log_key = f"{prefix}rate:datafast"
    granted = client.zcard(log_key)
    with pytest.raises(Throttled) as caught:
        limiter.acquire("datafast", rate, max_wait=60, circuit=breaker)
    assert "circuit open" in str(caught.value) and 0 < caught.value.retry_after <= 0.3
    assert client.zcard(log_key) == granted  # an open circuit takes no rate slot
    # Without the breaker the limiter does not look at the circuit.
    assert limiter.acquire("datafast", rate, max_wait=1) is False
    time.sleep(0.35)
    assert limiter.acquire("datafast", rate, max_wait=1, circuit=breaker) is False
