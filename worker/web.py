"""The inbound HTTP side: verify, validate, dedupe, enqueue, answer.

An event is answered 2xx only once its task is in the broker; when Redis cannot take it the
answer is 503 and the id is released, so the sender's retry is not mistaken for a duplicate.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from standardwebhooks.webhooks import Webhook
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from config import Settings, get_settings
from worker import __version__
from worker.events import Event, EventRejected, InboundEvent, parse_event
from worker.observability import configure_logging, init_sentry
from worker.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: int
    message: str


class ErrorEnvelope(BaseModel):
    status: Literal["error"]
    error: ErrorBody


class SuccessEnvelope(BaseModel):
    status: Literal["success"]
    data: dict[str, Any]


class AcceptedData(BaseModel):
    eventId: str  # the contract's wire name
    state: Literal["queued", "duplicate"]


class AcceptedEnvelope(BaseModel):
    status: Literal["success"]
    data: AcceptedData


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorEnvelope, "description": "error"} for code in codes}


class ApiError(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def error_response(status_code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "error": {"code": status_code, "message": message}},
        status_code=status_code,
    )


def success_response(data: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse({"status": "success", "data": data}, status_code=status_code)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise ApiError(413, f"body is over the {limit}-byte limit")
    return bytes(body)


def verify_signature(settings: Settings, body: bytes, headers: dict[str, str]) -> None:
    """Standard Webhooks check (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)."""
    if settings.webhook_secret is None:
        if settings.allow_unsigned:
            return
        raise ApiError(401, "unsigned events are refused: WEBHOOK_SECRET is not set on the server")
    try:
        Webhook(settings.webhook_secret.get_secret_value()).verify(body, headers, json_parse=False)
    except Exception as exc:  # the library raises ValueError/binascii errors on garbled headers
        reason = str(exc) if type(exc).__name__ == "WebhookVerificationError" else "malformed"
        raise ApiError(401, f"bad or missing webhook signature ({reason})") from None


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


def enqueue(rt: Runtime, event: Event) -> bool:
    """Record and queue ``event``; False when it is a duplicate. Raises ApiError(503)."""
    from worker.tasks import enrich_event

    try:
        if not rt.store.accept(event):
            if not rt.store.needs_enqueue(event.id):
                return False
            # Accepted before and answered 503, but Redis was gone before the id could be
            # released: this retry must queue it, not be told "duplicate". A second task for
            # an event that was queued after all is harmless (the tasks are idempotent).
            log.warning("queueing an event whose publish had failed", extra={"event_id": event.id})
    except Exception:
        log.warning("redis unavailable on accept", extra={"event_id": event.id})
        raise ApiError(503, "the queue is unavailable; retry later") from None
    try:
        enrich_event.apply_async((event.id,), queue=rt.settings.celery_queue)
    except Exception:
        log.warning("broker unavailable on publish", extra={"event_id": event.id})
        try:
            rt.store.forget(event.id)
        except Exception:
            log.warning("could not release event id", extra={"event_id": event.id})
        raise ApiError(503, "the queue is unavailable; retry later") from None
    try:
        rt.store.mark_enqueued(event.id)
    except Exception:
        # Queued all the same; at worst a later duplicate queues a second, harmless task.
        log.warning("could not mark event as queued", extra={"event_id": event.id})
    return True


def accept_event(rt: Runtime, event: Event) -> JSONResponse:
    queued = enqueue(rt, event)
    log.info("event %s", "queued" if queued else "duplicate", extra={"event_id": event.id})
    state = "queued" if queued else "duplicate"
    return success_response({"eventId": event.id, "state": state}, 202 if queued else 200)


EVENT_BODY_SCHEMA = InboundEvent.model_json_schema(by_alias=True)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    init_sentry(settings, component="web")
    rt = runtime or build_runtime(settings)
    app = FastAPI(
        title="visitor-enrich",
        version=__version__,
        summary="Visitor journey context for signups, tickets and live chats.",
    )
    app.state.runtime = rt

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.post(
        "/v1/events",
        status_code=202,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EVENT_BODY_SCHEMA}},
            }
        },
        response_model=AcceptedEnvelope,
        responses={
            200: {"model": AcceptedEnvelope, "description": "duplicate"},
            **_errors(400, 401, 413, 422, 503),
        },
    )
    async def post_event(request: Request) -> JSONResponse:
        body = await read_body(request, settings.max_body_bytes)
        headers = dict(request.headers)
        verify_signature(settings, body, headers)
        payload = decode_json(body)
        try:
            event = parse_event(
                payload,
                header_id=headers.get("webhook-id"),
                require_uuid=rt.source_class.requires_uuid,
                fallback_id=f"evt_{uuid.uuid4().hex}",
            )
        except EventRejected as exc:
            raise ApiError(exc.status_code, exc.message) from None
        return await run_in_threadpool(accept_event, rt, event)

    @app.get("/v1/events/{event_id}", response_model=SuccessEnvelope, responses=_errors(404, 503))
    async def get_event(event_id: str) -> JSONResponse:
        try:
            data = await run_in_threadpool(rt.store.describe, event_id)
        except Exception:
            raise ApiError(503, "the status store is unavailable") from None
        if data is None:
            raise ApiError(404, f"no event {event_id!r}")
        return success_response(data)

    @app.get("/healthz", response_model=SuccessEnvelope)
    async def healthz() -> JSONResponse:
        return success_response({"process": "up", "version": __version__})

    @app.get("/readyz", response_model=SuccessEnvelope, responses=_errors(503))
    async def readyz() -> JSONResponse:
        try:
            await run_in_threadpool(rt.store.ping)
        except Exception:
            raise ApiError(503, "redis is not reachable") from None
        return success_response({"redis": "up"})

    @app.post(
        "/v1/webhooks/rocketchat",
        response_model=AcceptedEnvelope,
        responses=_errors(400, 401, 413, 422, 503),
    )
    async def rocketchat_webhook(request: Request) -> JSONResponse:
        from worker.livechat import parse_rocketchat_webhook

        body = await read_body(request, settings.max_body_bytes)
        expected = settings.rocketchat_webhook_token
        given = request.headers.get("x-rocketchat-livechat-token", "")
        if expected is None or not hmac.compare_digest(
            given.encode(), expected.get_secret_value().encode()
        ):
            raise ApiError(401, "bad or missing X-RocketChat-Livechat-Token")
        payload = decode_json(body)
        try:
            event = parse_rocketchat_webhook(payload, settings)
        except EventRejected as exc:
            raise ApiError(exc.status_code, exc.message) from None
        response = await run_in_threadpool(accept_event, rt, event)
        # Rocket.Chat retries anything but 200, ten times: a queued event is answered 200 too.
        response.status_code = 200
        return response

    return app
