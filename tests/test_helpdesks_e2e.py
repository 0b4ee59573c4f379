"""Zendesk, Intercom and Help Scout end to end: their own webhooks, signed their own way, into
the real web process (uvicorn) and real Celery worker processes, against local fakes of their
APIs (``tests/helpdesk_fakes.py``: DataFast and Zendesk from ``tests/fakes.py``, Intercom and
Help Scout from ``tests/fake_intercom.py`` / ``tests/fake_helpscout.py``), configured only
through the variables the README lists. One Service start for all three systems:

1. a signed webhook → exactly one internal note naming referrer, UTM source, visit count and
   the last pages, within 5 s (Zendesk trigger and ``ticket.created`` event, Intercom with the
   contact lookup, Help Scout conversation and Beacon chat);
2. the same webhook again → 200 duplicate, no second note;
3. a bad signature → 401, nothing stored or queued;
4. a conversation without the visitor field → the short "no journey" note saying how to set it;
5. kill -9 of the workers holding the three note calls (each fake takes the note at once and
   answers 4 s late) → one note each, found by the marker after Redis hands the task on.

Redis database ``REDIS_DB`` (not 0): the 10 s visibility timeout the kill test needs must not
hand other suites' waiting tasks (60 s) to our workers; keys and queue are unique anyway.
"""

from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from fake_helpscout import FakeHelpScout
from fake_intercom import FakeIntercom
from fakes import full_profile
from faults_support import FaultService, pid_of_connection, run_cli
from harness import REDIS_HOST, REDIS_PORT, cleanup_redis, new_prefix, new_queue, wait_for
from helpdesk_fakes import HelpdeskFake
from zendesk_webhooks import (
    VISITOR_FIELD_ID,
    ZENDESK_WEBHOOK_SECRET,
    signed,
    ticket_created,
    trigger_body,
)

pytestmark = pytest.mark.e2e

REDIS_DB = 12
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
NOTE_WITHIN_SECONDS = 5.0
JOURNEY_FACTS = (
    "https://news.ycombinator.com/",
    "UTM source",
    "hn-launch-week",
    "Visits",
    "17",
    "/pricing",
)


