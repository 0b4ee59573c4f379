"""The console's routes: sign-in, events, one event, dead letters, health, sandbox.

Handlers that read Redis are plain ``def`` (FastAPI runs them in its thread pool); those that
read a form are ``async`` and hand their Redis work to the pool.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.templating import Jinja2Templates

from config import Settings
from worker import __version__
from worker.console import views
from worker.console.auth import ConsoleAuth, Session
from worker.events import EventRejected, parse_event
from worker.health import RedisHealth
from worker.intake import EventIntake
from worker.integrations.console import ConsoleSink
from worker.notes import RenderedNote, render_for
from worker.replay import replay
from worker.runtime import Runtime
from worker.store import DeadLetter, EventSnapshot

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
EVENTS_SCANNED = 1000
EVENTS_SHOWN = 100


class NeedSignIn(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class Refused(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message


def create_console(
    settings: Settings, rt: Runtime, intake: EventIntake, password: SecretStr
) -> FastAPI:
    auth = ConsoleAuth(password, rt.redis, settings.redis_key_prefix, rt.limiter)
    health = RedisHealth(rt)
    store = rt.store
    console = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def render(
        request: Request, session: Session, template: str, status_code: int = 200, **ctx: Any
    ) -> HTMLResponse:
        response = TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "csrf": session.csrf,
                "signed_in": session.signed_in,
                "sandbox": settings.sandbox,
                "version": __version__,
                "age": views.age,
                "since": views.since,
                **ctx,
            },
            status_code=status_code,
        )
        if session.changed:
            auth.save(request, response, session)
        return response

    def signed_in(request: Request) -> Session:
        session = auth.load(request)
        if not session.signed_in:
            raise NeedSignIn(request.url.path)
        return session

    async def form_post(request: Request) -> tuple[Session, dict[str, str]]:
        """A signed-in session and the posted form, refused without the session's CSRF token."""
        session = await run_in_threadpool(signed_in, request)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not auth.csrf_ok(session, form.get("csrf")):
            raise Refused(403, "The form's CSRF token is missing or wrong. Reload the page.")
        return session, form

    def back(path: str, message: str = "") -> RedirectResponse:
        target = f"/console{path}"
        if message:
            target += ("&" if "?" in target else "?") + "flash=" + quote(message)
        return RedirectResponse(target, status_code=303)

    @console.exception_handler(NeedSignIn)
    async def _need_sign_in(request: Request, exc: NeedSignIn) -> Response:
        return RedirectResponse(f"/console/login?next={quote(exc.next_path)}", status_code=303)

    @console.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        session = await run_in_threadpool(auth.load, request)
        return render(
            request, session, "message.html", exc.status_code, title="Refused", text=exc.message
        )

    # Sign-in ------------------------------------------------------------------------------

    @console.get("/", include_in_schema=False)
    def index() -> Response:
        return back("/events")

    @console.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/console/events") -> Response:
        session = auth.load(request)
        return render(request, session, "login.html", next=_safe_next(next), error=None)

    @console.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        session = await run_in_threadpool(auth.load, request)
        form = {k: str(v) for k, v in (await request.form()).items()}
        target = _safe_next(form.get("next", ""))
        if not auth.csrf_ok(session, form.get("csrf")):
            raise Refused(403, "The form's CSRF token is missing or wrong. Reload the page.")
        address = request.client.host if request.client else "unknown"
        wait = await run_in_threadpool(auth.sign_in_wait, address)
        if wait > 0:
            return render(
                request,
                session,
                "login.html",
                429,
                next=target,
                error=f"Too many sign-in attempts; try again in {wait:.0f} s.",
            )
        if not auth.password_ok(form.get("password", "")):
            return render(request, session, "login.html", 401, next=target, error="Wrong password.")
        response = RedirectResponse(target, status_code=303)
        auth.save(request, response, await run_in_threadpool(auth.signed_in))
        return response

    @console.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session, _ = await form_post(request)
        await run_in_threadpool(auth.sign_out, session)
        response = back("/login")
        auth.save(request, response, Session())
        return response

    # Events -------------------------------------------------------------------------------

    @console.get("/events", include_in_schema=False)
    def events(
        request: Request,
        state: str = "",
        type: str = "",
        sink: str = "",
        inbound: str = "",
        who: str = "",
    ) -> Response:
        session = signed_in(request)
        flt = views.EventFilter(state=state, type=type, sink=sink, inbound=inbound, who=who)
        summaries = store.summaries(store.recent_ids(EVENTS_SCANNED))
        rows = views.filter_rows(summaries, flt, EVENTS_SHOWN)
        sink_names = sorted({name for s in summaries for name in s["sinks"]} | set(rt.sinks))
        return render(
            request,
            session,
            "events.html",
            rows=rows,
            flt=flt,
            states=views.EVENT_STATES,
            types=views.EVENT_TYPES,
            sink_names=sink_names,
            inbound_names=sorted({views.inbound_system(s["event"]) for s in summaries}),
        )

    @console.get("/events/{event_id}", include_in_schema=False)
    def event_page(request: Request, event_id: str, flash: str = "") -> Response:
        session = signed_in(request)
        described = store.describe(event_id)
        if described is None:
            raise Refused(404, f"No event {event_id!r} (unknown, or past its retention).")
        snapshot = store.snapshot(event_id)
        notes = _notes(rt, snapshot)
        return render(
            request,
            session,
            "event.html",
            ev=described,
            event=snapshot.event if snapshot else None,
            journey=snapshot.context.model_dump_json(indent=2)
            if snapshot and snapshot.context
            else None,
            notes=notes,
            replayable=views.REPLAYABLE_SINK_STATES,
            flash=flash,
        )

    @console.post("/events/{event_id}/replay", include_in_schema=False)
    async def replay_sink(request: Request, event_id: str) -> Response:
        _, form = await form_post(request)
        sink = form.get("sink", "")

        def run() -> str:
            letter = store.dead_letter(f"{event_id}:{sink}") or DeadLetter(
                id=f"{event_id}:{sink}", event_id=event_id, sink=sink, reason="console replay"
            )
            return replay(rt, letter)

        return back(f"/events/{quote(event_id)}", await run_in_threadpool(run))

    # Dead letters -------------------------------------------------------------------------

    @console.get("/dead", include_in_schema=False)
    def dead(request: Request, flash: str = "") -> Response:
        session = signed_in(request)
        return render(request, session, "dead.html", letters=store.dead_letters(), flash=flash)

    @console.post("/dead/replay", include_in_schema=False)
    async def dead_replay(request: Request) -> Response:
        _, form = await form_post(request)
        letter_id = form.get("id", "")

        def run() -> str:
            letter = store.dead_letter(letter_id)
            return replay(rt, letter) if letter else f"no dead letter {letter_id}"

        return back("/dead", await run_in_threadpool(run))

    @console.get("/dead/confirm", include_in_schema=False)
    def dead_confirm(request: Request, action: str = "replay-all") -> Response:
        session = signed_in(request)
        if action not in ("replay-all", "purge"):
            raise Refused(404, "Unknown action.")
        count = len(store.dead_letters())
        return render(request, session, "confirm.html", action=action, count=count)

    @console.post("/dead/replay-all", include_in_schema=False)
    async def dead_replay_all(request: Request) -> Response:
        _, form = await form_post(request)
        if form.get("confirm") != "yes":
            return back("/dead/confirm?action=replay-all")

        def run() -> str:
            results = [replay(rt, letter) for letter in store.dead_letters()]
            return f"replayed {len(results)} dead letters"

        return back("/dead", await run_in_threadpool(run))

    @console.post("/dead/purge", include_in_schema=False)
    async def dead_purge(request: Request) -> Response:
        _, form = await form_post(request)
        if form.get("confirm") != "yes":
            return back("/dead/confirm?action=purge")
        count = await run_in_threadpool(store.purge_dead_letters)
        return back("/dead", f"purged {count} dead letters")

    # Health -------------------------------------------------------------------------------

    @console.get("/health", include_in_schema=False)
    def health_page(request: Request) -> Response:
        session = signed_in(request)
        return render(request, session, "health.html", health=health.read(), now=time.time())

    # Sandbox ------------------------------------------------------------------------------

    @console.get("/sandbox", include_in_schema=False)
    def sandbox_page(request: Request, flash: str = "") -> Response:
        session = signed_in(request)
        failing = settings.sandbox and ConsoleSink.failing(rt.redis, settings.redis_key_prefix)
        return render(
            request,
            session,
            "sandbox.html",
            types=views.EVENT_TYPES,
            failing=failing,
            flash=flash,
            visitor=str(uuid.uuid4()),
        )

    @console.post("/sandbox/send", include_in_schema=False)
    async def sandbox_send(request: Request) -> Response:
        _, form = await form_post(request)
        if not settings.sandbox:
            raise Refused(
                409, "Test events are sent from here only in sandbox mode (SANDBOX=true)."
            )
        payload = {
            "type": form.get("type") or "signup",
            "datafast_visitor_id": form.get("visitor") or str(uuid.uuid4()),
            "email": form.get("email") or None,
            "ticket_id": form.get("ticket_id") or None,
        }
        try:
            event = parse_event(
                payload, header_id=None, require_uuid=False, fallback_id=f"evt_{uuid.uuid4().hex}"
            )
        except EventRejected as exc:
            return back("/sandbox", f"not sent: {exc.message}")
        await intake.accept(event)
        return back(f"/events/{quote(event.id)}", "test event sent")

    @console.post("/sandbox/failure", include_in_schema=False)
    async def sandbox_failure(request: Request) -> Response:
        _, form = await form_post(request)
        if not settings.sandbox:
            raise Refused(409, "Only in sandbox mode (SANDBOX=true).")
        failing = form.get("failing") == "on"
        await run_in_threadpool(
            ConsoleSink.set_failing, rt.redis, settings.redis_key_prefix, failing
        )
        state = "fails every delivery" if failing else "delivers again"
        return back("/sandbox", f"the console sink {state}")

    return console


def _safe_next(target: str) -> str:
    """Where to go after sign-in: a console path only (never another site)."""
    if target.startswith("/console/") and not target.startswith("/console//"):
        return target
    return "/console/events"


def _notes(rt: Runtime, snapshot: EventSnapshot | None) -> list[RenderedNote]:
    """The notes to show: what the sandbox's console sink kept, else each planned sink's note
    rendered from the stored journey with the template its route chose (what was, or will
    be, posted)."""
    if snapshot is None:
        return []
    event, context = snapshot.event, snapshot.context
    kept = ConsoleSink.kept(rt.store, event.id)
    if kept or context is None:
        return kept
    return [
        render_for(sink, event, context, record.template)
        for name, record in snapshot.sinks.items()
        if record.state != "skipped" and (sink := rt.sinks.get(name)) is not None
    ]
