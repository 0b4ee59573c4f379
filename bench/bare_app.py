"""The ingest reference: a bare Starlette app that reads the body and answers 202.

Same server (uvicorn, same event loop and HTTP parser), same route and body as the real
``POST /v1/events``, none of the work: no signature check, no validation, no Redis, no broker.
Run with ``uvicorn bench.bare_app:app``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_ACCEPTED = {"status": "success", "data": {"eventId": "evt", "state": "queued"}}


async def post_event(request: Request) -> Response:
    await request.body()
    return JSONResponse(_ACCEPTED, status_code=202)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "success"})


app = Starlette(
    routes=[
        Route("/v1/events", post_event, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
