"""The ``visitor-enrich`` command: serve, check, enrich, render, the CRMs' field set-up
(hubspot-setup, attio-setup, pipedrive-setup, salesforce-setup), dead letters.

Built with Typer (argument parsing, help, exit codes) rather than by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from config import ConfigError, Settings, load_settings

cli = typer.Typer(
    name="visitor-enrich",
    help="Visitor journey context for signups, support tickets and live chats.",
    no_args_is_help=True,
    add_completion=False,
)
dead_cli = typer.Typer(help="Dead letters: what ran out of retries or failed for good.")
cli.add_typer(dead_cli, name="dead")

if TYPE_CHECKING:
    from worker.events import Event
    from worker.journey import JourneyContext
    from worker.runtime import Runtime
    from worker.sink import Sink

DEFAULT_REDIS_URL = "redis://localhost:6379/0"

SetupT = TypeVar("SetupT")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _journey(rt: Runtime, **values: str | None) -> tuple[Event, JourneyContext]:
    """An unstored event from the command line and its journey, fetched now; exit 1 when
    the source fails."""
    from worker.errors import EnrichmentError
    from worker.events import Event
    from worker.tasks import fetch_context

    event = Event.model_validate({"id": f"cli_{uuid.uuid4().hex[:12]}", **values})
    try:
        return event, fetch_context(rt, event)
    except EnrichmentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _runtime(settings: Settings) -> Runtime:
    """The runtime, or exit 2 with the message of a bad routes file or template."""
    from worker.runtime import build_runtime

    try:
        return build_runtime(settings)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _redis_answers(url: str) -> bool:
    import redis

    from worker.runtime import client_for_url

    try:
        client = client_for_url(url, socket_connect_timeout=1, socket_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def _start_private_redis(data_dir: Path) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` from PATH on 6379 with append-only persistence in ``data_dir``."""
    binary = shutil.which("redis-server")
    if binary is None:
        typer.echo(
            "Redis is not reachable at redis://localhost:6379 and redis-server is not on PATH.\n"
            "Install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis),"
            " or run `docker compose up -d redis`, or set REDIS_URL to a Redis you have.",
            err=True,
        )
        raise typer.Exit(1)
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "6379",
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(50):
        if _redis_answers(DEFAULT_REDIS_URL):
            typer.echo(f"started a private redis-server (data in {data_dir})")
            return process
        time.sleep(0.1)
    process.terminate()
    typer.echo("redis-server did not start; see its output above", err=True)
    raise typer.Exit(1)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address the web app listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the web app.")] = 8000,
    concurrency: Annotated[int, typer.Option(help="Worker threads.")] = 32,
    beat: Annotated[bool, typer.Option(help="Also run the scheduler (realtime alerts).")] = True,
) -> None:
    """Run web, worker and beat together (local use). Starts Redis if none answers."""
    settings = _settings()
    children: list[subprocess.Popen[bytes]] = []
    if not _redis_answers(settings.redis_url):
        if settings.redis_url != DEFAULT_REDIS_URL:
            typer.echo(f"Redis does not answer at REDIS_URL ({settings.redis_url}).", err=True)
            raise typer.Exit(1)
        children.append(_start_private_redis(Path(".data/redis").resolve()))
    from worker.metrics import MULTIPROC_ENV, reset_multiprocess_dir

    # Web and worker count into one directory, so /metrics adds them up (worker/metrics.py).
    metrics_dir = Path(os.environ.get(MULTIPROC_ENV) or ".data/metrics").resolve()
    reset_multiprocess_dir(metrics_dir)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    bin_dir = Path(sys.executable).parent
    commands = [
        [
            str(bin_dir / "uvicorn"),
            "worker.web:create_app",
            "--factory",
            "--host",
            host,
            "--port",
            str(port),
        ],
        [
            str(bin_dir / "celery"),
            "-A",
            "worker.app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "-Q",
            settings.celery_queue,
            "--loglevel",
            "INFO",
        ],
    ]
    if beat:
        # Its schedule and lock are in Redis (worker/beat.py): a second `serve`, or a beat
        # started elsewhere, waits as a standby instead of competing for a schedule file.
        commands.append([str(bin_dir / "celery"), "-A", "worker.app", "beat", "--loglevel", "INFO"])
    children.extend(subprocess.Popen(command) for command in commands)
    typer.echo(f"visitor-enrich listening on http://{host}:{port}  (Ctrl-C stops everything)")
    if settings.sandbox:
        typer.echo("SANDBOX mode: sample journeys, nothing is posted to a real system")
    if settings.console_password is not None:
        typer.echo(f"console: http://{host}:{port}/console")

    def stop(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        stop()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    raise typer.Exit(0 if all(c.returncode in (0, -signal.SIGTERM) for c in children) else 1)


@cli.command()
def init(
    force: Annotated[bool, typer.Option("--force", help="Replace an existing .env.")] = False,
) -> None:
    """Create .env from .env.example: a fresh WEBHOOK_SECRET, a console password, sandbox on."""
    from worker.firstrun import write_first_run_env

    target, example = Path(".env"), Path(".env.example")
    if target.exists() and not force:
        typer.echo(".env exists already; edit it, or pass --force to start afresh", err=True)
        raise typer.Exit(1)
    if not example.exists():
        typer.echo(".env.example is missing (run this in the project's folder)", err=True)
        raise typer.Exit(2)
    target.unlink(missing_ok=True)
    values = write_first_run_env(example, target)
    typer.echo(
        "Created .env with a fresh WEBHOOK_SECRET and sandbox mode on (sample journeys; nothing\n"
        "is posted anywhere). Console: http://127.0.0.1:8000/console  password: "
        f"{values['CONSOLE_PASSWORD']}\n"
        "Send a test event with: .venv/bin/visitor-enrich send --type support_ticket\n"
        "For real use, set SANDBOX=false and your provider keys in .env."
    )


@cli.command()
def send(
    event_type: Annotated[
        str, typer.Option("--type", help="signup, support_ticket or livechat.")
    ] = "signup",
    visitor: Annotated[
        str | None, typer.Option("--visitor", help="datafast_visitor_id (default: a new one).")
    ] = None,
    email: Annotated[str, typer.Option(help="Contact email.")] = "ada@example.com",
    ticket_id: Annotated[
        str | None, typer.Option(help="Ticket id (support_ticket; default 1042).")
    ] = None,
    room_id: Annotated[str | None, typer.Option(help="Room id (livechat).")] = None,
    url: Annotated[str, typer.Option(help="Where the service listens.")] = "http://127.0.0.1:8000",
) -> None:
    """Sign a test event with WEBHOOK_SECRET and post it, like the senders do."""
    settings = _settings()
    import httpx
    from standardwebhooks.webhooks import Webhook

    event_id = f"evt_{uuid.uuid4().hex}"
    payload: dict[str, str] = {
        "type": event_type,
        "datafast_visitor_id": visitor or str(uuid.uuid4()),
        "email": email,
    }
    if event_type == "support_ticket":
        payload["ticket_id"] = ticket_id or "1042"
    if event_type == "livechat":
        payload["room_id"] = room_id or f"room-{uuid.uuid4().hex[:8]}"
    body = json.dumps(payload)
    headers = {"content-type": "application/json", "webhook-id": event_id}
    secret = settings.webhook_secret
    if secret is not None:
        now = datetime.now(UTC)
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = Webhook(secret.get_secret_value()).sign(event_id, now, body)
    try:
        response = httpx.post(f"{url.rstrip('/')}/v1/events", content=body, headers=headers)
    except httpx.TransportError as exc:
        typer.echo(f"cannot reach {url} ({type(exc).__name__}); is the service running?", err=True)
        raise typer.Exit(1) from None
    if response.status_code >= 300:
        typer.echo(f"refused: {response.status_code} {response.text}", err=True)
        raise typer.Exit(1)
    typer.echo(f"sent {event_id} ({event_type}): {response.json()['data']['state']}")
    if settings.console_password is not None:
        typer.echo(f"console: {url.rstrip('/')}/console/events/{event_id}")
    else:
        typer.echo(f"status:  {url.rstrip('/')}/v1/events/{event_id}")


@cli.command("metrics-serve")
def metrics_serve(
    port: Annotated[int, typer.Option(help="Port of the /metrics answer.")] = 9100,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
) -> None:
    """Serve /metrics for this host's processes (PROMETHEUS_MULTIPROC_DIR), for a host that
    runs workers and no web process. The Redis gauges come from the web processes."""
    from prometheus_client import start_http_server

    from worker.metrics import build_registry, multiprocess_dir

    if multiprocess_dir() is None:
        typer.echo("set PROMETHEUS_MULTIPROC_DIR to the directory the workers write to", err=True)
        raise typer.Exit(2)
    start_http_server(port, addr=host, registry=build_registry(None))
    typer.echo(f"metrics on http://{host}:{port}/metrics")
    while True:
        time.sleep(3600)


@cli.command()
def check() -> None:
    """Validate settings, the routes file and templates; ping Redis and each configured API."""
    settings = _settings()
    rt = _runtime(settings)
    failures = 0

    def report(name: str, probe: object) -> None:
        nonlocal failures
        try:
            detail = probe() if callable(probe) else str(probe)
            typer.echo(f"ok    {name}: {detail}")
        except Exception as exc:
            failures += 1
            typer.echo(f"FAIL  {name}: {exc}")

    typer.echo("ok    settings")
    if rt.routes is not None:
        names = ", ".join(r.name for r in rt.routes.rules) or "none"
        typer.echo(f"ok    routes {settings.routes_file}: {len(rt.routes.rules)} rules ({names})")
    else:
        typer.echo("ok    routes: default (no ROUTES_FILE)")
    if settings.templates_dir:
        from worker.templates import note_templates

        checked = note_templates(settings.templates_dir).check()
        typer.echo(f"ok    templates {settings.templates_dir}: {', '.join(checked) or 'none'}")
    report("redis", lambda: "answers" if rt.store.ping() else "no answer")
    source = rt.source
    if source is None:
        failures += 1
        typer.echo(f"FAIL  source {settings.source}: not configured (set its API key)")
    else:
        report(f"source {source.label}", source.check)
    if not rt.sinks:
        typer.echo("note  no sink is configured")
    for name, sink in rt.sinks.items():
        report(f"sink {name}", sink.check)
    from worker.integrations import build_webhooks

    for name, adapter in build_webhooks(settings, require_uuid=True).items():
        if adapter.configured(settings):
            report(f"webhook {name}", adapter.check)
    raise typer.Exit(1 if failures else 0)


@cli.command()
def enrich(
    visitor_id: Annotated[str, typer.Argument(help="The datafast_visitor_id.")],
    email: Annotated[str | None, typer.Option(help="Contact email (for HubSpot).")] = None,
    name: Annotated[str | None, typer.Option(help="Contact name.")] = None,
    event_type: Annotated[
        str, typer.Option("--type", help="signup, support_ticket or livechat.")
    ] = "signup",
    ticket_id: Annotated[str | None, typer.Option(help="Zendesk ticket to annotate.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print only; post nothing.")] = False,
) -> None:
    """Fetch one visitor's journey, print it, and (without --dry-run) post it to the sinks."""
    settings = _settings()
    from worker.errors import EnrichmentError
    from worker.tasks import plan
    from worker.templates import render_text

    rt = _runtime(settings)
    event, context = _journey(
        rt, type=event_type, visitor_id=visitor_id, email=email, name=name, ticket_id=ticket_id
    )
    typer.echo(render_text(event, context))
    planned, skipped = plan(rt, event, context)
    for sink_name, reason in skipped.items():
        typer.echo(f"skip  {sink_name}: {reason}")
    failures = 0
    for sink_name, record in planned.items():
        if dry_run:
            typer.echo(f"would post to {sink_name} (rule {record.rule})")
            continue
        sink = rt.sinks[sink_name]
        note = sink.render_note(event, context, record.template)
        if note.warning:
            typer.echo(f"warn  {sink_name}: {note.warning}")
        try:
            result = sink.deliver(event, context, note)
            typer.echo(f"ok    {sink_name}: {result.detail or 'posted'}")
        except EnrichmentError as exc:
            failures += 1
            typer.echo(f"FAIL  {sink_name}: {exc}")
    raise typer.Exit(1 if failures else 0)


@cli.command()
def render(
    visitor_id: Annotated[str, typer.Argument(help="The datafast_visitor_id.")],
    sink_name: Annotated[str, typer.Option("--sink", help="The sink to render for.")],
    template: Annotated[
        Path | None,
        typer.Option(help="A template file to try instead of the sink's own.", exists=True),
    ] = None,
    event_type: Annotated[
        str, typer.Option("--type", help="signup, support_ticket, livechat or payment.")
    ] = "signup",
    email: Annotated[str | None, typer.Option(help="Contact email.")] = None,
    name: Annotated[str | None, typer.Option(help="Contact name.")] = None,
    website: Annotated[str | None, typer.Option(help="A DATAFAST_WEBSITES name.")] = None,
) -> None:
    """Print the note a sink would post for a visitor, from the journey fetched now; posts
    nothing. With --template, render that file (as TEMPLATES_DIR would) instead."""
    settings = _settings()
    from worker.integrations import SINKS

    sink_class = next((s for s in SINKS if s.name == sink_name), None)
    if sink_class is None:
        typer.echo(
            f"unknown sink {sink_name!r}; sinks: {', '.join(s.name for s in SINKS)}", err=True
        )
        raise typer.Exit(2)
    if template is not None:
        # The file's folder stands in for TEMPLATES_DIR, so the file is found by its name.
        settings = settings.model_copy(update={"templates_dir": str(template.parent)})
    rt = _runtime(settings)
    sink = sink_class(settings, rt.limiter)
    event, context = _journey(
        rt, type=event_type, visitor_id=visitor_id, email=email, name=name, website=website
    )
    note = sink.render_note(event, context, template.name if template else None)
    typer.echo(f"# {sink.label}, template {note.template or 'built in'}", err=True)
    if note.warning:
        typer.echo(f"warning: {note.warning}", err=True)
    typer.echo(note.body)
    raise typer.Exit(1 if note.warning else 0)


@cli.command("hubspot-setup")
def hubspot_setup() -> None:
    """Create the visitor-enrich contact properties (and their group) in HubSpot, once."""
    from worker.integrations.hubspot import HubSpotSink

    sink = _configured_sink(HubSpotSink.name, "HUBSPOT_TOKEN")
    assert isinstance(sink, HubSpotSink)
    created = _setup_step(sink.ensure_properties)
    typer.echo("created: " + ", ".join(created) if created else "all properties exist already")


def _configured_sink(sink_name: str, unset: str) -> Sink:
    """The configured sink of that name, or exit 2 saying which variable is missing."""
    sink = _runtime(_settings()).sinks.get(sink_name)
    if sink is None:
        typer.echo(f"{unset} is not set", err=True)
        raise typer.Exit(2)
    return sink


def _setup_step(step: Callable[[], SetupT]) -> SetupT:
    """Run a set-up call against a vendor's API; its error (never a secret) exits 1."""
    from worker.errors import EnrichmentError

    try:
        return step()
    except EnrichmentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _crm_setup(sink_name: str, unset: str) -> None:
    """Create a CRM's missing journey fields (``CrmSink.ensure_fields``) and say what it did."""
    from worker.crm import CrmSink

    sink = _configured_sink(sink_name, unset)
    assert isinstance(sink, CrmSink)
    setup = _setup_step(sink.ensure_fields)
    typer.echo(
        "created: " + ", ".join(setup.created)
        if setup.created
        else "all journey fields exist already"
    )
    if setup.unwritable:
        typer.echo(
            "exist but this token cannot see or write them (field-level security, archived?): "
            + ", ".join(setup.unwritable)
        )
    if setup.created and sink.after_setup:
        typer.echo(sink.after_setup)


@cli.command("attio-setup")
def attio_setup() -> None:
    """Create the visitor-enrich attributes (ve_*) on Attio's people object, once."""
    _crm_setup("attio", "ATTIO_API_KEY")


@cli.command("pipedrive-setup")
def pipedrive_setup() -> None:
    """Create the visitor-enrich person fields ("VE ...") in Pipedrive, once."""
    _crm_setup("pipedrive", "PIPEDRIVE_API_TOKEN (with PIPEDRIVE_BASE_URL)")


@cli.command("salesforce-setup")
def salesforce_setup() -> None:
    """Create the visitor-enrich custom fields (VE_*__c) on Contact and Lead, once."""
    _crm_setup("salesforce", "SALESFORCE_CLIENT_SECRET (with its instance URL and client id)")


@dead_cli.command("list")
def dead_list() -> None:
    """List dead letters, oldest first."""
    from worker.runtime import build_runtime

    letters = build_runtime(_settings()).store.dead_letters()
    if not letters:
        typer.echo("no dead letters")
    for letter in letters:
        typer.echo(f"{letter.id}\t{letter.dead_at}\tattempts={letter.attempts}\t{letter.reason}")


@dead_cli.command("show")
def dead_show(letter_id: str) -> None:
    """Show one dead letter and its event's status."""
    import json

    from worker.runtime import build_runtime

    store = build_runtime(_settings()).store
    letter = store.dead_letter(letter_id)
    if letter is None:
        typer.echo(f"no dead letter {letter_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(
        json.dumps(
            {"deadLetter": letter.model_dump(), "event": store.describe(letter.event_id)}, indent=2
        )
    )


@dead_cli.command("replay")
def dead_replay(
    letter_id: Annotated[
        str | None, typer.Argument(help="Dead letter id (see `dead list`).")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Queue dead letters again; what was delivered meanwhile is not posted twice."""
    from worker.replay import replay
    from worker.runtime import build_runtime

    rt = build_runtime(_settings())
    if replay_all == (letter_id is not None):
        typer.echo("give one dead letter id or --all", err=True)
        raise typer.Exit(2)
    letters = rt.store.dead_letters() if replay_all else [rt.store.dead_letter(letter_id or "")]
    if letters == [None]:
        typer.echo(f"no dead letter {letter_id!r}", err=True)
        raise typer.Exit(1)
    for letter in letters:
        if letter is not None:
            typer.echo(replay(rt, letter))


@dead_cli.command("purge")
def dead_purge(yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Delete every dead letter."""
    from worker.runtime import build_runtime

    if not yes and not typer.confirm("Delete every dead letter?"):
        raise typer.Exit(1)
    typer.echo(f"purged {build_runtime(_settings()).store.purge_dead_letters()} dead letters")


@cli.command()
def erase(
    visitor: Annotated[
        str | None,
        typer.Option("--visitor", help="The datafast_visitor_id (or livechat visitor id)."),
    ] = None,
    email: Annotated[str | None, typer.Option("--email", help="The email address.")] = None,
    scan: Annotated[
        bool,
        typer.Option(
            "--scan",
            help="Also look through every stored event, not only the index (events accepted "
            "by a version without it).",
        ),
    ] = False,
) -> None:
    """Remove every record of one visitor id or email; list the notes left in outside systems."""
    if (visitor is None) == (email is None):
        typer.echo("give one of --visitor or --email", err=True)
        raise typer.Exit(2)
    from worker.privacy import erase as erase_subject
    from worker.runtime import build_runtime

    store = build_runtime(_settings()).store
    if visitor is not None:
        report = erase_subject(store, "visitor", visitor, scan=scan)
    else:
        report = erase_subject(store, "email", email or "", scan=scan)
    typer.echo(f"erased {report.events} event{'s' if report.events != 1 else ''}")
    if report.notes:
        typer.echo("notes posted to outside systems (remove them there):")
    for system, external_id in report.notes:
        typer.echo(f"  {system}\t{external_id}")


@cli.command()
def realtime(
    once: Annotated[
        bool, typer.Option("--once", help="Poll once and exit (else every REALTIME_POLL_SECONDS).")
    ] = False,
    send: Annotated[
        bool, typer.Option("--send", help="Post the alerts too; without it, only print.")
    ] = False,
) -> None:
    """Print the active visitors now and who would get a hot-visitor alert."""
    settings = _settings()
    from worker.realtime import PollResult, run_realtime_once
    from worker.runtime import build_runtime

    rt = build_runtime(settings)

    def show(result: PollResult) -> None:
        if result.snapshot is None:
            typer.echo(f"error: {result.error}", err=True)
            return
        visitors = result.snapshot.visitors
        count = len(visitors)
        typer.echo(f"{count} active visitor{'s' if count != 1 else ''}")
        for v in visitors:
            score = f"{v.score:g}" if v.score is not None else "-"
            typer.echo(
                f"  {v.visitor_id}  score {score}  {v.location or '?'}  {v.device or '?'}  "
                f"{v.current_url or ''}"
            )
        cooling = {h.key for h in result.cooling}
        alerted = {h.key for h in result.alerted}
        failed = {h.key: reason for h, reason in result.failed}
        if not result.hot:
            typer.echo("nobody to alert")
        for h in result.hot:
            if h.key in alerted:
                status = "alerted"
            elif h.key in failed:
                status = f"FAILED: {failed[h.key]}"
            elif h.key in cooling:
                status = "already alerted within HOT_VISITOR_COOLDOWN"
            else:
                status = "would alert (use --send)"
            typer.echo(f"  {status}: {h.visitor.visitor_id} ({'; '.join(h.reasons)})")

    while True:
        result = run_realtime_once(rt, send=send)
        show(result)
        if once:
            raise typer.Exit(1 if result.error or result.failed else 0)
        time.sleep(settings.realtime_poll_seconds)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()


if __name__ == "__main__":
    main()