@dataclass
class Run:
    fake: HelpdeskFake
    svc: FaultService
    intercom: FakeIntercom
    helpscout: FakeHelpScout

    def post(self, system: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        assert self.svc.http is not None
        return self.svc.http.post(f"/v1/webhooks/{system}", content=body, headers=headers)


@pytest.fixture(scope="module")
def run(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    client = redis.Redis.from_url(REDIS_URL)
    with HelpdeskFake(FakeIntercom(), FakeHelpScout()) as fake:
        env = {
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": new_prefix(),
            "CELERY_QUEUE": new_queue(),
            **{k: v for k, v in fake.env().items() if not k.startswith(("HUBSPOT", "SLACK"))},
            "ZENDESK_WEBHOOK_SECRET": ZENDESK_WEBHOOK_SECRET,
            "ZENDESK_VISITOR_FIELD": VISITOR_FIELD_ID,
            "BROKER_VISIBILITY_TIMEOUT": "10",
            "RETRY_BACKOFF_MAX": "2",
            "HTTP_READ_TIMEOUT": "10",
        }
        svc = FaultService(
            env, tmp_path_factory.mktemp("helpdesks"), workers=2, redis_client=client
        )
        try:
            with svc:
                yield Run(fake, svc, fake.system("intercom"), fake.system("helpscout"))
        finally:
            cleanup_redis(client, env["REDIS_KEY_PREFIX"], env["CELERY_QUEUE"])
            client.close()


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def one_note(notes: Callable[[], list[dict[str, Any]]], key: str, started: float) -> str:
    """Wait for the first note, then make sure no second one follows; return its text."""
    found = wait_for(notes, 20, message="the note")
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # room for a (wrong) second note to land
    assert len(notes()) == 1, notes()
    assert elapsed < NOTE_WITHIN_SECONDS, f"the note took {elapsed:.1f}s"
    return text_of(str(found[0][key]))


def assert_journey(text: str, event_id: str) -> None:
    for fact in JOURNEY_FACTS:
        assert fact in text, f"{fact!r} missing from the note:\n{text}"
    assert f"visitor-enrich:{event_id}" in text


def new_ticket(fake: HelpdeskFake, **kwargs: Any) -> str:
    ticket = str(uuid.uuid4().int % 10**9)
    fake.add_ticket(ticket, "Help please", **kwargs)
    return ticket


def private_comments(fake: HelpdeskFake, ticket: str) -> list[dict[str, Any]]:
    return [c for c in fake.zendesk_comments(ticket) if not c["public"]]


def assert_replay_is_duplicate(run: Run, system: str, body: bytes, headers: dict[str, str]) -> None:
    again = run.post(system, body, headers)
    assert again.status_code == 200, again.text
    assert again.json()["data"]["state"] == "duplicate"


# 1-2. One note with the journey, and the replay ----------------------------------------------


def test_zendesk_trigger_and_event_webhooks(run: Run) -> None:
    visitor = run.fake.add_visitor(full_profile())
    ticket = new_ticket(run.fake)
    body, headers = signed(trigger_body(ticket, visitor))
    started = time.monotonic()
    assert run.post("zendesk", body, headers).status_code == 202
    text = one_note(lambda: private_comments(run.fake, ticket), "html_body", started)
    assert_journey(text, f"zendesk:ticket:{ticket}")
    assert_replay_is_duplicate(run, "zendesk", body, headers)
    # The event webhook for the same ticket is the same event: still one comment.
    assert_replay_is_duplicate(run, "zendesk", *signed(ticket_created(ticket)))
    # The event webhook alone: the ticket's field and requester are looked up.
    other = new_ticket(
        run.fake,
        requester={"id": 31, "email": "grace@example.com"},
        fields={VISITOR_FIELD_ID: visitor},
    )
    started = time.monotonic()
    assert run.post("zendesk", *signed(ticket_created(other, requester_id=31))).status_code == 202
    assert_journey(
        one_note(lambda: private_comments(run.fake, other), "html_body", started),
        f"zendesk:ticket:{other}",
    )
    status = run.svc.status(f"zendesk:ticket:{other}") or {}
    assert status["visitorId"] == visitor
    assert any(step["step"] == "looked_up" for step in status["steps"]), status["steps"]
    assert len(private_comments(run.fake, ticket)) == 1


def test_intercom_conversation(run: Run) -> None:
    visitor = run.fake.add_visitor(full_profile())
    conversation, contact = run.intercom.add_conversation(
        contact_attributes={"datafast_visitor_id": visitor}
    )
    payload = run.intercom.notification(conversation, contact)  # attribute only on the contact
    body, headers = FakeIntercom.signed(payload)
    started = time.monotonic()
    assert run.post("intercom", body, headers).status_code == 202
    text = one_note(lambda: run.intercom.notes(conversation), "body", started)
    assert_journey(text, f"intercom:{payload['id']}")
    assert_replay_is_duplicate(run, "intercom", body, headers)
    assert len(run.intercom.notes(conversation)) == 1


def test_helpscout_conversation_and_chat(run: Run) -> None:
    visitor = run.fake.add_visitor(full_profile())
    customer = run.helpscout.add_customer()
    conversation = run.helpscout.conversation(customer, {"datafast_visitor_id": visitor})
    body, headers = FakeHelpScout.signed(conversation, "convo.created")
    started = time.monotonic()
    assert run.post("helpscout", body, headers).status_code == 202
    cid = str(conversation["id"])
    text = one_note(lambda: run.helpscout.notes(cid), "body", started)
    assert_journey(text, f"helpscout:conversation:{cid}")
    assert_replay_is_duplicate(run, "helpscout", body, headers)

    chat = run.helpscout.chat(customer, {"datafast_visitor_id": visitor})
    body, headers = FakeHelpScout.signed(chat, "beacon.chat.created")
    started = time.monotonic()
    assert run.post("helpscout", body, headers).status_code == 202
    chat_text = one_note(lambda: run.helpscout.chat_notes(chat["id"]), "body", started)
    assert_journey(chat_text, f"helpscout:chat:{chat['id']}")
    assert_replay_is_duplicate(run, "helpscout", body, headers)
    assert len(run.helpscout.notes(cid)) == 1


def test_check_proves_each_systems_credentials_read_only(run: Run) -> None:
    before = len(run.fake.requests)
    result = run_cli(run.svc.env, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    for line in (
        "ok    sink zendesk",
        "ok    sink intercom: Intercom answered",
        "ok    sink helpscout: Help Scout answered",
    ):
        assert line in result.stdout, result.stdout
    calls = run.fake.requests[before:]
    # Only reads (and Help Scout's token grant, if no worker had a token yet).
    assert all(r.method == "GET" or r.route == "/v2/oauth2/token" for r in calls), calls


# 3. Bad signatures -----------------------------------------------------------------------------


def test_bad_signatures_are_401_and_nothing_is_queued(run: Run) -> None:
    ticket = new_ticket(run.fake)
    conversation, contact = run.intercom.add_conversation()
    hs_conversation = run.helpscout.conversation(run.helpscout.add_customer())
    notification = run.intercom.notification(conversation, contact)
    attempts = {
        "zendesk": signed(trigger_body(ticket, str(uuid.uuid4())), secret="wrong"),
        "intercom": FakeIntercom.signed(notification, "wrong"),
        "helpscout": FakeHelpScout.signed(hs_conversation, "convo.created", "wrong"),
    }
    queued = run.svc.queue_length()
    for system, (body, headers) in attempts.items():
        response = run.post(system, body, headers)
        assert response.status_code == 401, (system, response.text)
    time.sleep(1.0)
    assert run.svc.queue_length() <= queued
    for event_id in (
        f"zendesk:ticket:{ticket}",
        f"intercom:{notification['id']}",
        f"helpscout:conversation:{hs_conversation['id']}",
    ):
        assert run.svc.status(event_id) is None
    assert not private_comments(run.fake, ticket)
    assert not run.intercom.notes(conversation)
    assert not run.helpscout.notes(str(hs_conversation["id"]))


# 4. No visitor field: the short note -----------------------------------------------------------


def test_no_visitor_field_gets_the_short_note(run: Run) -> None:
    ticket = new_ticket(run.fake)
    conversation, contact = run.intercom.add_conversation()
    hs_conversation = run.helpscout.conversation(run.helpscout.add_customer())
    hs_id = str(hs_conversation["id"])
    assert run.post("zendesk", *signed(trigger_body(ticket, ""))).status_code == 202
    assert (
        run.post(
            "intercom", *FakeIntercom.signed(run.intercom.notification(conversation, contact))
        ).status_code
        == 202
    )
    assert (
        run.post("helpscout", *FakeHelpScout.signed(hs_conversation, "convo.created")).status_code
        == 202
    )
    started = time.monotonic()
    notes = {
        "zendesk": (
            one_note(lambda: private_comments(run.fake, ticket), "html_body", started),
            "zE('messenger:set', 'conversationFields'",
        ),
        "intercom": (
            one_note(lambda: run.intercom.notes(conversation), "body", started),
            "Intercom('update'",
        ),
        "helpscout": (
            one_note(lambda: run.helpscout.notes(hs_id), "body", started),
            "Beacon('identify'",
        ),
    }
    for system, (text, how) in notes.items():
        assert "No visitor journey found" in text, (system, text)
        assert how in text, (system, text)
        assert "hn-launch-week" not in text


# 5. kill -9 between the note call and its record -------------------------------------------------


def test_kill9_between_the_note_call_and_its_record_leaves_one_note_each(run: Run) -> None:
    fake, svc = run.fake, run.svc
    visitor = fake.add_visitor(full_profile())
    ticket = new_ticket(fake)
    conversation, contact = run.intercom.add_conversation()
    hs_conversation = run.helpscout.conversation(run.helpscout.add_customer())
    hs_id = str(hs_conversation["id"])
    held = {
        "zendesk": ("PUT", f"/zendesk/api/v2/tickets/{ticket}.json"),
        "intercom": ("POST", f"/intercom/conversations/{conversation}/reply"),
        "helpscout": ("POST", f"/helpscout/v2/conversations/{hs_id}/notes"),
    }
    for system, (method, path) in held.items():
        fake.delay(system, 4.0, method=method, match=path)
    notification = run.intercom.notification(
        conversation, contact, attributes={"datafast_visitor_id": visitor}
    )
    hs_conversation["customFields"] = [{"id": 1, "name": "datafast_visitor_id", "value": visitor}]
    events = {
        "zendesk": (f"zendesk:ticket:{ticket}", signed(trigger_body(ticket, visitor))),
        "intercom": (f"intercom:{notification['id']}", FakeIntercom.signed(notification)),
        "helpscout": (
            f"helpscout:conversation:{hs_id}",
            FakeHelpScout.signed(hs_conversation, "convo.created"),
        ),
    }
    for system, (_, (body, headers)) in events.items():
        assert run.post(system, body, headers).status_code == 202

    def in_flight() -> list[Any]:
        found = [h for h in fake.in_flight() if (h.method, h.path) in held.values()]
        return found if len(found) == len(held) else []

    calls = wait_for(in_flight, 20, message="the three note calls held by the fakes")
    alive = [p.pid for p in svc.alive_workers()]
    owners = {pid_of_connection(h.client_port, fake.port, alive) for h in calls}
    assert None not in owners, f"no worker owns the held connections {calls}"
    for pid in owners:
        assert pid is not None
        svc.kill_worker(pid)
    states = {s: (svc.status(e) or {})["sinks"][s]["state"] for s, (e, _) in events.items()}
    assert states == dict.fromkeys(held, "posting")  # killed between the call and the record
    if not svc.alive_workers():
        svc.spawn_worker()
    for system, (event_id, _) in events.items():
        status = svc.wait_for_state(event_id, {"delivered"}, timeout=90)
        assert status["sinks"][system]["reason"] == "found in the sink after a restart", status
    time.sleep(1.0)
    assert len(private_comments(fake, ticket)) == 1
    assert len(run.intercom.notes(conversation)) == 1
    assert len(run.helpscout.notes(hs_id)) == 1
    for system, (method, path) in held.items():
        posts = [r for r in fake.requests if r.method == method and r.path == path]
        assert len(posts) == 1, (system, len(posts))  # the survivor looked instead of posting


def test_no_secret_in_the_logs(run: Run) -> None:
    logs = run.svc.logs()
    secrets = [ZENDESK_WEBHOOK_SECRET, *run.helpscout.tokens]
    secrets += [
        v
        for k, v in {**run.intercom.env(), **run.helpscout.env()}.items()
        if k.endswith(("TOKEN", "SECRET"))
    ]
    for secret in secrets:
        assert secret not in logs


@pytest.fixture(autouse=True)
def _no_leftover_rules(run: Run) -> Iterator[None]:
    yield
    run.fake.retire(*run.fake.rules)
