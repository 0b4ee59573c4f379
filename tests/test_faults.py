"""Fault injection (issue 3): the delivery guarantees, proven against real processes.

Each test starts the web process (uvicorn) and Celery worker processes (threads pool) for real,
with DataFast, HubSpot, Zendesk and Slack played by ``FaultyUpstream`` (tests/faults_support.py,
an extension of tests/fakes.py), and asserts what arrived at the fakes:

1. kill -9 of the worker holding a Zendesk post (and a Slack post) between the call and the
   record: delivered within 20 s of the kill (worker leases, not the 60 s visibility
   timeout); one Zendesk comment; Slack, which cannot look, at most two messages.
2. three workers, 300 events, DataFast quota 20/s: never more than 20 DataFast requests in any
   1 s window, no 429, everything delivered.
3. DataFast answering 429 + ``Retry-After: 3`` for 4 s: after a 429 nothing reaches it for 3 s,
   from either of two workers.
4. DataFast 500 / hanging / closing the connection / malformed JSON / 5 MiB (declared and
   chunked), and Zendesk 500: bounded retries, a dead letter ``visitor-enrich dead list``
   shows, one comment after ``dead replay --all``, nothing more after a second replay; and the
   circuit breaker holds every call for its cool-down without failing the events.
5. the service's own redis-server stopped for 3 s under inbound load: every 202 delivered
   within 30 s of Redis's return, every other answer 503 and delivered when sent again,
   /readyz 503 meanwhile, workers reconnect by themselves and none exits.
6. none of the (distinctive) secrets appears in any log captured above or in the CLI output.

The shared Redis is used in database ``REDIS_DB``, not 0: kombu keeps its ``unacked`` hash per
database, and every worker restores from it whatever is older than *its own* visibility
timeout. The 10 s timeout of the kill -9 test must not hand other suites' waiting tasks (60 s
timeout) to a second worker, nor theirs ours. Keys and queues are still unique per test.
"""

from __future__ import annotations

import html
import itertools
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fakes import SO_TIMESTAMPNS, Recorded, full_profile, socket_arrival
from faults_support import (
    SLACK_HOOK_PATH,
    WEBHOOK_SECRET,
    FaultService,
    FaultyUpstream,
    PrivateRedis,
    TicketSender,
    event_states,
    max_in_window,
    pid_of_connection,
    run_cli,
    secret_needles,
    wait_states,
)
from harness import (
    REDIS_HOST,
    REDIS_PORT,
    cleanup_redis,
    new_prefix,
    new_queue,
    send_event,
    wait_for,
)

from worker.events import Event
from worker.store import EventStore

pytestmark = pytest.mark.e2e

REDIS_DB = 9
SHARED_REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
MAX_RETRIES = 2

# Everything the suite's processes wrote, for the secrets check at the end.
_LOG_DIRS: list[Path] = []
_CLI_OUTPUT: list[str] = []
_tickets = itertools.count(random.randint(10_000, 90_000) * 10)


# Fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(redis_server: str) -> Iterator[redis.Redis]:
    """The shared Redis (started by conftest when none answers), in database REDIS_DB."""
    client = redis.Redis.from_url(SHARED_REDIS_URL)
    yield client
    client.close()


def base_env(fake: FaultyUpstream, **overrides: str) -> dict[str, str]:
    env = {
        "REDIS_URL": SHARED_REDIS_URL,
        "REDIS_KEY_PREFIX": new_prefix(),
        "CELERY_QUEUE": new_queue(),
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        **fake.env(),
        "MAX_RETRIES": str(MAX_RETRIES),
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "1",
        "HTTP_CONNECT_TIMEOUT": "1",
        "HTTP_READ_TIMEOUT": "2",
        "LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


@contextmanager
def running(
    env: dict[str, str], log_dir: Path, workers: int, client: redis.Redis
) -> Iterator[FaultService]:
    """Web + ``workers`` worker processes; their logs are kept for the secrets check."""
    _LOG_DIRS.append(log_dir)
    svc = FaultService(env, log_dir, workers=workers, redis_client=client)
    try:
        with svc:
            yield svc
    finally:
        cleanup_redis(client, env["REDIS_KEY_PREFIX"], env["CELERY_QUEUE"])


def cli(env: dict[str, str], *args: str) -> str:
    result = run_cli(env, *args)
    output = result.stdout + result.stderr
    _CLI_OUTPUT.append(output)
    assert result.returncode == 0, output
    return output


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex[:16]}"


def new_ticket(fake: FaultyUpstream) -> str:
    ticket_id = str(next(_tickets))
    fake.add_ticket(ticket_id)
    return ticket_id


