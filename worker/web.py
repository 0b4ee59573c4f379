"""The inbound HTTP side: verify, validate, dedupe, enqueue, answer.

An event is answered 2xx only once it is recorded and its task is in the broker, both in one
atomic Redis call (worker/intake.py); when Redis cannot take it the answer is 503 and nothing
was kept, so the sender's retry is not mistaken for a duplicate.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from config import Settings, get_settings
from config.settings import split_secrets
from worker import __version__, metrics
from worker.events import (
    MAX_ID_LENGTH,
    Event,
    EventRejected,
    InboundEvent,
    check_website,
    parse_event,
)
from worker.inbound import Ignored, WebhookAdapter, WebhookRequest
from worker.intake import ENRICH_EVENT_TASK, EventIntake
from worker.integrations import build_webhooks
from worker.observability import configure_logging, init_sentry, scrub_access_log
from worker.runtime import Runtime, build_runtime, settle_garbage_collector
from worker.signature import SignatureCheck, SignatureError, matches_any

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
    def __init__(
        self, status_code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


class EnvelopeResponse(JSONResponse):
    """JSON rendered by orjson: the same compact UTF-8 as Starlette's, in a fraction of the
    time (the answer is rendered once per inbound event)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        # The two headers Starlette would write, without its general case (one response per
        # inbound event).
        if headers is not None:
            super().init_headers(headers)
            return
        self.raw_headers = [
            (b"content-length", str(len(self.body)).encode()),
            (b"content-type", b"application/json"),
        ]


def error_response(
    status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return EnvelopeResponse(
        {"status": "error", "error": {"code": status_code, "message": message}},
        status_code=status_code,
        headers=headers,
    )


def success_response(data: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return EnvelopeResponse({"status": "success", "data": data}, status_code=status_code)


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (or when its
    ``declared`` Content-Length does)."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body is over the {limit}-byte limit")
    # The ASGI messages are read here rather than through ``Request.stream()``, whose async
    # generator cost more than the rest of reading; a small body is a single message.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name, the first of repeated ones winning, as
    Starlette's ``Headers.get`` does; built once, where each ``Headers.get`` scans them all."""
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in reversed(scope["headers"])
    }


# Bearer tokens ------------------------------------------------------------------------------

# Documents the scheme in OpenAPI; the check itself is ``BearerAuth`` (auto_error off, so a
# missing header gets this service's own 401 envelope and message).
_bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer <API_TOKEN>")


