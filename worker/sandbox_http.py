"""The HTTP client of sandbox integrations: one that cannot leave this process.

The sandbox's source and sink never send a request; should one ever try, this transport
refuses it before any socket is opened, so sandbox mode cannot reach a real provider.
"""

from __future__ import annotations

import httpx

from config import Rate, Settings
from worker.http import ServiceClient
from worker.ratelimit import SharedRateLimiter


class SandboxRequestRefused(RuntimeError):
    pass


def _refuse(request: httpx.Request) -> httpx.Response:
    raise SandboxRequestRefused(f"sandbox mode sends no request ({request.method})")


def sandbox_client(
    service: str, settings: Settings, limiter: SharedRateLimiter, rate: Rate
) -> ServiceClient:
    return ServiceClient(
        service,
        f"sandbox://{service}",
        settings=settings,
        limiter=limiter,
        rate=rate,
        client=httpx.Client(transport=httpx.MockTransport(_refuse)),
    )
