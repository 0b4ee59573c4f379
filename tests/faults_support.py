"""Helpers for tests/test_faults.py: a fake upstream with more ways to misbehave, a service
whose worker processes can be killed and replaced, a private redis-server that can be stopped,
and the CLI.

Everything here extends tests/fakes.py and tests/harness.py without changing them:

- ``FaultyUpstream`` is a ``FakeUpstream`` with distinctive credentials (so a leak is easy to
  spot in logs), a secret-looking Slack webhook path, the moment each answer left the fake,
  the requests still being answered (with the client's port, to find the worker process that
  sent one), and four more scripted behaviours: a status for a limited time (``fail_for``),
  closing the connection without an answer (``drop``), a chunked body of any size with no
  Content-Length (``stream``), and a provider quota that answers 429 past N requests in any
  sliding window (``quota``).
- ``FaultyUpstreamWithCrms`` is a ``FaultyUpstream`` that also plays Attio, Pipedrive and
  Salesforce (``tests/crm_fakes.py``) on its own port, so their calls can be held and seen in
  flight like HubSpot's.
- ``FaultService`` is a ``Service`` that can kill a worker with SIGKILL and start another.
- ``PrivateRedis`` is a redis-server on a free port with AOF in a temporary directory,
  stopped with ``redis-cli shutdown`` and restarted on the same data.
"""

from __future__ import annotations

import base64
import bisect
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from crm_fakes import CrmFake
from fakes import FakeUpstream, Recorded, Rule
from harness import BIN, ROOT, Service, free_port, send_event, wait_for
from werkzeug.wrappers import Request, Response

# Distinctive secrets: any of these (or a recognisable part) in a log is a leak.
DATAFAST_KEY = "df_faultsKEY_Q7vR2mZx9Lp4"
HUBSPOT_TOKEN = "pat-na1-faultsTOKEN-H5jd8Kw3"
ZENDESK_EMAIL = "faults-agent@example.com"
ZENDESK_TOKEN = "zdFaultsTOKEN7Vb2Nc9Mx"
SLACK_HOOK_PATH = "/slack/services/TFLT0SECRET/BFLT0SECRET/slackHookPathS3cretYz"
WEBHOOK_SECRET_RAW = b"faults-inbound-webhook-secret-8Hq2"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_SECRET_RAW).decode()


def secret_needles() -> dict[str, str]:
    """What must never appear in a log: each secret and the forms it travels in."""
    basic = base64.b64encode(f"{ZENDESK_EMAIL}/token:{ZENDESK_TOKEN}".encode()).decode()
    return {
        "DATAFAST_API_KEY": DATAFAST_KEY,
        "DATAFAST_API_KEY (body)": DATAFAST_KEY.removeprefix("df_"),
        "HUBSPOT_TOKEN": HUBSPOT_TOKEN,
        "HUBSPOT_TOKEN (body)": "faultsTOKEN-H5jd8Kw3",
        "ZENDESK_API_TOKEN": ZENDESK_TOKEN,
        "Zendesk Basic credentials": basic,
        "SLACK_WEBHOOK_URL path": SLACK_HOOK_PATH,
        "SLACK_WEBHOOK_URL path (last part)": "slackHookPathS3cretYz",
        "SLACK_WEBHOOK_URL path (team/channel)": "TFLT0SECRET",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_SECRET (base64 part)": WEBHOOK_SECRET.removeprefix("whsec_"),
        "WEBHOOK_SECRET (raw)": WEBHOOK_SECRET_RAW.decode(),
    }


# The fake -----------------------------------------------------------------------------------

_local = threading.local()


class _RecordingList(list[Recorded]):
    """The fake's request log; remembers, per serving thread, the record it appended last."""

    def append(self, item: Recorded) -> None:
        super().append(item)
        _local.record = item


@dataclass
class WindowRule(Rule):
    """A scripted answer for every matching request until ``until`` (time.monotonic())."""

    until: float = 0.0

    def matches(self, service: str, method: str, path: str, body: bytes, at: float) -> bool:
        return at < self.until and super().matches(service, method, path, body, at)


@dataclass
class DropRule(Rule):
    """Close the connection without sending anything."""