class BearerAuth:
    """A FastAPI dependency requiring ``Authorization: Bearer <token>``: give it to a route
    as ``dependencies=[Depends(auth)]``.

    ``secret`` may list several tokens, comma-separated (rotation). Unset, every request is
    refused with a 401 that names ``variable``, unless ``open_note`` is given: then requests
    pass and ``annotate`` puts the note on the answers (e.g. ``SANDBOX=true``). Reusable by any
    read or admin surface (operator console, /metrics) with its own variable.
    """

    def __init__(self, secret: SecretStr | None, *, variable: str, open_note: str | None = None):
        self.tokens = split_secrets(secret)
        self.variable = variable
        self.open_note = open_note

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]
    ) -> None:
        if not self.tokens:
            if self.open_note is not None:
                return
            raise ApiError(
                401,
                f"this endpoint needs a bearer token and {self.variable} is not set on the "
                f"server: set {self.variable} and send Authorization: Bearer <{self.variable}>",
                {"WWW-Authenticate": "Bearer"},
            )
        given = credentials.credentials if credentials is not None else None
        if not matches_any(given, self.tokens):
            raise ApiError(
                401,
                f"missing or wrong bearer token: send Authorization: Bearer <{self.variable}>",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    @property
    def is_open(self) -> bool:
        return not self.tokens and self.open_note is not None

    def annotate(self, response: JSONResponse) -> JSONResponse:
        """Say on an answer that it was given without a token (sandbox), when so."""
        if self.is_open and self.open_note:
            response.headers["X-Visitor-Enrich-Access"] = self.open_note
        return response


def api_access(settings: Settings) -> BearerAuth:
    """The guard of the status API and the other read and admin endpoints (API_TOKEN)."""
    note = None
    if settings.sandbox and settings.api_token is None:
        note = "open without a token: SANDBOX=true and API_TOKEN is not set"
    return BearerAuth(settings.api_token, variable="API_TOKEN", open_note=note)


def signature_check(settings: Settings) -> Callable[[bytes, Mapping[str, str]], None]:
    """The inbound signature check for these settings: raises ApiError(401) on a bad one."""
    secret = settings.webhook_secret
    if secret is None:

        def unsigned(body: bytes, headers: Mapping[str, str]) -> None:
            if not settings.allow_unsigned:
                raise ApiError(
                    401, "unsigned events are refused: WEBHOOK_SECRET is not set on the server"
                )

        return unsigned
    check = SignatureCheck(s.get_secret_value() for s in settings.webhook_secrets)

    def signed(body: bytes, headers: Mapping[str, str]) -> None:
        try:
            check.verify(body, headers)
        except SignatureError as exc:
            raise ApiError(401, f"bad or missing webhook signature ({exc})") from None

    return signed


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


async def accept(intake: EventIntake, event: Event) -> bool:
    """Record and queue ``event``: True when queued, False for a duplicate; ``ApiError(503)``
    when Redis cannot take it, and then nothing of it was kept, so the sender's retry is a
    new event; or when too few replicas acknowledged it in time (worker/intake.py says what
    the retry gets then)."""
    try:
        queued = await intake.accept(event)
    except Exception:
        log.warning("redis unavailable on accept", extra={"event_id": event.id})
        raise ApiError(503, "the queue is unavailable; retry later") from None
    log.info("event %s", "queued" if queued else "duplicate", extra={"event_id": event.id})
    return queued


async def accept_event(intake: EventIntake, event: Event) -> JSONResponse:
    """Record and queue ``event`` (202), or say it is a duplicate (200); 503 as ``accept``."""
    queued = await accept(intake, event)
    state = "queued" if queued else "duplicate"
    return success_response({"eventId": event.id, "state": state}, 202 if queued else 200)


def add_webhook_route(
    app: FastAPI,
    adapter: WebhookAdapter,
    intake: EventIntake,
    limit: int,
    websites: frozenset[str],
) -> None:
    """``POST /v1/webhooks/{system}`` for one adapter (``worker/inbound.py``), and the HEAD
    check some senders make before they save the URL (Intercom)."""
    path = f"/v1/webhooks/{adapter.system}"

    async def receive_webhook(request: Request) -> Response:
        scope = request.scope
        headers = header_map(scope)
        body = await read_body(request.receive, headers.get("content-length"), limit)
        if not adapter.configured(adapter.settings):
            raise ApiError(401, adapter.not_configured_message())
        query = dict(request.query_params)
        raw_query = scope.get("query_string", b"").decode("latin-1")
        webhook = WebhookRequest(
            method=scope["method"],
            url=f"{scope['path']}?{raw_query}" if raw_query else scope["path"],
            body=body,
            headers=headers,
            query=query,
            website=query.get("website") or None,
        )
        try:
            adapter.verify(webhook)
        except SignatureError as exc:
            raise ApiError(401, f"bad or missing {adapter.label} signature ({exc})") from None
        payload = decode_json(body)
        try:
            if webhook.website is not None:
                check_website(webhook.website, websites)
            events = list(adapter.map_events(webhook, payload))
            if events:
                metrics.name_event_type(scope, {"type": events[0].type})
        except Ignored as exc:
            log.info("webhook ignored", extra={"system": adapter.system, "reason": exc.reason})
            return success_response({"state": "ignored", "reason": exc.reason})
        except EventRejected as exc:
            raise ApiError(exc.status_code, exc.message) from None
        if webhook.website:
            events = [
                e.model_copy(update={"website": e.website or webhook.website}) for e in events
            ]
        results = [(event.id, await accept(intake, event)) for event in events]
        queued = any(q for _, q in results)
        status = adapter.accepted_status if queued else 200
        states = [{"eventId": i, "state": "queued" if q else "duplicate"} for i, q in results]
        if len(states) == 1:
            return success_response(states[0], status)
        return success_response({"events": states}, status)

    async def check_webhook(request: Request) -> Response:
        return Response(status_code=200)

    app.router.add_api_route(
        path,
        receive_webhook,
        methods=["POST"],
        route_class_override=DirectRoute,
        summary=f"{adapter.label} webhook",
        description=(adapter.__doc__ or "").strip(),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": ["object", "array"]}}},
            }
        },
        response_model=AcceptedEnvelope,
        responses={
            202: {"model": AcceptedEnvelope, "description": "queued"},
            **_errors(400, 401, 413, 422, 503),
        },
    )
    app.router.add_api_route(path, check_webhook, methods=["HEAD"], include_in_schema=False)


