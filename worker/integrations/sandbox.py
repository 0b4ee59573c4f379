"""Sandbox mode (``SANDBOX=true``): a sample source and a ``console`` sink, so a fresh install
shows the product working without any account, and nothing can reach a real system.

* ``sandbox`` source: a realistic DataFast-shaped visitor profile for any visitor id, made up
  deterministically from the id (the same id always gets the same journey), parsed by
  DataFast's own parser (``to_journey``), so what the sinks and the console show is exactly
  what a DataFast answer of that shape would give. No request is sent.
* ``console`` sink: keeps what would have been posted, each destination's note as that sink
  renders it (worker/notes.py), for the console's event page; posts nothing anywhere. From
  the console's sandbox page it can be set to fail (as if its destination were down), to see
  retries, a dead letter and a replay without a real outage.

Settings refuse ``SANDBOX=true`` together with any real provider key (config/settings.py), and
both parts' HTTP clients refuse to open a connection (worker/sandbox_http.py).
"""

from __future__ import annotations

import hashlib
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis

from config import Rate, Settings
from worker import health, metrics
from worker.errors import Unavailable
from worker.events import Event
from worker.http import ServiceClient
from worker.integration import Integration
from worker.integrations.datafast import VisitorProfile, to_journey
from worker.journey import JourneyContext
from worker.notes import RenderedNote, render_all
from worker.ratelimit import SharedRateLimiter
from worker.sandbox_http import sandbox_client
from worker.sink import DeliveryResult, Note, Sink
from worker.source import Source

SAMPLE_RATE = Rate(20, 1)
SITE = "https://app.example.com"

_PLACES = [
    ("Germany", "DE", "Berlin", "Berlin"),
    ("United States", "US", "California", "San Francisco"),
    ("France", "FR", "Île-de-France", "Paris"),
    ("India", "IN", "Karnataka", "Bengaluru"),
    ("Brazil", "BR", "São Paulo", "São Paulo"),
]
_CAMPAIGNS: list[dict[str, Any]] = [
    {"params": {"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "brand-search"},
     "adClickIds": {"gclid": "Cj0KCQiA-sample"}},
    {"params": {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "november"},
     "adClickIds": {}},
    {"params": {"ref": "producthunt"}, "referrer": "https://www.producthunt.com/",
     "adClickIds": {}},
    {"params": {}, "referrer": "https://news.ycombinator.com/", "adClickIds": {}},
]  # fmt: skip
_TECH = [
    ({"name": "Chrome", "version": "131.0"}, {"name": "macOS", "version": "15.1"}, "desktop"),
    ({"name": "Safari", "version": "18.1"}, {"name": "iOS", "version": "18.1"}, "mobile"),
    ({"name": "Firefox", "version": "133.0"}, {"name": "Windows", "version": "11"}, "desktop"),
]
_PAGES = ["/", "/features", "/pricing", "/docs/getting-started", "/blog/launch", "/checkout"]


def sample_profile(visitor_id: str, now: datetime) -> dict[str, Any]:
    """The ``data`` of a DataFast ``GET /api/v1/visitors/{id}`` answer for ``visitor_id``."""
    rng = random.Random(hashlib.sha256(visitor_id.encode()).digest())
    country, code, region, city = rng.choice(_PLACES)
    campaign = rng.choice(_CAMPAIGNS)
    browser, os_, device = rng.choice(_TECH)
    visits = rng.randint(1, 9)
    first = now - timedelta(days=rng.randint(0, 30), hours=rng.randint(1, 20))
    last = now - timedelta(minutes=rng.randint(1, 50))
    pages = [
        {
            "url": SITE + rng.choice(_PAGES),
            "timestamp": (last - timedelta(minutes=i * 3)).isoformat(),
        }
        for i in range(rng.randint(3, 8))
    ]
    goals = [{"name": "signup", "type": "custom", "timestamp": last.isoformat()}]
    if rng.random() < 0.3:
        goals.append({"name": "payment", "type": "payment", "timestamp": last.isoformat()})
    score = rng.randint(15, 98)
    return {
        "visitorId": visitor_id,
        "identity": {
            "country": country,
            "countryCode": code,
            "region": region,
            "city": city,
            "params": campaign["params"],
            "referrer": campaign.get("referrer"),
            "adClickIds": campaign["adClickIds"],
            "browser": browser,
            "os": os_,
            "device": {"type": device},
            "viewport": {"width": 1440 if device == "desktop" else 390, "height": 900},
        },
        "activity": {
            "visitCount": visits,
            "pageViewCount": visits * rng.randint(2, 6),
            "timeSinceFirstVisit": int((now - first).total_seconds()),
            "timeSinceCurrentVisit": int((now - last).total_seconds()),
            "firstVisitAt": first.isoformat(),
            "lastVisitAt": last.isoformat(),
            "currentUrl": pages[0]["url"],
            "completedGoals": goals,
            "visitedPages": pages,
        },
        "prediction": {
            "score": score,
            "conversionRate": round(score / 400, 3),
            "expectedValue": round(score * 0.9, 2),
            "confidence": round(rng.uniform(0.5, 0.95), 2),
        },
    }


class SandboxSource(Source):
    name = "sandbox"
    label = "Sandbox (sample DataFast journeys)"
    requires_uuid = False

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.sandbox

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        self._limiter = limiter
        return sandbox_client(self.name, settings, limiter, SAMPLE_RATE)

    def fetch_journey(self, visitor_id: str, website: str | None = None) -> JourneyContext:
        started = time.monotonic()
        # Through the shared limiter like a real source, so the health page shows its use.
        self._limiter.acquire(self.name, SAMPLE_RATE, max_wait=self.settings.max_countdown / 2)
        profile = VisitorProfile.model_validate(sample_profile(visitor_id, datetime.now(UTC)))
        metrics.upstream_request(self.name, time.monotonic() - started, 200)
        return to_journey(profile)

    def check(self) -> str:
        return "sandbox: sample journeys, no request leaves this process"


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
    def _kept_key(prefix: str, event_id: str) -> str:
        return f"{prefix}event:{event_id}:console"

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
    def kept(cls, client: redis.Redis, prefix: str, event_id: str) -> list[RenderedNote]:
        raw = client.hgetall(cls._kept_key(prefix, event_id))
        notes = [RenderedNote.model_validate_json(v) for v in raw.values()]
        return sorted(notes, key=lambda n: n.sink)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        prefix = self.settings.redis_key_prefix
        if self.failing(self._redis, prefix):
            message = "sandbox: the console sink is set to fail (see the sandbox page)"
            health.record_error(self._redis, prefix, self.name, message)
            raise Unavailable(message, service=self.name)
        notes = render_all(self.settings, event, context)
        key = self._kept_key(prefix, event.id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping={n.sink: orjson.dumps(n.model_dump()) for n in notes})
        pipe.expire(key, self.settings.event_retention_seconds)
        pipe.execute()
        return DeliveryResult(
            external_id=f"console:{event.id}", detail=f"kept {len(notes)} rendered notes"
        )

    def already_delivered(self, event: Event) -> bool | None:
        key = self._kept_key(self.settings.redis_key_prefix, event.id)
        return bool(self._redis.exists(key))

    def check(self) -> str:
        return "sandbox: keeps rendered notes for the console, posts nothing"


# Two systems in one module: they exist only together (SANDBOX=true).
INTEGRATIONS = (
    Integration(name="sandbox", label="Sandbox", source=SandboxSource),
    Integration(name="console", label="Console (sandbox)", sink=ConsoleSink),
)