def ticket_event(visitor: str, ticket: str) -> dict[str, Any]:
    return {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket}


def post(svc: FaultService, payload: dict[str, Any], event_id: str | None = None) -> str:
    event_id = event_id or new_event_id()
    response = svc.send_event(payload, event_id=event_id)
    assert response.status_code == 202, response.text
    return event_id


def private_comments(fake: FaultyUpstream, ticket: str) -> list[dict[str, Any]]:
    return [c for c in fake.zendesk_comments(ticket) if not c["public"]]


def datafast_calls(fake: FaultyUpstream, visitor: str | None = None) -> list[Recorded]:
    route = f"/api/v1/visitors/{visitor}" if visitor else "/api/v1/visitors/"
    return sorted(fake.requests_to("datafast", route=route), key=lambda r: r.mono)


def zendesk_puts(fake: FaultyUpstream, ticket: str) -> list[Recorded]:
    return fake.requests_to("zendesk", method="PUT", route=f"/api/v2/tickets/{ticket}.json")


def text_of(comment: dict[str, Any]) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", comment["html_body"]))


# 1. kill -9 between the sink call and the record --------------------------------------------


@dataclass
class KillRun:
    zendesk_event: str
    slack_event: str
    ticket: str
    states_at_kill: dict[str, str]
    killed: list[int]
    survivors: int
    delivered_after: dict[str, float]
    statuses: dict[str, dict[str, Any]]
    comments: list[dict[str, Any]]
    puts: int
    lookups: int
    slack_messages: int
    logs: str


def _held_posts(fake: FaultyUpstream, ticket: str) -> list[Any]:
    held = fake.in_flight()
    zendesk = [h for h in held if h.method == "PUT" and h.path.endswith(f"/tickets/{ticket}.json")]
    slack = [h for h in held if h.method == "POST" and h.path == SLACK_HOOK_PATH]
    return zendesk + slack if zendesk and slack else []


