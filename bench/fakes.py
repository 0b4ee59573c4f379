"""Fake DataFast provider and Zendesk/HubSpot/Slack/Rocket.Chat sinks, with set latency and quota.

Run by uvicorn in its own process (``python -m bench.fakes --port P``). Each service has a
``latency`` (seconds slept before answering) and a ``quota`` (requests admitted in any 1-second
window; 0 = unlimited). The quota is a strict moving window over *arrival* times: a request is
answered 429 (``Retry-After: 1``) when ``quota`` requests were already admitted in the second
before it arrived. Nothing is rounded or forgiven, so a client that sends exactly ``quota``
requests per second with a few milliseconds of jitter will see 429s; for each 429 the fake keeps
how far back the oldest admitted request of that window was (``span``), which shows by how
much the client overran the window.

Every arrival is recorded (time.time(), status, key, span) and served by ``GET /_bench/stats``;
``POST /_bench/config`` sets latency and quota per service and clears the records.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SERVICES = ("datafast", "zendesk", "hubspot", "slack", "rocketchat")
WINDOW = 1.0


@dataclass
class Service:
    latency: float = 0.0
    quota: int = 0
    admitted: collections.deque[float] = field(default_factory=collections.deque)
    # (arrival time, status, key, span of the window that refused it or None)
    arrivals: list[tuple[float, int, str, float | None]] = field(default_factory=list)
    ok_keys: set[str] = field(default_factory=set)
    refused: int = 0

    def arrive(self, key: str) -> tuple[int, float]:
        """Record one arrival; return (status, arrival time): 200 admitted, 429 over quota."""
        now = time.time()
        if self.quota > 0:
            while self.admitted and self.admitted[0] <= now - WINDOW:
                self.admitted.popleft()
            if len(self.admitted) >= self.quota:
                self.arrivals.append((now, 429, key, now - self.admitted[0]))
                self.refused += 1
                return 429, now
            self.admitted.append(now)
        self.arrivals.append((now, 200, key, None))
        self.ok_keys.add(key)
        return 200, now


STATE: dict[str, Service] = {name: Service() for name in SERVICES}


def _too_many() -> Response:
    body = {"status": "error", "error": {"code": 429, "message": "rate limit exceeded"}}
    return JSONResponse(body, status_code=429, headers={"Retry-After": "1"})


def visitor_profile(visitor_id: str) -> dict[str, Any]:
    """A DataFast visitor profile shaped like the documented example (seed 000), ~2 KB."""
    pages = [
        {"url": f"https://example.com/{path}", "timestamp": f"2026-11-2{i % 10}T10:0{i}:00.000Z"}
        for i, path in enumerate(["", "pricing", "docs/start", "blog/launch", "pricing", "signup"])
    ]
    return {
        "status": "success",
        "data": {
            "visitorId": visitor_id,
            "identity": {
                "country": "United States",
                "countryCode": "US",
                "region": "California",
                "city": "San Francisco",
                "params": {"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "launch"},
                "adClickIds": {"gclid": "Cj0KCQiA-bench"},
                "browser": {"name": "Chrome", "version": "131.0"},
                "os": {"name": "Mac OS", "version": "15.1"},
                "device": {"type": "desktop", "vendor": None, "model": None},
                "viewport": {"width": 1512, "height": 982},
            },
            "activity": {
                "visitCount": 3,
                "pageViewCount": 8,
                "timeSinceFirstVisit": 86_400_000,
                "timeSinceCurrentVisit": 60_000,
                "firstVisitAt": "2026-11-20T10:00:00.000Z",
                "lastVisitAt": "2026-11-22T10:00:00.000Z",
                "currentUrl": "https://example.com/pricing",
                "completedGoals": [
                    {
                        "name": "signup",
                        "origin": "manual",
                        "type": "custom",
                        "timestamp": "2026-11-22T10:05:00.000Z",
                    }
                ],
                "visitedPages": pages,
            },
            "profile": None,
            "prediction": {
                "score": 42,
                "conversionRate": 0.0138,
                "expectedValue": 3.09,
                "confidence": 0.831,
            },
        },
    }


async def _serve(service: str, key: str) -> Response | None:
    """Admit or refuse one request; None when admitted (after the service's latency)."""
    state = STATE[service]
    status, _ = state.arrive(key)
    if status == 429:
        return _too_many()
    if state.latency > 0:
        await asyncio.sleep(state.latency)
    return None


async def datafast_visitor(request: Request) -> Response:
    visitor_id = request.path_params["visitor_id"]
    refused = await _serve("datafast", visitor_id)
    return refused or JSONResponse(visitor_profile(visitor_id))


async def zendesk_ticket(request: Request) -> Response:
    ticket_id = request.path_params["ticket_id"]
    await request.body()
    refused = await _serve("zendesk", ticket_id)
    if refused:
        return refused
    comment_id = len(STATE["zendesk"].arrivals)
    return JSONResponse(
        {
            "ticket": {"id": ticket_id},
            "audit": {"events": [{"type": "Comment", "id": comment_id, "public": False}]},
        }
    )


async def zendesk_comments(request: Request) -> Response:
    return JSONResponse({"comments": []})


# The bench's events name their ticket in the email (``t{ticket}@bench.example``) and the room
# (``room{ticket}``): the key under which a HubSpot, Slack or Rocket.Chat request is counted.
_TICKET_IN_BODY = re.compile(rb"t(\d+)@bench\.example|room(\d+)")


async def generic(request: Request) -> Response:
    service = request.path_params["service"]
    if service not in STATE:
        return JSONResponse({"message": "unknown service"}, status_code=404)
    body = await request.body()
    match = _TICKET_IN_BODY.search(body)
    key = (match.group(1) or match.group(2)).decode() if match else request.url.path
    refused = await _serve(service, key)
    return refused or JSONResponse({"id": str(len(STATE[service].arrivals)), "results": []})


async def configure(request: Request) -> Response:
    """``{"datafast": {"latency": 0.1, "quota": 20}, ...}``: set and clear every service."""
    body = await request.json()
    for name in SERVICES:
        options = body.get(name) or {}
        STATE[name] = Service(
            latency=float(options.get("latency", 0.0)), quota=int(options.get("quota", 0))
        )
    return JSONResponse({"ok": True})


async def stats(request: Request) -> Response:
    return Response(
        json.dumps(
            {
                name: {
                    "latency": s.latency,
                    "quota": s.quota,
                    "arrivals": s.arrivals,
                }
                for name, s in STATE.items()
            }
        ),
        media_type="application/json",
    )


async def counts(request: Request) -> Response:
    """Cheap progress: admitted, refused and distinct admitted keys per service."""
    return JSONResponse(
        {
            name: {
                "admitted": len(s.arrivals) - s.refused,
                "refused": s.refused,
                "keys": len(s.ok_keys),
            }
            for name, s in STATE.items()
        }
    )


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/datafast/api/v1/visitors/{visitor_id}", datafast_visitor, methods=["GET"]),
        Route("/zendesk/api/v2/tickets/{ticket_id}.json", zendesk_ticket, methods=["PUT"]),
        Route(
            "/zendesk/api/v2/tickets/{ticket_id}/comments.json", zendesk_comments, methods=["GET"]
        ),
        Route("/_bench/config", configure, methods=["POST"]),
        Route("/_bench/stats", stats, methods=["GET"]),
        Route("/_bench/counts", counts, methods=["GET"]),
        Route("/_bench/health", health, methods=["GET"]),
        Route("/{service}/{path:path}", generic, methods=["GET", "POST", "PUT", "PATCH"]),
    ]
)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