@dataclass
class StreamRule(Rule):
    """A 200 with a body of ``size`` bytes, chunked, without Content-Length."""

    size: int = 0


@dataclass
class QuotaRule(Rule):
    """429 for a request that would be more than ``limit`` admitted within the ``period``
    ending at its arrival."""

    limit: int = 0
    period: float = 1.0
    # Arrival times of the admitted requests, in order. Handler threads can see requests a
    # little out of arrival order, so a time is inserted in place rather than appended.
    admitted: list[float] = field(default_factory=list)

    def matches(self, service: str, method: str, path: str, body: bytes, at: float) -> bool:
        if service != self.service or (self.times is not None and self.times <= 0):
            return False
        # Keep a second period: a late-handled request still meets those before it.
        del self.admitted[: bisect.bisect_right(self.admitted, at - 2 * self.period)]
        inside = bisect.bisect_right(self.admitted, at) - bisect.bisect_right(
            self.admitted, at - self.period
        )
        if inside >= self.limit:
            return True
        bisect.insort(self.admitted, at)
        return False


@dataclass(frozen=True)
class InFlight:
    """A request the fake has received and not answered yet."""

    method: str
    path: str
    client_port: int
    since: float


class FaultyUpstream(FakeUpstream):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("datafast_key", DATAFAST_KEY)
        kwargs.setdefault("hubspot_token", HUBSPOT_TOKEN)
        kwargs.setdefault("zendesk_email", ZENDESK_EMAIL)
        kwargs.setdefault("zendesk_token", ZENDESK_TOKEN)
        super().__init__(**kwargs)
        self.requests = _RecordingList()
        self._answered: dict[int, float] = {}
        self._in_flight: dict[int, InFlight] = {}

    # Where things are ----------------------------------------------------------------------

    def base_url(self, service: str) -> str:
        if service == "slack":
            return f"{self.url}{SLACK_HOOK_PATH}"
        return super().base_url(service)

    def answered_at(self, record: Recorded) -> float | None:
        """time.monotonic() when the fake finished building its answer to ``record``."""
        with self._lock:
            return self._answered.get(id(record))

    def in_flight(self) -> list[InFlight]:
        with self._lock:
            return list(self._in_flight.values())

    # More scripting ------------------------------------------------------------------------

    def add_rule(self, rule: Rule, *, first: bool = False) -> Rule:
        with self._lock:
            if first:
                self.rules.insert(0, rule)
            else:
                self.rules.append(rule)
        return rule

    def retire(self, *rules: Rule) -> None:
        """Stop scripted rules: the fake behaves for real again (a provider that recovered)."""
        with self._lock:
            for rule in rules:
                rule.times = 0

    def fail_for(
        self,
        service: str,
        status: int,
        seconds: float,
        *,
        match: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Rule:
        """Answer ``status`` to every matching request for the next ``seconds``."""
        return self.add_rule(
            WindowRule(
                service=service,
                status=status,
                match=match,
                times=None,
                headers=dict(headers or {}),
                until=time.monotonic() + seconds,
            )
        )

    def drop(self, service: str, *, match: str | None = None, times: int | None = None) -> Rule:
        return self.add_rule(DropRule(service=service, status=0, match=match, times=times))

    def stream(
        self, service: str, size: int, *, match: str | None = None, times: int | None = None
    ) -> Rule:
        return self.add_rule(
            StreamRule(service=service, status=200, match=match, times=times, size=size)
        )

    def quota(self, service: str, limit: int, period: float = 1.0) -> QuotaRule:
        rule = QuotaRule(
            service=service,
            status=429,
            times=None,
            headers={"Retry-After": "1"},
            limit=limit,
            period=period,
        )
        self.add_rule(rule, first=True)
        return rule

    # Serving -------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        _local.environ = environ
        ident = threading.get_ident()
        entry = InFlight(
            method=str(environ.get("REQUEST_METHOD")),
            path=str(environ.get("PATH_INFO")),
            client_port=int(environ.get("REMOTE_PORT") or 0),
            since=time.monotonic(),
        )
        with self._lock:
            self._in_flight[ident] = entry
        try:
            return super()._wsgi(environ, start_response)
        finally:
            with self._lock:
                self._in_flight.pop(ident, None)

    def _handle(self, request: Request) -> Response:
        _local.record = None
        response = super()._handle(request)
        record = _local.record
        if record is not None:
            with self._lock:
                self._answered[id(record)] = time.monotonic()
        return response

    def _scripted(self, service: str, rule: Rule) -> Response:
        if isinstance(rule, DropRule):
            sock: socket.socket = _local.environ["werkzeug.socket"]
            sock.shutdown(socket.SHUT_RDWR)
            # Werkzeug treats a ConnectionError from the app as a dropped connection.
            raise ConnectionAbortedError("connection closed on purpose")
        if isinstance(rule, StreamRule):
            return Response(
                _chunks(rule.size), status=200, content_type="application/json", headers={}
            )
        return super()._scripted(service, rule)

    def _slack(self, request: Request, route: str, body: Any, raw: bytes) -> Response:
        # The shared fake serves the hook at a fixed path; this one at a secret-looking path.
        if request.path != SLACK_HOOK_PATH:
            return Response("no_service", status=404, content_type="text/html")
        if request.method != "POST":
            return Response("invalid_request", status=405, content_type="text/html")
        if not isinstance(body, dict):
            return Response("invalid_payload", status=400, content_type="text/html")
        if not body.get("text") and not body.get("blocks"):
            return Response("no_text", status=400, content_type="text/html")
        self.slack.append(body)
        return Response("ok", status=200, content_type="text/html")


# The CRMs of tests/crm_fakes.py, by the path prefix each is served under.
CRM_SERVICES = ("attio", "pipedrive", "salesforce")


class _CrmAt(CrmFake):
    """A ``CrmFake`` that another fake's server answers for: its address is that server's."""

    def __init__(self, host: FakeUpstream) -> None:
        super().__init__()
        self._host = host

    @property
    def url(self) -> str:
        return self._host.url


class FaultyUpstreamWithCrms(FaultyUpstream):
    """DataFast, HubSpot, Zendesk, Slack and the three CRMs of ``CrmFake`` on one port.

    A CRM call goes through this fake's scripting and in-flight tracking first (``delay``,
    ``in_flight``, ``requests_to("attio")``), then to ``crm``, which answers it as the
    documentation says and keeps the people and notes (``crm.notes_with``). ``env()`` points
    the service at all of them. A scripted status (``fail``) carries no vendor error body:
    script those on ``crm`` (``attio_limited``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crm: CrmFake = _CrmAt(self)

    def __enter__(self) -> FaultyUpstreamWithCrms:
        self.start()
        return self

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.crm.env()}

    def _handlers(self) -> dict[str, Callable[[Request, str, Any, bytes], Response]]:
        handlers = super()._handlers()
        for service in CRM_SERVICES:
            handlers[service] = self._crm_answer
        return handlers

    def _crm_answer(self, request: Request, route: str, body: Any, raw: bytes) -> Response:
        # CrmFake routes on the full path and reads the body itself; it was read here already.
        environ = {**request.environ, "wsgi.input": io.BytesIO(raw)}
        return Response.from_app(self.crm._wsgi, environ, buffered=True)


def _chunks(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"status":"success","data":{"padding":"'
    sent = 0
    while sent < size:
        part = min(chunk, size - sent)
        yield b"x" * part
        sent += part
    yield b'"}}'


# Numbers -------------------------------------------------------------------------------------


def max_in_window(times: Sequence[float], window: float = 1.0) -> tuple[int, float]:
    """The most ``times`` inside any half-open window [t, t + window), and where it starts."""
    ordered = sorted(times)
    best, start, j = 0, ordered[0] if ordered else 0.0, 0
    for i, t in enumerate(ordered):
        while j < len(ordered) and ordered[j] < t + window:
            j += 1
        if j - i > best:
            best, start = j - i, t
    return best, start


# Processes --------------------------------------------------------------------------------


class FaultService(Service):
    """A ``Service`` whose worker processes can be killed (SIGKILL) and added."""

    def spawn_worker(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        index = len(self.worker_procs)
        name = f"worker{index}"
        argv = self.worker_argv(f"w{index}-{uuid.uuid4().hex[:6]}@%h")
        proc = self._spawn(name, argv)
        self.worker_procs.append(proc)
        self.workers = len(self.worker_procs)
        wait_for(
            lambda: " ready." in self.log(name) or self._died(proc, name),
            timeout,
            message=f"celery {name} to be ready",
        )
        return proc

    def alive_workers(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.worker_procs if p.poll() is None]

    def kill_worker(self, pid: int) -> None:
        proc = next(p for p in self.worker_procs if p.pid == pid)
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def worker_index(self, pid: int) -> int:
        return next(i for i, p in enumerate(self.worker_procs) if p.pid == pid)


def pid_of_connection(local_port: int, peer_port: int, pids: Sequence[int]) -> int | None:
    """Which of ``pids`` owns the TCP connection 127.0.0.1:local_port -> :peer_port."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == peer_port
            ):
                inodes.add(f"socket:[{inode}]")
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