@pytest.fixture(scope="module")
def kill_run(db: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> KillRun:
    """Three workers; the Zendesk and Slack fakes take the post at once and answer 4 s late;
    the worker(s) waiting on those answers (found by their connection to the fake) are killed
    with SIGKILL. At least one worker survives; the sweep of a surviving worker queues the
    events again once the killed worker's lease has lapsed (WORKER_LEASE_SECONDS, 8 s), long
    before Redis's visibility timeout (60 s) would."""
    with FaultyUpstream() as fake:
        visitor = fake.add_visitor(full_profile(score=90))
        ticket = new_ticket(fake)
        fake.delay("zendesk", 4.0, method="PUT", match=f"/tickets/{ticket}.json")
        fake.delay("slack", 4.0, method="POST")
        env = base_env(fake, HTTP_READ_TIMEOUT="10")
        with running(env, tmp_path_factory.mktemp("kill9"), 3, db) as svc:
            zendesk_event = post(svc, ticket_event(visitor, ticket))
            # A hot signup without an email: Slack only (HubSpot needs the email).
            slack_event = post(svc, {"type": "signup", "datafast_visitor_id": visitor})
            held = wait_for(
                lambda: _held_posts(fake, ticket), 20, message="both posts held by the fakes"
            )
            alive = [p.pid for p in svc.alive_workers()]
            owners = {pid_of_connection(h.client_port, fake.port, alive) for h in held}
            assert None not in owners, f"no worker owns the held connections {held}"
            killed_at = time.monotonic()
            for pid in owners:
                assert pid is not None
                svc.kill_worker(pid)
            killed = sorted(svc.worker_index(pid) for pid in owners if pid is not None)
            sinks_at_kill = {
                sink: (svc.status(event_id) or {})["sinks"][sink]["state"]
                for sink, event_id in (("zendesk", zendesk_event), ("slack", slack_event))
            }
            survivors = len(svc.alive_workers())
            delivered_after: dict[str, float] = {}
            while len(delivered_after) < 2 and time.monotonic() < killed_at + 120:
                for event_id in (zendesk_event, slack_event):
                    status = svc.status(event_id) or {}
                    if event_id not in delivered_after and status.get("state") == "delivered":
                        delivered_after[event_id] = time.monotonic() - killed_at
                time.sleep(0.2)
            time.sleep(1.0)  # room for a (wrong) second post to land
            statuses = {e: svc.status(e) or {} for e in (zendesk_event, slack_event)}
            logs = svc.logs()
        return KillRun(
            zendesk_event=zendesk_event,
            slack_event=slack_event,
            ticket=ticket,
            states_at_kill=sinks_at_kill,
            killed=killed,
            survivors=survivors,
            delivered_after=delivered_after,
            statuses=statuses,
            comments=private_comments(fake, ticket),
            puts=len(zendesk_puts(fake, ticket)),
            lookups=len(
                fake.requests_to("zendesk", method="GET", route=f"/api/v2/tickets/{ticket}/")
            ),
            slack_messages=len(fake.slack_messages(contains=slack_event)),
            logs=logs,
        )


def test_kill9_after_the_zendesk_post_leaves_exactly_one_comment(kill_run: KillRun) -> None:
    run = kill_run
    print(
        f"\nkilled worker(s) {run.killed}, {run.survivors} left; delivered "
        f"{', '.join(f'{t:.1f}' for t in run.delivered_after.values())} s after the kill"
    )
    assert run.states_at_kill["zendesk"] == "posting"  # killed between the call and the record
    assert run.survivors >= 1
    assert run.zendesk_event in run.delivered_after, (
        f"not delivered within 2 minutes of the kill: {run.statuses[run.zendesk_event]}\n"
        f"{run.logs[-5000:]}"
    )
    assert run.delivered_after[run.zendesk_event] <= 20
    assert len(run.comments) == 1, run.comments
    assert f"visitor-enrich:{run.zendesk_event}" in text_of(run.comments[0])
    assert run.puts == 1  # the redelivered task looked (GET comments) instead of posting
    assert run.lookups >= 1
    status = run.statuses[run.zendesk_event]
    assert status["state"] == "delivered"
    assert status["sinks"]["zendesk"]["state"] == "delivered"
    assert status["sinks"]["zendesk"]["reason"] == "found in the sink after a restart"


def test_kill9_after_the_slack_post_may_repeat_it_once(kill_run: KillRun) -> None:
    """Slack's incoming webhook cannot be searched: the redelivered task posts again. The
    documented residual risk is a second message, never a third, and never none."""
    run = kill_run
    print(f"\nSlack messages for the event: {run.slack_messages}")
    assert run.states_at_kill["slack"] == "posting"
    assert run.slack_event in run.delivered_after, run.statuses[run.slack_event]
    assert run.delivered_after[run.slack_event] <= 20
    assert 1 <= run.slack_messages <= 2
    assert run.statuses[run.slack_event]["sinks"]["slack"]["state"] == "delivered"


# 2. one rate for all workers -------------------------------------------------------------------

RATE = 20
RATE_EVENTS = 300


@dataclass
class RateRun:
    arrivals: list[float]
    statuses: list[int]
    elapsed: float
    comments_per_ticket: Counter[int]
    states: Counter[str | None]


@pytest.fixture(scope="module")
def rate_run(db: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> RateRun:
    with FaultyUpstream() as fake:
        # The provider's quota, enforced by the fake at arrival: a 21st request within any
        # sliding 1 s window gets a 429.
        fake.quota("datafast", RATE, period=1.0)
        visitor = fake.add_visitor(full_profile())
        # Every event asks the provider (no profile cache): the limiter is what is measured.
        env = base_env(
            fake,
            DATAFAST_RATE_LIMIT=str(RATE),
            ZENDESK_RATE_LIMIT="1000",
            MAX_RETRIES="5",
            PROFILE_CACHE_SECONDS="0",
        )
        with running(env, tmp_path_factory.mktemp("rate"), 3, db) as svc:
            tickets = [new_ticket(fake) for _ in range(RATE_EVENTS)]
            ids = [new_event_id() for _ in tickets]

            def send(indexes: list[int]) -> list[int]:
                with httpx.Client(base_url=svc.url, timeout=10) as http:
                    return [
                        send_event(
                            http,
                            ticket_event(visitor, tickets[i]),
                            event_id=ids[i],
                            secret=svc.secret,
                        ).status_code
                        for i in indexes
                    ]

            started = time.monotonic()
            with ThreadPoolExecutor(6) as pool:
                parts = pool.map(send, [list(range(k, RATE_EVENTS, 6)) for k in range(6)])
                codes = [code for part in parts for code in part]
            assert Counter(codes) == {202: RATE_EVENTS}
            states = wait_states(db, svc.prefix, ids, {"delivered"}, timeout=90)
            elapsed = time.monotonic() - started
        calls = datafast_calls(fake, visitor)
        return RateRun(
            arrivals=[c.mono for c in calls],
            statuses=[c.status for c in calls],
            elapsed=elapsed,
            comments_per_ticket=Counter(len(private_comments(fake, t)) for t in tickets),
            states=Counter(states.values()),
        )


def test_rate_limit_every_event_delivered_without_a_429(rate_run: RateRun) -> None:
    run = rate_run
    assert run.states == {"delivered": RATE_EVENTS}
    assert run.comments_per_ticket == {1: RATE_EVENTS}
    assert Counter(run.statuses) == {200: RATE_EVENTS}  # one request each, never a 429
    # The limiter, not the machine, set the pace: 300 requests at 20/s take at least 14 s.
    span = max(run.arrivals) - min(run.arrivals)
    assert span >= (RATE_EVENTS - RATE) / RATE - 0.5, span


def test_rate_limit_holds_across_three_workers(rate_run: RateRun) -> None:
    """No sliding 1 s window at the provider's clock holds more than N requests. (The limiter
    counts each grant for the window plus a margin, which absorbs the few milliseconds
    between a grant and the request's arrival; no +1 allowance is needed.)"""
    worst, at = max_in_window(rate_run.arrivals, 1.0)
    print(
        f"\n{RATE_EVENTS} DataFast requests in {rate_run.elapsed:.1f}s: "
        f"at most {worst} in any 1 s window"
    )
    assert worst <= RATE, f"{worst} requests within 1 s from {at:.3f}"


def test_fake_provider_counts_a_request_when_it_reached_the_socket() -> None:
    """The fake's arrival times are the kernel's receive times, not when a handler thread of
    this busy test process got round to the request: the provider's clock the two tests
    above hold the limiter to."""
    with FaultyUpstream() as fake, socket.create_connection(("127.0.0.1", fake.port)) as conn:
        sent = time.monotonic()
        conn.sendall(b"GET /datafast/api/v1/visitors/x HTTP/1.1\r\nHost: fake\r\n")
        time.sleep(0.3)  # the request line is in; the handler waits for the rest
        conn.sendall(b"Connection: close\r\n\r\n")
        conn.recv(65536)
        handled = time.monotonic()
        [record] = fake.requests
    assert handled - sent >= 0.3
    assert sent <= record.mono + 0.002  # stamps from two clocks: allow their rounding
    assert record.mono - sent < 0.1, (record.mono - sent, handled - sent)


def test_socket_arrival_is_the_kernels_receive_time_however_late_it_is_read() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            with conn:
                sent = time.time()
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                time.sleep(0.3)  # a handler thread that gets the CPU late
                arrived = socket_arrival(conn)
                assert conn.recv(100).startswith(b"GET / ")  # it peeked, took nothing
    assert sent - 0.002 <= arrived < sent + 0.1, arrived - sent


# 3. 429 + Retry-After pauses every worker ---------------------------------------------------

RETRY_AFTER = 3.0
# A request that had already passed the pause check when the first 429 came back may still
# arrive just after it; none may arrive later than this within the pause.
IN_FLIGHT = 0.25


def test_429_retry_after_pauses_every_worker(db: redis.Redis, tmp_path: Path) -> None:
    with FaultyUpstream() as fake:
        visitor = fake.add_visitor(full_profile())
        env = base_env(fake, DATAFAST_RATE_LIMIT="50", MAX_RETRIES="5")
        with running(env, tmp_path, 2, db) as svc:
            tickets = [new_ticket(fake) for _ in range(10)]
            window_from = time.monotonic()
            fake.fail_for("datafast", 429, 4.0, headers={"Retry-After": f"{RETRY_AFTER:g}"})
            ids = [post(svc, ticket_event(visitor, tickets[0]))]

            def first_429() -> Recorded | None:
                done = [c for c in datafast_calls(fake, visitor) if fake.answered_at(c)]
                return done[0] if done else None

            first = wait_for(first_429, 10, message="the first 429")
            time.sleep(0.3)  # the worker has read it and paused DataFast for everyone
            ids += [post(svc, ticket_event(visitor, t)) for t in tickets[1:]]
            wait_states(db, svc.prefix, ids, {"delivered"}, timeout=40)
            logs = [svc.log(f"worker{i}") for i in range(2)]
        calls = datafast_calls(fake, visitor)
        comments = Counter(len(private_comments(fake, t)) for t in tickets)

    assert first.status == 429
    first_answered = fake.answered_at(first)
    assert first_answered is not None
    # Nothing but the first request before its Retry-After was up, from either worker.
    early = [round(c.mono - first_answered, 3) for c in calls[1:] if c.mono < first_answered + 3]
    assert early == [], f"DataFast called {early} s after a 429 with Retry-After: 3"
    # And for every 429: nothing sent after it was answered, within its 3 s.
    for rejected in (c for c in calls if c.status == 429):
        answered = fake.answered_at(rejected)
        assert answered is not None
        inside = [
            round(c.mono - answered, 3)
            for c in calls
            if answered + IN_FLIGHT <= c.mono < answered + RETRY_AFTER
        ]
        assert inside == [], f"DataFast called {inside} s after a 429 with Retry-After: 3"
    assert {c.status for c in calls if c.mono < window_from + 4.0} == {429}
    assert {c.status for c in calls if c.mono >= window_from + 4.0} == {200}
    assert comments == {1: len(tickets)}
    # Both worker processes took tasks: the pause was shared through Redis, not per process.
    assert all("visitor_enrich.enrich_event[" in log for log in logs)


# 4. provider faults: bounded retries, dead letters, replay ----------------------------------

FIVE_MIB = 5 * 1024 * 1024


@dataclass(frozen=True)
class Fault:
    name: str
    requests: int  # to the failing service, before the replay
    state: str  # of the event once the retries are over
    sink: str | None = None  # None: DataFast fails (the event's dead letter)


FAULTS = [
    Fault("datafast_500", 1 + MAX_RETRIES, "dead"),
    Fault("datafast_hangs_past_read_timeout", 1 + MAX_RETRIES, "dead"),
    Fault("datafast_closes_the_connection", 1 + MAX_RETRIES, "dead"),
    Fault("datafast_malformed_json_200", 1, "failed"),
    Fault("datafast_5MiB_body", 1, "failed"),
    Fault("datafast_5MiB_chunked_body", 1, "failed"),
    Fault("zendesk_500", 1 + MAX_RETRIES, "dead", sink="zendesk"),
]


@dataclass
class FaultCase:
    fault: Fault
    event_id: str
    visitor: str
    ticket: str
    status: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    after_replay: dict[str, Any] = field(default_factory=dict)
    comments: list[dict[str, Any]] = field(default_factory=list)
    puts_after_replay: int = 0
    comments_after_second_replay: int = 0
    puts_after_second_replay: int = 0

    @property
    def letter_id(self) -> str:
        return f"{self.event_id}:{self.fault.sink}" if self.fault.sink else self.event_id


@dataclass
class FaultRun:
    cases: dict[str, FaultCase]
    dead_list: str
    dead_show: str
    replay: str
    replay_again: str
    second_replay: str
    list_after: str


def _script(fake: FaultyUpstream, case: FaultCase) -> list[Any]:
    visitor_path = f"/visitors/{case.visitor}"
    name = case.fault.name
    if name == "datafast_500":
        return [fake.fail("datafast", 500, times=None, match=visitor_path)]
    if name == "datafast_hangs_past_read_timeout":
        return [fake.delay("datafast", 3.0, times=None, match=visitor_path)]
    if name == "datafast_closes_the_connection":
        return [fake.drop("datafast", match=visitor_path)]
    if name == "datafast_malformed_json_200":
        body = '{"status": "success", "data": {"visitorId": '
        return [
            fake.fail(
                "datafast",
                200,
                times=None,
                match=visitor_path,
                body=body,
                content_type="application/json",
            )
        ]
    if name == "datafast_5MiB_body":
        body = b'{"status":"success","data":{"pad":"' + b"x" * FIVE_MIB + b'"}}'
        return [
            fake.fail(
                "datafast",
                200,
                times=None,
                match=visitor_path,
                body=body,
                content_type="application/json",
            )
        ]
    if name == "datafast_5MiB_chunked_body":
        return [fake.stream("datafast", FIVE_MIB, match=visitor_path)]
    if name == "zendesk_500":
        return [
            fake.fail(
                "zendesk", 500, times=None, method="PUT", match=f"/tickets/{case.ticket}.json"
            )
        ]
    raise AssertionError(name)


def _failing_requests(fake: FaultyUpstream, case: FaultCase) -> int:
    if case.fault.sink == "zendesk":
        return len(zendesk_puts(fake, case.ticket))
    return len(datafast_calls(fake, case.visitor))


def _settled(svc: FaultService, case: FaultCase, replays: int) -> dict[str, Any] | None:
    """The status once the event is delivered after its ``replays``-th replay."""
    status = svc.status(case.event_id) or {}
    steps = [s["step"] for s in status.get("steps", [])]
    if status.get("state") != "delivered" or steps.count("replayed") < replays:
        return None
    return status if steps[-1] == "delivered" else None


@pytest.fixture(scope="module")
def fault_run(db: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> FaultRun:
    with FaultyUpstream() as fake:
        env = base_env(
            fake,
            HTTP_READ_TIMEOUT="1",
            CIRCUIT_FAILURE_THRESHOLD="100",
            DATAFAST_RATE_LIMIT="100",
            ZENDESK_RATE_LIMIT="100",
        )
        with running(env, tmp_path_factory.mktemp("faults"), 2, db) as svc:
            cases: dict[str, FaultCase] = {}
            rules: list[Any] = []
            for fault in FAULTS:
                case = FaultCase(
                    fault=fault,
                    event_id=new_event_id(),
                    visitor=fake.add_visitor(full_profile()),
                    ticket=new_ticket(fake),
                )
                rules += _script(fake, case)
                cases[fault.name] = case
            for case in cases.values():
                post(svc, ticket_event(case.visitor, case.ticket), case.event_id)
            for case in cases.values():
                case.status = svc.wait_for_state(case.event_id, {"dead", "failed"}, timeout=30)
                case.requests = _failing_requests(fake, case)
            time.sleep(1.0)  # a retry that should not happen has time to arrive
            for case in cases.values():
                case.requests = _failing_requests(fake, case)
            dead_list = cli(svc.env, "dead", "list")
            dead_show = cli(svc.env, "dead", "show", cases["datafast_500"].letter_id)

            fake.retire(*rules)  # the providers recover
            replay = cli(svc.env, "dead", "replay", "--all")
            replay_again = cli(svc.env, "dead", "replay", "--all")  # at once: nothing left
            for case in cases.values():
                case.after_replay = wait_for(
                    lambda case=case: _settled(svc, case, 1), 30, message=case.fault.name
                )
            time.sleep(1.0)
            for case in cases.values():
                case.comments = private_comments(fake, case.ticket)
                case.puts_after_replay = len(zendesk_puts(fake, case.ticket))

            # The same letters again (a stale copy, a second operator): nothing is re-posted.
            store = EventStore(db, svc.prefix, 3600)
            for case in cases.values():
                store.add_dead_letter(case.event_id, case.fault.sink, "replayed twice", 0)
            second_replay = cli(svc.env, "dead", "replay", "--all")
            for case in cases.values():
                replays = 1 if case.fault.sink else 2
                wait_for(lambda case=case, n=replays: _settled(svc, case, n), 30)
            time.sleep(1.0)
            for case in cases.values():
                case.comments_after_second_replay = len(private_comments(fake, case.ticket))
                case.puts_after_second_replay = len(zendesk_puts(fake, case.ticket))
            list_after = cli(svc.env, "dead", "list")
        return FaultRun(
            cases=cases,
            dead_list=dead_list,
            dead_show=dead_show,
            replay=replay,
            replay_again=replay_again,
            second_replay=second_replay,
            list_after=list_after,
        )


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_provider_fault_bounded_retries_dead_letter_and_replay_once(
    fault_run: FaultRun, fault: Fault
) -> None:
    case = fault_run.cases[fault.name]
    # Bounded retries: 1 + MAX_RETRIES for what may pass, exactly 1 for what cannot.
    assert case.requests == fault.requests, case.status["steps"]
    assert case.status["state"] == fault.state, case.status
    if fault.sink:
        assert case.status["sinks"][fault.sink]["state"] == fault.state
        assert case.status["sinks"][fault.sink]["attempts"] == fault.requests
    else:
        assert case.status["source"]["attempts"] == (fault.requests if fault.state == "dead" else 0)
    # The dead letter, as `visitor-enrich dead list` shows it.
    listed = [
        line for line in fault_run.dead_list.splitlines() if line.startswith(case.letter_id + "\t")
    ]
    assert len(listed) == 1, fault_run.dead_list
    assert f"{case.letter_id}: queued" in fault_run.replay
    # After the provider recovered, one replay: delivered, exactly one comment.
    assert case.after_replay["state"] == "delivered"
    assert len(case.comments) == 1, case.comments
    assert f"visitor-enrich:{case.event_id}" in text_of(case.comments[0])
    assert case.puts_after_replay == (fault.requests + 1 if fault.sink == "zendesk" else 1)
    # Replayed again: nothing more reaches the ticket.
    assert case.comments_after_second_replay == 1
    assert case.puts_after_second_replay == case.puts_after_replay


def test_dead_letter_cli_round_trip(fault_run: FaultRun) -> None:
    run = fault_run
    assert run.dead_show and '"deadLetter"' in run.dead_show and "500" in run.dead_show
    assert run.replay_again.strip() == ""  # replay removed them; a second run finds none
    assert "already delivered" in run.second_replay  # the sink letter: not posted again
    assert "no dead letters" in run.list_after


def test_fault_reasons_say_what_happened(fault_run: FaultRun) -> None:
    reasons = {name: case.status["reason"] or "" for name, case in fault_run.cases.items()}
    assert "500" in reasons["datafast_500"]
    assert "timeout" in reasons["datafast_hangs_past_read_timeout"].lower()
    assert "connection" in reasons["datafast_closes_the_connection"].lower()
    assert "json" in reasons["datafast_malformed_json_200"].lower()
    assert "cap" in reasons["datafast_5MiB_body"]
    assert "cap" in reasons["datafast_5MiB_chunked_body"]
    zendesk = fault_run.cases["zendesk_500"].status["sinks"]["zendesk"]["reason"]
    assert "500" in zendesk


# 4b. circuit breaker ------------------------------------------------------------------------

COOLDOWN = 3.0


def test_circuit_breaker_holds_calls_for_the_cooldown_without_failing_events(
    db: redis.Redis, tmp_path: Path
) -> None:
    with FaultyUpstream() as fake:
        visitor = fake.add_visitor(full_profile())
        env = base_env(
            fake,
            CIRCUIT_FAILURE_THRESHOLD="3",
            CIRCUIT_WINDOW_SECONDS="30",
            CIRCUIT_COOLDOWN_SECONDS=f"{COOLDOWN:g}",
            MAX_RETRIES="5",
            DATAFAST_RATE_LIMIT="100",
        )
        with running(env, tmp_path, 2, db) as svc:
            down = fake.fail("datafast", 500, times=None)
            open_key = f"{svc.prefix}circuit:datafast:open"
            tickets = [new_ticket(fake) for _ in range(6)]
            ids = [post(svc, ticket_event(visitor, t)) for t in tickets]
            opened_at = wait_for(
                lambda: db.exists(open_key) and time.monotonic(),
                10,
                interval=0.005,
                message="the circuit to open",
            )
            during: list[dict[str, str | None]] = []
            while time.monotonic() < opened_at + COOLDOWN - 0.5:
                during.append(event_states(db, svc.prefix, ids))
                time.sleep(0.2)
            fake.retire(down)  # DataFast recovers before the cool-down ends: the probe passes
            wait_states(db, svc.prefix, ids, {"delivered"}, timeout=30)
            statuses = [svc.status(e) or {} for e in ids]
            logs = svc.logs()
        calls = datafast_calls(fake, visitor)
        comments = Counter(len(private_comments(fake, t)) for t in tickets)

    failures = [c for c in calls if c.status == 500]
    print(f"\nDataFast calls around the opening: {[round(c.mono - opened_at, 3) for c in calls]}")
    assert len(failures) >= 3
    assert all(c.mono < opened_at + IN_FLIGHT for c in failures)
    # While open: no request reached DataFast (after those already under way when it opened).
    held = [
        round(c.mono - opened_at, 3)
        for c in calls
        if opened_at + IN_FLIGHT <= c.mono < opened_at + COOLDOWN - 0.05
    ]
    assert held == [], f"DataFast called {held} s after the circuit opened"
    assert any(c.mono >= opened_at + COOLDOWN - 0.05 for c in calls)
    # The events waited; none was failed, and no attempt was spent on the open circuit.
    assert during and all(
        state in ("queued", "enriching") for states in during for state in states.values()
    ), [Counter(states.values()) for states in during]
    assert sum(s["source"]["attempts"] for s in statuses) == len(failures)
    assert comments == {1: len(tickets)}
    assert "circuit opened" in logs


# 5. Redis outage under inbound load ----------------------------------------------------------


def test_redis_outage_answers_503_and_loses_no_accepted_event(tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path / "redis").start()
    client = private.client()
    try:
        with FaultyUpstream() as fake:
            visitor = fake.add_visitor(full_profile())
            env = base_env(
                fake,
                REDIS_URL=private.url,
                BROKER_VISIBILITY_TIMEOUT="10",
                DATAFAST_RATE_LIMIT="1000",
                ZENDESK_RATE_LIMIT="1000",
            )
            with running(env, tmp_path / "logs", 2, client) as svc:
                load = TicketSender(svc, fake, visitor, lambda: new_ticket(fake))
                ready: list[tuple[float, int | str]] = []
                stop = threading.Event()

                def prober() -> None:
                    with httpx.Client(base_url=svc.url, timeout=10) as http:
                        while not stop.is_set():
                            at = time.monotonic()
                            try:
                                ready.append((at, http.get("/readyz").status_code))
                            except httpx.HTTPError as exc:
                                ready.append((at, type(exc).__name__))
                            time.sleep(0.1)

                probe = threading.Thread(target=prober)
                load.start()
                probe.start()
                time.sleep(3.0)
                down_at = time.monotonic()
                private.shutdown()
                gone_at = time.monotonic()  # the server has exited
                time.sleep(3.0)
                back_at = time.monotonic()  # it is started again
                private.start()
                up_at = time.monotonic()  # and answers
                time.sleep(4.0)
                stop.set()
                load.stop()
                probe.join(timeout=15)
                sent = load.sent

                accepted, refused = load.accepted, load.refused
                # Within 30 s of Redis's return, with no process restarted by anyone.
                states = wait_states(
                    client,
                    svc.prefix,
                    [s.event_id for s in accepted],
                    {"delivered"},
                    max(0.0, up_at + 30 - time.monotonic()),
                    check=False,
                )
                stuck = sorted(e for e, state in states.items() if state != "delivered")
                exited = [i for i, proc in enumerate(svc.worker_procs) if proc.poll() is not None]
                # A refused event is one the sender may send again: it must then go through.
                resent = [
                    svc.send_event(s.payload, event_id=s.event_id).status_code for s in refused
                ]
                wait_states(client, svc.prefix, [s.event_id for s in refused], {"delivered"}, 60)
                # That case made certain: an id accepted (state "queued") whose task never
                # reached the broker, because the publish and the release both failed.
                orphan_ticket = new_ticket(fake)
                orphan = Event.model_validate(
                    {
                        "id": new_event_id(),
                        "type": "support_ticket",
                        "visitor_id": visitor,
                        "ticket_id": orphan_ticket,
                    }
                )
                assert EventStore(client, svc.prefix, 3600).accept(orphan)
                orphan_answer = svc.send_event(
                    ticket_event(visitor, orphan_ticket), event_id=orphan.id
                ).status_code
                wait_states(client, svc.prefix, [orphan.id], {"delivered"}, 30)
                logs = svc.logs()
                worker_logs = [svc.log(f"worker{i}") for i in range(2)]
                web_exited = svc.web is not None and svc.web.poll() is not None
            comments = {s.event_id: len(private_comments(fake, s.ticket)) for s in sent}
            orphan_comments = len(private_comments(fake, orphan_ticket))
    finally:
        client.close()
        private.stop()

    codes = Counter(s.code for s in sent)
    print(
        f"\nanswers during the outage test: {dict(codes)}; refused then resent: {Counter(resent)}"
    )
    assert set(codes) <= {202, 503}, codes  # never another 5xx, never a timeout
    assert codes[503] > 0, "the outage was not hit"
    late = [round(s.at - up_at, 2) for s in refused if not down_at - 0.5 <= s.at <= up_at + 2]
    assert late == [], f"503 at {late} s after Redis answered again"
    assert any(s.at > up_at for s in accepted)  # accepted again after the restart
    assert exited == [] and not web_exited, f"processes exited: workers {exited}\n{logs[-6000:]}"
    assert stuck == [], f"not delivered within 30 s of Redis's return: {stuck}\n{logs[-6000:]}"
    wrong = {e: n for e, n in comments.items() if n != 1}
    assert wrong == {}, f"comments per event (should be 1): {wrong}\n{logs[-6000:]}"
    assert set(resent) == {202}, resent
    assert (orphan_answer, orphan_comments) == (202, 1)
    readiness = Counter(code for at, code in ready if gone_at < at < back_at)
    assert set(readiness) == {503}, readiness
    assert ready[-1][1] == 200, ready[-5:]
    # The workers reconnect by themselves.
    for log in worker_logs:
        assert log.count(" Connected to ") >= 2, log[-4000:]
        assert "Unrecoverable error" not in log, log[log.index("Unrecoverable error") :][:6000]


# 6. secrets ------------------------------------------------------------------------------------


def test_no_secret_in_any_captured_log() -> None:
    """Every log file of every service this module started, and every CLI output."""
    texts = {
        str(path): path.read_text("utf-8", "replace")
        for directory in _LOG_DIRS
        for path in sorted(directory.glob("*.log"))
    }
    texts.update({f"cli output {i}": out for i, out in enumerate(_CLI_OUTPUT)})
    if not any(texts.values()):
        pytest.skip("run with the rest of the module: nothing was captured")
    assert any("delivered" in text for text in texts.values())  # the logs show real work
    leaks = [
        f"{what} in {where}"
        for what, needle in secret_needles().items()
        for where, text in texts.items()
        if needle in text
    ]
    assert leaks == []
