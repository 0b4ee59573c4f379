"""The sandbox's ``console`` sink (on with ``SANDBOX=true``): keeps what would have been
posted, every sink's note as that sink renders it (worker/notes.py), for the console's event
page; posts nothing anywhere.

From the console's sandbox page it can be set to fail (as if its destination were down), to
see retries, a dead letter and a replay without a real outage.
"""

from __future__ import annotations

import redis

from config import Rate, Settings
from worker import health
from worker.errors import Unavailable
from worker.events import Event
from worker.http import ServiceClient
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.notes import RenderedNote, render_all
from worker.ratelimit import SharedRateLimiter
from worker.sandbox import sandbox_client
from worker.sink import DeliveryResult, Note, Sink
from worker.store import EventStore


class ConsoleSink(Sink):
    name = "console"
    label = "Console (sandbox)"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.sandbox

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        self._redis: redis.Redis = limiter.redis
        return sandbox_client(self.name, settings, limiter, Rate(100, 1))

    @staticmethod
    def _failing_key(prefix: str) -> str:
        return f"{prefix}sandbox:console-fails"

    @classmethod
    def failing(cls, client: redis.Redis, prefix: str) -> bool:
        return bool(client.exists(cls._failing_key(prefix)))

    @classmethod
    def set_failing(cls, client: redis.Redis, prefix: str, failing: bool) -> None:
        if failing:
            client.set(cls._failing_key(prefix), 1)
        else:
            client.delete(cls._failing_key(prefix))

    @classmethod
    def kept(cls, store: EventStore, event_id: str) -> list[RenderedNote]:
        notes = [
            RenderedNote.model_validate_json(v) for v in (store.kept_notes(event_id) or {}).values()
        ]
        return sorted(notes, key=lambda n: n.sink)

    def _store(self) -> EventStore:
        settings = self.settings
        return EventStore(self._redis, settings.redis_key_prefix, settings.event_retention_seconds)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        prefix = self.settings.redis_key_prefix
        if self.failing(self._redis, prefix):
            message = "sandbox: the console sink is set to fail (see the sandbox page)"
            health.record_error(self._redis, prefix, self.name, message)
            raise Unavailable(message, service=self.name)
        notes = render_all(self.settings, event, context)
        self._store().keep_notes(event.id, {n.sink: n.model_dump_json() for n in notes})
        return DeliveryResult(
            external_id=f"console:{event.id}", detail=f"kept {len(notes)} rendered notes"
        )

    def already_delivered(self, event: Event) -> bool | None:
        return self._store().kept_notes(event.id) is not None

    def check(self) -> str:
        return "sandbox: keeps rendered notes for the console, posts nothing"


INTEGRATION = Integration(name="console", label="Console (sandbox)", sink=ConsoleSink)