# Inbound load ---------------------------------------------------------------------------------


@dataclass
class Sent:
    """One event the load sent: its answer (a status, or the client error's name)."""

    event_id: str
    ticket: str
    payload: dict[str, Any]
    at: float  # time.monotonic() when it was sent
    code: int | str


class TicketSender:
    """A thread that posts support-ticket events, each for a new ticket of ``fake``, every
    ``pause`` seconds from ``start()`` to ``stop()``; ``sent`` holds what it sent."""

    def __init__(
        self, svc: Service, fake: FakeUpstream, visitor: str, ticket: Any, pause: float = 0.05
    ) -> None:
        self.svc, self.fake, self.visitor, self.pause = svc, fake, visitor, pause
        self.new_ticket = ticket  # () -> a ticket id the fake knows
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def start(self) -> TicketSender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    @property
    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.code == 202]

    @property
    def refused(self) -> list[Sent]:
        return [s for s in self.sent if s.code != 202]

    def _run(self) -> None:
        with httpx.Client(base_url=self.svc.url, timeout=10) as http:
            while not self._stop.is_set():
                event_id, ticket = f"evt_{uuid.uuid4().hex[:16]}", self.new_ticket()
                payload = {
                    "type": "support_ticket",
                    "datafast_visitor_id": self.visitor,
                    "ticket_id": ticket,
                }
                at = time.monotonic()
                try:
                    code: int | str = send_event(
                        http, payload, event_id=event_id, secret=self.svc.secret
                    ).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                self.sent.append(Sent(event_id, ticket, payload, at, code))
                time.sleep(self.pause)


