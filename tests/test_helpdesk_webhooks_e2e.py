"""Freshdesk, Crisp and Plain end to end: each vendor's own webhook, signed its own way, into
the real web process (uvicorn) and real Celery worker processes, and the internal note out at
each vendor's fake (tests/fake_freshdesk.py, fake_crisp.py, fake_plain.py), served with
DataFast on one loopback server by ``HelpdeskFake`` (tests/helpdesk_fakes.py).

One service start serves the whole module (the variables point at the fakes as the README
says). Per system: a signed webhook yields exactly one note naming referrer, UTM source, visit
count and last pages within 5 s; the same webhook again is answered 200 duplicate and adds no
note; a bad signature is 401 and queues nothing; a conversation without the visitor field
gets the short "no journey" note. Then kill -9 of the workers holding the three note calls
(the fake takes each note at once and answers 4 s late) still leaves one note each: the
redelivered task lists the notes, finds the marker and does not post again. Last, none of
the secrets is in any log line (uvicorn's access log shows Crisp's ``?key=`` masked).

The shared Redis is used in database ``REDIS_DB``: the kill test shortens the broker's
visibility timeout to 10 s, and kombu restores every unacknowledged message of its database
that is older than its own timeout, so other suites' waiting tasks must not share it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fake_crisp import (
    CRISP_HOOK_SECRET,
    CRISP_IDENTIFIER,
    CRISP_KEY,
    CRISP_WEBSITE_KEY,
    FakeCrisp,
    compact,
    message_hook,
    new_session_id,
    plugin_hook_headers,
    set_data_hook,
)
from fake_freshdesk import (
    FRESHDESK_API_KEY,
    FRESHDESK_WEBHOOK_TOKEN,
    FakeFreshdesk,
    new_ticket_id,
    rule_body,
    rule_headers,
)
from fake_plain import (
    PLAIN_API_KEY,
    PLAIN_WEBHOOK_SECRET,
    FakePlain,
    signed_headers,
    thread_created,
)
from fakes import full_profile
from faults_support import FaultService, pid_of_connection
from harness import REDIS_HOST, REDIS_PORT, cleanup_redis, new_prefix, new_queue, wait_for
from helpdesk_fakes import HelpdeskFake

pytestmark = pytest.mark.e2e

REDIS_DB = 11
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
NOTE_WITHIN = 5.0
# What the note must name from full_profile(): referrer, UTM source, visits, the last pages.
JOURNEY_FACTS = ("news.ycombinator.com", "hn-launch-week", "17", "/pricing", "/page-10")


@dataclass
class Fakes:
    # DataFast and the three systems on one loopback server (tests/helpdesk_fakes.py).
    server: HelpdeskFake
    freshdesk: FakeFreshdesk
    crisp: FakeCrisp
    plain: FakePlain


@dataclass
class Sent:
    """One webhook as a system sends it: its body, headers and query, and where its note lands."""

    system: str
    event_id: str
    body: bytes
    headers: dict[str, str]
    notes: Callable[[], list[str]]
    url_query: str = ""

    def post(self, svc: FaultService) -> httpx.Response:
        assert svc.http is not None
        return svc.http.post(
            f"/v1/webhooks/{self.system}{self.url_query}", content=self.body, headers=self.headers
        )


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    fd, crisp, plain = FakeFreshdesk(), FakeCrisp(), FakePlain()
    with HelpdeskFake(fd, crisp, plain) as server:
        yield Fakes(server, fd, crisp, plain)


@pytest.fixture(scope="module")
def svc(
    fakes: Fakes, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultService]:
    client = redis.Redis.from_url(REDIS_URL)
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": new_prefix(),
        "CELERY_QUEUE": new_queue(),
        # DataFast and the three systems only (not the shared fake's HubSpot, Zendesk, Slack).
        **{
            k: v
            for k, v in fakes.server.env().items()
            if not k.startswith(("HUBSPOT", "ZENDESK", "SLACK"))
        },
        "BROKER_VISIBILITY_TIMEOUT": "10",
        "HTTP_READ_TIMEOUT": "10",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "1",
        "LOG_LEVEL": "INFO",
    }
    service = FaultService(
        env, tmp_path_factory.mktemp("helpdesks"), workers=2, redis_client=client
    )
    try:
        with service:
            yield service
    finally:
        cleanup_redis(client, env["REDIS_KEY_PREFIX"], env["CELERY_QUEUE"])
        client.close()


# Each system's webhook --------------------------------------------------------------------


def freshdesk_hook(fakes: Fakes, visitor: str | None) -> Sent:
    ticket = new_ticket_id()
    fakes.freshdesk.add_ticket(ticket, visitor)
    return Sent(
        "freshdesk",
        f"freshdesk:{ticket}",
        json.dumps(rule_body(ticket, visitor)).encode(),
        rule_headers(),
        lambda: [n["body"] for n in fakes.freshdesk.notes(ticket)],
    )


def crisp_hook(fakes: Fakes, visitor: str | None) -> Sent:
    session = new_session_id()
    fakes.crisp.add_conversation(
        session, {"datafast_visitor_id": visitor} if visitor else {"plan": "pro"}
    )
    # A visitor's message: the worker reads the session data from the conversation's meta.
    payload = message_hook(session)
    return Sent(
        "crisp",
        f"crisp:{session}",
        compact(payload),
        plugin_hook_headers(payload),
        lambda: [n["content"] for n in fakes.crisp.notes(session)],
    )


def plain_hook(fakes: Fakes, visitor: str | None) -> Sent:
    thread_id, customer_id = fakes.plain.add_thread(
        {"datafast_visitor_id": visitor} if visitor else {}
    )
    payload = thread_created(thread_id, customer_id)
    body = json.dumps(payload).encode()
    return Sent(
        "plain",
        f"plain:{payload['id']}",
        body,
        signed_headers(body, payload),
        # The plain-text version: the markdown one escapes underscores.
        lambda: [n["text"] for n in fakes.plain.notes(thread_id)],
    )


HOOKS = {"freshdesk": freshdesk_hook, "crisp": crisp_hook, "plain": plain_hook}


def badly_signed(sent: Sent) -> Sent:
    headers = dict(sent.headers)
    if sent.system == "freshdesk":
        headers["X-Visitor-Enrich-Token"] = "not-the-token"
    elif sent.system == "crisp":
        headers["X-Crisp-Signature"] = "0" * 64
    else:
        headers["Plain-Request-Signature"] = "0" * 64
    return Sent(sent.system, sent.event_id, sent.body, headers, sent.notes)


# The tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("system", list(HOOKS))
def test_signed_webhook_yields_one_note_with_the_journey_and_a_replay_is_a_duplicate(
    system: str, svc: FaultService, fakes: Fakes
) -> None:
    visitor = fakes.server.add_visitor(full_profile())
    sent = HOOKS[system](fakes, visitor)
    started = time.monotonic()
    first = sent.post(svc)
    assert first.status_code in (200, 202), first.text
    assert first.json()["data"] == {"eventId": sent.event_id, "state": "queued"}
    (note,) = wait_for(sent.notes, NOTE_WITHIN, interval=0.02, message=f"the {system} note")
    took = time.monotonic() - started
    print(f"\n{system}: note {took:.2f} s after the webhook")
    for fact in JOURNEY_FACTS:
        assert fact in note, f"{fact!r} missing from the {system} note:\n{note}"
    assert f"visitor-enrich:{sent.event_id}" in note
    replay = sent.post(svc)
    assert replay.status_code == 200 and replay.json()["data"]["state"] == "duplicate"
    status = svc.wait_for_state(sent.event_id, {"delivered"})
    assert status["sinks"][system]["state"] == "delivered"
    time.sleep(0.5)  # room for a (wrong) second note
    assert len(sent.notes()) == 1


@pytest.mark.parametrize("system", list(HOOKS))
def test_bad_signature_is_401_and_queues_nothing(
    system: str, svc: FaultService, fakes: Fakes
) -> None:
    visitor = fakes.server.add_visitor(full_profile())
    sent = badly_signed(HOOKS[system](fakes, visitor))
    answer = sent.post(svc)
    assert answer.status_code == 401, answer.text
    assert answer.json()["status"] == "error"
    assert svc.status(sent.event_id) is None
    time.sleep(0.5)
    assert sent.notes() == []


@pytest.mark.parametrize("system", list(HOOKS))
def test_conversation_without_the_visitor_field_gets_the_short_note(
    system: str, svc: FaultService, fakes: Fakes
) -> None:
    sent = HOOKS[system](fakes, None)
    lookups_before = len(fakes.server.requests_to("datafast"))
    assert sent.post(svc).status_code in (200, 202)
    (note,) = wait_for(sent.notes, NOTE_WITHIN, interval=0.02, message=f"the {system} note")
    assert "No visitor journey found" in note
    assert "datafast_visitor_id" in note  # which field is missing, and how to set it
    assert "hn-launch-week" not in note
    status = svc.wait_for_state(sent.event_id, {"delivered"})
    assert status["sinks"][system]["state"] == "delivered"
    # No visitor id, so DataFast is not asked.
    assert len(fakes.server.requests_to("datafast")) == lookups_before


def test_website_hook_with_the_key_in_the_url(svc: FaultService, fakes: Fakes) -> None:
    visitor = fakes.server.add_visitor(full_profile())
    session = new_session_id()
    fakes.crisp.add_conversation(session)
    payload = set_data_hook(session, {"datafast_visitor_id": visitor})
    assert svc.http is not None
    unkeyed = svc.http.post("/v1/webhooks/crisp", content=compact(payload))
    assert unkeyed.status_code == 401
    keyed = svc.http.post(f"/v1/webhooks/crisp?key={CRISP_WEBSITE_KEY}", content=compact(payload))
    assert keyed.status_code == 200 and keyed.json()["data"]["state"] == "queued"
    (note,) = wait_for(lambda: fakes.crisp.notes(session), NOTE_WITHIN, message="the Crisp note")
    assert "hn-launch-week" in note["content"]


NOTE_CALLS = {
    "freshdesk": ("POST", "/notes"),
    "crisp": ("POST", "/message"),
    "plain": ("POST", "/graphql/v1"),
}


def _held(fakes: Fakes) -> list[Any]:
    """The three note calls the fake holds; empty until all three are."""
    held = []
    for system, (method, ending) in NOTE_CALLS.items():
        calls = [
            h
            for h in fakes.server.in_flight()
            if h.method == method and h.path.startswith(f"/{system}/") and h.path.endswith(ending)
        ]
        if not calls:
            return []
        held.append(calls[0])
    return held


def test_kill9_between_the_note_call_and_its_record_leaves_one_note_each(
    svc: FaultService, fakes: Fakes, tmp_path: Path
) -> None:
    visitor = fakes.server.add_visitor(full_profile())
    sents = [hook(fakes, visitor) for hook in HOOKS.values()]
    fakes.server.delay("freshdesk", 4.0, method="POST", match="/notes")
    fakes.server.delay("crisp", 4.0, method="POST", match="/message")
    fakes.server.delay("plain", 4.0, method="POST", match="createNote")
    for sent in sents:
        assert sent.post(svc).status_code in (200, 202)
    held = wait_for(lambda: _held(fakes), 20, message="the three note calls held by the fakes")
    alive = [p.pid for p in svc.alive_workers()]
    owners = {pid_of_connection(h.client_port, fakes.server.port, alive) for h in held}
    assert None not in owners, f"no worker owns the held connections {held}"
    for pid in owners:
        assert pid is not None
        svc.kill_worker(pid)
    states = {s.system: (svc.status(s.event_id) or {})["sinks"][s.system]["state"] for s in sents}
    assert states == {"freshdesk": "posting", "crisp": "posting", "plain": "posting"}
    if not svc.alive_workers():
        svc.spawn_worker()
    for sent in sents:
        status = svc.wait_for_state(sent.event_id, {"delivered"}, timeout=120)
        assert status["sinks"][sent.system]["reason"] == "found in the sink after a restart", status
    time.sleep(1.0)  # room for a (wrong) second note
    for sent in sents:
        notes = sent.notes()
        assert len(notes) == 1, (sent.system, notes)
        assert f"visitor-enrich:{sent.event_id}" in notes[0]


def test_no_secret_in_the_logs(svc: FaultService) -> None:
    """Every secret of the three systems, and the forms they travel in (Basic credentials,
    Crisp's ?key= in the website hook's URL), is absent from the web and worker logs."""
    logs = svc.logs()
    assert f"?key={CRISP_WEBSITE_KEY}" not in logs
    assert "POST /v1/webhooks/crisp?key=" in logs  # the request was logged, its key masked
    needles = {
        "FRESHDESK_API_KEY": FRESHDESK_API_KEY,
        "Freshdesk Basic credentials": base64.b64encode(f"{FRESHDESK_API_KEY}:X".encode()).decode(),
        "FRESHDESK_WEBHOOK_TOKEN": FRESHDESK_WEBHOOK_TOKEN,
        "CRISP_KEY": CRISP_KEY,
        "Crisp Basic credentials": base64.b64encode(
            f"{CRISP_IDENTIFIER}:{CRISP_KEY}".encode()
        ).decode(),
        "CRISP_WEBHOOK_KEY (plugin secret)": CRISP_HOOK_SECRET,
        "CRISP_WEBHOOK_KEY (website key)": CRISP_WEBSITE_KEY,
        "PLAIN_API_KEY": PLAIN_API_KEY,
        "PLAIN_WEBHOOK_SECRET": PLAIN_WEBHOOK_SECRET,
    }
    leaked = [name for name, value in needles.items() if value in logs]
    assert not leaked, f"secrets in the logs: {leaked}"
