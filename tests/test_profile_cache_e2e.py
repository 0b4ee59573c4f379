"""End to end: events of one visitor sent at once to the real web process and two Celery
worker processes make one DataFast call between them, and ``GET /v1/events/{id}`` says which
events used the cached journey. A later event of the same visitor is served from the cache;
with ``PROFILE_CACHE_SECONDS=0`` every event asks the provider."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from fakes import FakeUpstream, full_profile
from harness import REDIS_URL, TEST_SECRET, Service, cleanup_redis, new_prefix, new_queue

pytestmark = pytest.mark.e2e

_tickets = itertools.count(random.randint(10_000, 90_000) * 10)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def _service(
    fake: FakeUpstream, client: redis.Redis, log_dir: Path, cache_seconds: int
) -> Iterator[Service]:
    prefix, queue = new_prefix(), new_queue()
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "WEBHOOK_SECRET": TEST_SECRET,
        **fake.env(),
        "DATAFAST_RATE_LIMIT": "100",
        "PROFILE_CACHE_SECONDS": str(cache_seconds),
        "LOG_LEVEL": "INFO",
    }
    try:
        with Service(env, log_dir, workers=2, redis_client=client) as service:
            yield service
    finally:
        cleanup_redis(client, prefix, queue)


@pytest.fixture(scope="module")
def svc(
    fake: FakeUpstream, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    client = redis.Redis.from_url(redis_server)
    yield from _service(fake, client, tmp_path_factory.mktemp("cache-on"), 60)
    client.close()


def _ticket_event(fake: FakeUpstream, visitor: str) -> dict[str, Any]:
    ticket = str(next(_tickets))
    fake.add_ticket(ticket)
    return {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket}


def _send_at_once(svc: Service, events: list[dict[str, Any]]) -> list[str]:
    ids = [f"evt_{uuid.uuid4().hex[:16]}" for _ in events]
    with ThreadPoolExecutor(len(events)) as pool:
        responses = list(pool.map(lambda e, i: svc.send_event(e, event_id=i), events, ids))
    assert [r.status_code for r in responses] == [202] * len(events)
    return ids


def _datafast_calls(fake: FakeUpstream, visitor: str) -> int:
    return len(fake.requests_to("datafast", contains=f"/visitors/{visitor}"))


def test_events_of_one_visitor_share_one_fetch_across_workers(
    svc: Service, fake: FakeUpstream
) -> None:
    visitor = fake.add_visitor(full_profile(str(uuid.uuid4())))
    # The provider answers slowly, so the other events arrive while the fetch is in flight.
    fake.delay("datafast", 1.0, match=f"/visitors/{visitor}")
    ids = _send_at_once(svc, [_ticket_event(fake, visitor) for _ in range(6)])
    statuses = [svc.wait_for_state(event_id, {"delivered"}, timeout=30) for event_id in ids]
    assert _datafast_calls(fake, visitor) == 1
    cached = [s["source"]["journeyCached"] for s in statuses]
    assert sorted(cached) == [False] + [True] * 5, cached
    for status in statuses:
        assert status["source"]["journeyFound"] is True
        steps = [s["step"] for s in status["steps"]]
        assert ("journey_cached" in steps) == status["source"]["journeyCached"], steps
        assert "journey_found" in steps
    # Every ticket got its note, cached journey or not.
    for event_id, status in zip(ids, statuses, strict=True):
        assert status["sinks"]["zendesk"]["state"] == "delivered", event_id

    # A later event of the same visitor, within PROFILE_CACHE_SECONDS: no call at all.
    (later,) = _send_at_once(svc, [_ticket_event(fake, visitor)])
    status = svc.wait_for_state(later, {"delivered"}, timeout=30)
    assert status["source"]["journeyCached"] is True
    step = next(s for s in status["steps"] if s["step"] == "journey_cached")
    assert 0 < step["age_seconds"] < 60
    assert _datafast_calls(fake, visitor) == 1


def test_zero_asks_the_provider_for_every_event(
    fake: FakeUpstream, redis_server: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server)
    service = _service(fake, client, tmp_path, 0)
    svc = next(service)
    try:
        visitor = fake.add_visitor(full_profile(str(uuid.uuid4())))
        ids = _send_at_once(svc, [_ticket_event(fake, visitor) for _ in range(3)])
        statuses = [svc.wait_for_state(event_id, {"delivered"}, timeout=30) for event_id in ids]
        assert [s["source"]["journeyCached"] for s in statuses] == [False] * 3
        assert _datafast_calls(fake, visitor) == 3
    finally:
        service.close()
        client.close()