# Event states ---------------------------------------------------------------------------------


def event_states(client: redis.Redis, prefix: str, ids: list[str]) -> dict[str, str | None]:
    pipe = client.pipeline()
    for event_id in ids:
        pipe.hget(f"{prefix}event:{event_id}", "state")
    return {
        event_id: value.decode() if value is not None else None
        for event_id, value in zip(ids, pipe.execute(), strict=True)
    }


def wait_states(
    client: redis.Redis,
    prefix: str,
    ids: list[str],
    wanted: set[str],
    timeout: float,
    *,
    check: bool = True,
) -> dict[str, str | None]:
    """Wait until every event is in ``wanted``; fail after ``timeout`` (or, with
    ``check=False``, return the states as they are then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = event_states(client, prefix, ids)
        except redis.RedisError:
            states = {}
        if states and all(state in wanted for state in states.values()):
            return states
        if time.monotonic() > deadline:
            if not check:
                return states
            stuck = sorted(e for e, state in states.items() if state not in wanted)[:10]
            raise AssertionError(
                f"after {timeout}s, states are {Counter(states.values())}, wanted {wanted}; "
                f"e.g. {stuck}"
            )
        time.sleep(0.2)


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``visitor-enrich ARGS`` with the service's environment."""
    return subprocess.run(
        [str(BIN / "visitor-enrich"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class PrivateRedis:
    """A redis-server of our own on a free port, AOF in ``data_dir``; never the shared one."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = data_dir / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)

    def answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        with open(self._log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.data_dir),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.answers, timeout, message=f"private redis on port {self.port}")
        return self

    def shutdown(self) -> None:
        """``redis-cli -p PORT shutdown`` (AOF flushed), and wait for the process to end."""
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not on PATH"
        subprocess.run([cli, "-p", str(self.port), "shutdown"], capture_output=True, timeout=10)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.shutdown()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
