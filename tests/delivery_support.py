"""What the delivery tests share: a runtime on the real Redis with a fresh key prefix and the
test's own sinks, and a sink base whose client points nowhere (its ``deliver`` is the test's)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from config import Settings, load_settings
from worker.events import Event
from worker.http import ServiceClient
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.runtime import Runtime
from worker.sink import Sink
from worker.store import EventStore


class LocalSink(Sink):
    """A sink whose destination lives in the test; it never sends a request."""

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return True

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            self.name,
            "http://127.0.0.1:9",
            settings=settings,
            limiter=limiter,
            rate=settings.zendesk_rate_limit,
        )


@contextmanager
def runtime_for_test(label: str) -> Iterator[Runtime]:
    """A runtime with no sinks yet (the test adds its own); its keys are deleted after."""
    prefix = f"test-{label}-{uuid.uuid4().hex[:8]}:"
    settings = load_settings(redis_key_prefix=prefix, max_retries=2, retry_backoff_base=0.1)
    client = redis.Redis.from_url(settings.redis_url)
    limiter = SharedRateLimiter(client, prefix)
    yield Runtime(
        settings=settings,
        redis=client,
        limiter=limiter,
        store=EventStore(client, prefix, settings.event_retention_seconds),
    )
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def accepted_event(rt: Runtime) -> tuple[Event, JourneyContext]:
    """A support-ticket event accepted into the store with its (empty) journey saved."""
    event = Event(
        id=f"evt_{uuid.uuid4().hex[:10]}",
        type="support_ticket",
        ticket_id="1",
        visitor_id=str(uuid.uuid4()),
    )
    assert rt.store.accept(event)
    context = JourneyContext(provider="DataFast", visitor_id=event.visitor_id or "")
    rt.store.save_context(event.id, context)
    return event, context
