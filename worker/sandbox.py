"""Sandbox mode (``SANDBOX=true``): what stands in for the outside world, in this process.

* DataFast: ``sample_datafast_client`` is an HTTP client whose transport answers DataFast's
  ``GET /api/v1/visitors/{id}`` itself, with a realistic visitor profile made up
  deterministically from the id (the same id always gets the same journey). The real DataFast
  source uses it in sandbox mode, so its request, envelope and parser are the ones a real
  answer of that shape goes through; the request never leaves the process.
* Every other client of a sandbox part (the ``console`` sink's) refuses to send at all.

Settings refuse ``SANDBOX=true`` together with any real provider key (config/settings.py).
"""

from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from config import Rate, Settings
from worker.http import ServiceClient
from worker.ratelimit import SharedRateLimiter


class SandboxRequestRefused(RuntimeError):
    pass


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


_VISITOR_PATH = re.compile(r"/api/v1/visitors/([^/]+)$")


def _sample_datafast(request: httpx.Request) -> httpx.Response:
    """DataFast's API as far as the sandbox needs it (its documented envelopes)."""
    match = _VISITOR_PATH.search(request.url.path)
    if request.method != "GET" or match is None:
        error = {"code": 404, "message": "the sandbox answers only GET /api/v1/visitors/{id}"}
        return httpx.Response(404, json={"status": "error", "error": error})
    profile = sample_profile(match.group(1), datetime.now(UTC))
    return httpx.Response(200, json={"status": "success", "data": profile})


def sample_datafast_client() -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(_sample_datafast))


def _refuse(request: httpx.Request) -> httpx.Response:
    raise SandboxRequestRefused(f"sandbox mode sends no request ({request.method})")


def sandbox_client(
    service: str, settings: Settings, limiter: SharedRateLimiter, rate: Rate
) -> ServiceClient:
    """A client for a sandbox part that has nobody to talk to: it refuses every request
    before any socket is opened."""
    return ServiceClient(
        service,
        f"sandbox://{service}",
        settings=settings,
        limiter=limiter,
        rate=rate,
        client=httpx.Client(transport=httpx.MockTransport(_refuse)),
    )