class DirectRoute(APIRoute):
    """A route documented like any other (request body, responses) whose endpoint is a plain
    ``(Request) -> Response`` handler that answers every error itself (``ApiError``).

    ``VisitorEnrichApp`` serves it before FastAPI's middleware stack and request handling
    (error, telemetry, body-limit and exit-stack middleware, routing, dependency solving,
    validation): they cost about half of the web process's time per inbound event
    (bench/README.md), and these endpoints need none of it: they must read the raw body to
    check its signature before they validate anything.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


DirectEndpoint = Callable[[Request], Awaitable[Response]]


class VisitorEnrichApp(FastAPI):
    """The FastAPI app, with its ``DirectRoute`` requests served directly (see there)."""

    _direct: dict[tuple[str, str], DirectEndpoint] | None = None

    def direct_endpoints(self) -> dict[tuple[str, str], DirectEndpoint]:
        if self._direct is None:
            self._direct = {
                (method, route.path): route.endpoint
                for route in self.routes
                if isinstance(route, DirectRoute)
                for method in route.methods or ()
            }
        return self._direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.direct_endpoints().get((scope["method"], scope["path"]))
            if endpoint is not None:
                await serve_direct(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def serve_direct(
    endpoint: DirectEndpoint, scope: Scope, receive: Receive, send: Send
) -> None:
    try:
        response = await endpoint(Request(scope, receive, send))
    except ApiError as exc:
        response = error_response(exc.status_code, exc.message, exc.headers)
    except Exception:
        log.exception("unexpected error", extra={"path": scope["path"]})
        response = error_response(500, "internal error")
    # Every inbound event's answer, accepted or refused (the endpoint names the event type).
    metrics.inbound_answered(scope, response.status_code)
    await response(scope, receive, send)


EVENT_BODY_SCHEMA = InboundEvent.model_json_schema(by_alias=True)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    scrub_access_log(settings)
    init_sentry(settings, component="web")
    rt = runtime or build_runtime(settings)
    intake = EventIntake(
        rt.store,
        settings.redis_url,
        ENRICH_EVENT_TASK,
        settings.celery_queue,
        min_replicas=settings.replicas_to_wait_for,
        replica_timeout_ms=settings.redis_replica_timeout_ms,
    )
    check_signature = signature_check(settings)
    require_uuid = rt.source_class.requires_uuid
    limit = settings.max_body_bytes
    websites = frozenset(settings.websites)
    require_token = api_access(settings)
    if require_token.is_open:
        log.warning("status API %s", require_token.open_note)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settle_garbage_collector()
        yield
        await intake.aclose()

    app = VisitorEnrichApp(
        title="visitor-enrich",
        version=__version__,
        summary="Visitor journey context for signups, tickets and live chats.",
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.intake = intake

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(str(e.get("msg")) for e in exc.errors()))

    async def post_event(request: Request) -> Response:
        headers = header_map(request.scope)
        body = await read_body(request.receive, headers.get("content-length"), limit)
        check_signature(body, headers)
        payload = decode_json(body)
        metrics.name_event_type(request.scope, payload)
        try:
            event = parse_event(
                payload,
                header_id=headers.get("webhook-id"),
                require_uuid=require_uuid,
                fallback_id=None if "webhook-id" in headers else f"evt_{uuid.uuid4().hex}",
                websites=websites,
            )
        except EventRejected as exc:
            raise ApiError(exc.status_code, exc.message) from None
        return await accept_event(intake, event)

    app.router.add_api_route(
        "/v1/events",
        post_event,
        methods=["POST"],
        status_code=202,
        route_class_override=DirectRoute,
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

    @app.get(
        "/v1/events/{event_id}",
        response_model=SuccessEnvelope,
        responses=_errors(401, 404, 503),
        dependencies=[Depends(require_token)],
        description="The event's state, per-sink outcomes and step log. Needs "
        "`Authorization: Bearer <API_TOKEN>`.",
    )
    async def get_event(event_id: str) -> JSONResponse:
        try:
            data = await run_in_threadpool(rt.store.describe, event_id)
        except Exception:
            raise ApiError(503, "the status store is unavailable") from None
        if data is None:
            raise ApiError(404, f"no event {event_id!r}")
        return require_token.annotate(success_response(data))

    @app.delete(
        "/v1/visitors/{visitor_id}",
        response_model=SuccessEnvelope,
        responses=_errors(401, 422, 503),
        dependencies=[Depends(require_token)],
        description='Erase every record of this visitor id (README "Privacy"); the answer '
        "lists the notes posted to outside systems (system, externalId), which stay there. "
        "`scan=true` also looks through every stored event, not only the index. Needs "
        "`Authorization: Bearer <API_TOKEN>`.",
    )
    async def erase_visitor(visitor_id: str, scan: bool = False) -> JSONResponse:
        from worker.privacy import erase

        if not visitor_id.strip() or len(visitor_id) > MAX_ID_LENGTH:
            raise ApiError(422, f"visitor id: give 1 to {MAX_ID_LENGTH} characters")
        try:
            report = await run_in_threadpool(
                erase, rt.store, "visitor", visitor_id, scan=scan, via="api"
            )
        except Exception:
            log.exception("erasure failed")
            raise ApiError(
                503, "the store is unavailable; nothing or part was erased, retry"
            ) from None
        return require_token.annotate(success_response(report.as_json()))

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

    for adapter in build_webhooks(settings, require_uuid=require_uuid).values():
        add_webhook_route(app, adapter, intake, limit, websites)

    # /metrics and /console (worker/console/): FastAPI routes, outside the intake's hot path.
    from worker.console.mount import mount_operator_surfaces

    mount_operator_surfaces(app, settings, rt, intake)
    return app
