"""End to end, as issue 2's "Done when": the web app under uvicorn and two Celery worker
processes, started as the README says, with DataFast, HubSpot, Zendesk and Slack played by one
fake server, on the real Redis.

The service is started once for the module; tests keep out of each other's way by using their
own event ids, visitor ids, ticket ids and emails, and script the fake per visitor or ticket.
"""

from __future__ import annotations

import html
import itertools
import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fakes import (
    DATAFAST_KEY,
    HUBSPOT_TOKEN,
    ZENDESK_TOKEN,
    FakeUpstream,
    full_profile,
)
from harness import (
    REDIS_URL,
    TEST_SECRET,
    Service,
    cleanup_redis,
    new_prefix,
    new_queue,
    wait_for,
)

from worker.integrations.hubspot import HUBSPOT_PROPERTIES

pytestmark = pytest.mark.e2e

MAX_RETRIES = 2
_tickets = itertools.count(random.randint(10_000, 90_000) * 10)


# Fixtures (one service for the module) -----------------------------------------------------


@pytest.fixture(scope="module")
def module_redis(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        # As if `visitor-enrich hubspot-setup` had been run against this portal.
        server.define_contact_properties([str(p["name"]) for p in HUBSPOT_PROPERTIES])
        yield server


@pytest.fixture(scope="module")
def svc(
    fake: FakeUpstream, module_redis: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    prefix, queue = new_prefix(), new_queue()
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "WEBHOOK_SECRET": TEST_SECRET,
        **fake.env(),
        "MAX_RETRIES": str(MAX_RETRIES),
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "1",
        "HTTP_CONNECT_TIMEOUT": "1",
        "HTTP_READ_TIMEOUT": "1.5",
        "LOG_LEVEL": "INFO",
    }
    log_dir: Path = tmp_path_factory.mktemp("service-logs")
    service = Service(env, log_dir, workers=2, redis_client=module_redis)
    try:
        with service:
            yield service
    finally:
        cleanup_redis(module_redis, prefix, queue)


# Helpers ----------------------------------------------------------------------------------


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex[:16]}"


def new_ticket(fake: FakeUpstream, description: str | None = None) -> str:
    ticket_id = str(next(_tickets))
    fake.add_ticket(ticket_id, description)
    return ticket_id


def new_email() -> str:
    return f"lead-{uuid.uuid4().hex[:10]}@example.com"


def post(svc: Service, payload: dict[str, Any], event_id: str | None = None) -> str:
    event_id = event_id or new_event_id()
    response = svc.send_event(payload, event_id=event_id)
    assert response.status_code == 202, response.text
    assert response.json()["data"] == {"eventId": event_id, "state": "queued"}
    return event_id


def text_of(comment: dict[str, Any]) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", comment["html_body"]))


def steps(status: dict[str, Any], name: str | None = None) -> list[dict[str, Any]]:
    return [s for s in status["steps"] if name is None or s["step"] == name]


def datafast_calls(fake: FakeUpstream, visitor_id: str) -> list[Any]:
    return fake.requests_to("datafast", contains=f"/visitors/{visitor_id}")


def zendesk_puts(fake: FakeUpstream, ticket_id: str) -> list[Any]:
    return fake.requests_to("zendesk", method="PUT", contains=f"/tickets/{ticket_id}.json")


def note_posts(fake: FakeUpstream, event_id: str) -> list[Any]:
    return [
        r
        for r in fake.requests_to("hubspot", method="POST", route="/crm/v3/objects/notes")
        if r.route == "/crm/v3/objects/notes" and event_id in r.text
    ]


# a. support ticket --------------------------------------------------------------------------


def test_support_ticket_gets_one_private_comment_within_5s(
    svc: Service, fake: FakeUpstream
) -> None:
    visitor = fake.add_visitor(
        full_profile(
            referrer="https://news.ycombinator.com/item-launch",
            utm_source="hn-launch-week",
            visit_count=17,
        )
    )
    ticket_id = new_ticket(fake, "I cannot find the export button")
    started = time.monotonic()
    event_id = post(
        svc,
        {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": int(ticket_id)},
    )

    ours = wait_for(
        lambda: [c for c in fake.zendesk_comments(ticket_id) if not c["public"]],
        timeout=10,
        message="the private Zendesk comment",
    )
    puts = zendesk_puts(fake, ticket_id)
    assert len(puts) == 1
    assert puts[0].mono - started < 5, "the comment took longer than 5 s"
    assert puts[0].json["ticket"]["comment"]["public"] is False

    status = svc.wait_for_state(event_id, {"delivered"})
    comments = fake.zendesk_comments(ticket_id)
    assert len(comments) == 2  # the requester's description and ours
    assert len(ours) == 1
    text = text_of(ours[0])
    assert "https://news.ycombinator.com/item-launch" in text
    assert "hn-launch-week" in text
    assert re.search(r"visits?\W*17\b|\b17\W*visits?", text, re.I), text
    assert "https://example.com/pricing" in text
    assert "https://example.com/page-10" in text  # a page from the history, not only the last
    assert f"visitor-enrich:{event_id}" in text

    assert status["eventId"] == event_id
    assert status["visitorId"] == visitor
    assert status["source"]["journeyFound"] is True
    assert status["sinks"]["zendesk"]["state"] == "delivered"
    assert status["sinks"]["zendesk"]["attempts"] == 1
    assert status["sinks"]["hubspot"]["state"] == "skipped"  # no email on the event
    assert status["sinks"]["slack"]["state"] == "skipped"  # not a signup
    names = [s["step"] for s in status["steps"]]
    for step in ("accepted", "fetching", "journey_found", "sink_delivered", "delivered"):
        assert step in names, names
    assert names.index("accepted") < names.index("fetching") < names.index("journey_found")
    assert len(datafast_calls(fake, visitor)) == 1
    assert not fake.requests_to("hubspot", contains=event_id)
    assert not fake.slack_messages(contains=event_id)


# b. signup -> HubSpot note (+ Slack for hot leads) -----------------------------------------


def _assert_note_on(fake: FakeUpstream, event_id: str, contact_id: str) -> dict[str, Any]:
    notes = fake.hubspot_notes(contains=f"visitor-enrich:{event_id}")
    assert len(notes) == 1, notes
    note = notes[0]
    assert note["properties"]["hs_timestamp"]
    assert note["associations"] == [
        {
            "to": {"id": contact_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}],
        }
    ]
    assert len(note_posts(fake, event_id)) == 1
    return note


def test_hot_signup_notes_the_existing_contact_and_alerts_slack(
    svc: Service, fake: FakeUpstream
) -> None:
    visitor = fake.add_visitor(full_profile(score=85, utm_source="google-ads-q4"))
    email = new_email()
    contact_id = fake.add_contact(email, firstname="Grace")
    event_id = post(
        svc,
        {
            "type": "signup",
            "datafast_visitor_id": visitor,
            "email": email,
            "name": "Grace Hopper",
        },
    )
    status = svc.wait_for_state(event_id, {"delivered"})

    note = _assert_note_on(fake, event_id, contact_id)
    assert "google-ads-q4" in note["properties"]["hs_note_body"]
    contact = fake.hubspot_contact(email)
    assert contact is not None and contact["id"] == contact_id  # found, not created again
    assert contact["properties"]["ve_visitor_id"] == visitor
    assert contact["properties"]["ve_utm_source"] == "google-ads-q4"
    creates = [
        r
        for r in fake.requests_to("hubspot", method="POST")
        if r.route == "/crm/v3/objects/contacts" and email in r.text
    ]
    assert creates == []

    messages = fake.slack_messages(contains=event_id)
    assert len(messages) == 1
    assert "85" in json.dumps(messages[0])
    assert status["sinks"]["hubspot"]["state"] == "delivered"
    assert status["sinks"]["hubspot"]["external_id"] == note["id"]
    assert status["sinks"]["slack"]["state"] == "delivered"
    assert status["sinks"]["zendesk"]["state"] == "skipped"  # no ticket


def test_signup_creates_the_contact_when_absent(svc: Service, fake: FakeUpstream) -> None:
    visitor = fake.add_visitor(full_profile(score=91))
    email = new_email()
    assert fake.hubspot_contact(email) is None
    event_id = post(
        svc,
        {"type": "signup", "visitorId": visitor, "email": email, "name": "Ada Lovelace"},
    )
    svc.wait_for_state(event_id, {"delivered"})

    contact = fake.hubspot_contact(email)
    assert contact is not None
    assert contact["properties"]["firstname"] == "Ada"
    assert contact["properties"]["lastname"] == "Lovelace"
    assert contact["properties"]["ve_visitor_id"] == visitor
    _assert_note_on(fake, event_id, contact["id"])
    assert len(fake.slack_messages(contains=event_id)) == 1


def test_alert_threshold(svc: Service, fake: FakeUpstream) -> None:
    """LEAD_ALERT_MIN_SCORE defaults to 70: a score of 70 alerts, 69 does not."""
    at_threshold = fake.add_visitor(full_profile(score=70))
    below = fake.add_visitor(full_profile(score=69))
    ids = {}
    for name, visitor in (("at", at_threshold), ("below", below)):
        ids[name] = post(
            svc, {"type": "signup", "datafast_visitor_id": visitor, "email": new_email()}
        )
    statuses = {name: svc.wait_for_state(eid, {"delivered"}) for name, eid in ids.items()}

    assert len(fake.slack_messages(contains=ids["at"])) == 1
    assert statuses["at"]["sinks"]["slack"]["state"] == "delivered"
    assert fake.slack_messages(contains=ids["below"]) == []
    slack = statuses["below"]["sinks"]["slack"]
    assert slack["state"] == "skipped"
    assert "below" in slack["reason"] and "69" in slack["reason"]
    for event_id in ids.values():  # every signup still gets its note
        assert len(fake.hubspot_notes(contains=f"visitor-enrich:{event_id}")) == 1


# c. 429 with Retry-After ------------------------------------------------------------------


def test_datafast_429_retry_after_is_obeyed(svc: Service, fake: FakeUpstream) -> None:
    visitor = fake.add_visitor(full_profile())
    fake.fail("datafast", 429, times=2, match=f"/visitors/{visitor}", headers={"Retry-After": "2"})
    ticket_id = new_ticket(fake)
    event_id = post(
        svc, {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket_id}
    )
    status = svc.wait_for_state(event_id, {"delivered"}, timeout=25)

    calls = datafast_calls(fake, visitor)
    assert [c.status for c in calls] == [429, 429, 200]
    for earlier, later in itertools.pairwise(calls):
        gap = later.mono - earlier.mono
        assert gap >= 2.0, f"retried {gap:.3f}s after a 429 with Retry-After: 2"
    assert len(fake.zendesk_comments(ticket_id)) == 1
    assert len(zendesk_puts(fake, ticket_id)) == 1
    assert len(steps(status, "source_retry")) == 2


# d. DataFast 404 ---------------------------------------------------------------------------


def test_unknown_visitor_still_gets_an_honest_note(svc: Service, fake: FakeUpstream) -> None:
    visitor = str(uuid.uuid4())  # DataFast has no pageviews for it
    ticket_id = new_ticket(fake)
    email = new_email()
    ticket_event = post(
        svc, {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket_id}
    )
    signup_event = post(svc, {"type": "signup", "datafast_visitor_id": visitor, "email": email})
    ticket_status = svc.wait_for_state(ticket_event, {"delivered"})
    signup_status = svc.wait_for_state(signup_event, {"delivered"})

    comments = fake.zendesk_comments(ticket_id)
    assert len(comments) == 1
    assert comments[0]["public"] is False
    assert re.search(r"no (visitor )?journey", text_of(comments[0]), re.I), comments[0]
    assert fake.slack_messages(contains=visitor) == []
    assert fake.slack_messages(contains=signup_event) == []
    assert signup_status["sinks"]["slack"]["state"] == "skipped"
    assert "journey" in signup_status["sinks"]["slack"]["reason"]
    # No retries: at most one call per event. Usually one in all: the second event shares the
    # first one's not-found answer, which the profile cache keeps a few seconds.
    assert 1 <= len(datafast_calls(fake, visitor)) <= 2
    assert all(c.status == 404 for c in datafast_calls(fake, visitor))

    for status in (ticket_status, signup_status):
        assert status["source"]["journeyFound"] is False
        assert status["source"]["attempts"] == 0
        not_found = steps(status, "journey_not_found")
        assert len(not_found) == 1
        assert "404" in not_found[0]["detail"] and "DataFast" in not_found[0]["detail"]


# e. DataFast 401 ---------------------------------------------------------------------------


def test_datafast_401_fails_without_retry_or_sinks(
    svc: Service, fake: FakeUpstream, module_redis: redis.Redis
) -> None:
    visitor = fake.add_visitor(full_profile(score=95))
    fake.fail("datafast", 401, times=None, match=f"/visitors/{visitor}")
    ticket_id = new_ticket(fake)
    email = new_email()
    event_id = post(
        svc,
        {
            "type": "support_ticket",
            "datafast_visitor_id": visitor,
            "ticket_id": ticket_id,
            "email": email,
        },
    )
    status = svc.wait_for_state(event_id)
    assert status["state"] == "failed"
    assert "datafast" in status["reason"].lower() and "401" in status["reason"]
    assert len(datafast_calls(fake, visitor)) == 1
    assert zendesk_puts(fake, ticket_id) == []
    assert fake.requests_to("hubspot", contains=email) == []
    assert fake.slack_messages(contains=event_id) == []
    assert status["sinks"] == {}
    assert module_redis.hexists(f"{svc.prefix}dead", event_id)


# f. DataFast 200 that is not the documented JSON ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        ("<html><body>Under maintenance</body></html>", "text/html", "json"),
        (json.dumps({"visitorId": "x", "identity": {}}), "application/json", "envelope"),
    ],
)
def test_datafast_200_garbage_fails_once(
    svc: Service, fake: FakeUpstream, body: str, content_type: str, words: str
) -> None:
    visitor = fake.add_visitor(full_profile())
    fake.fail(
        "datafast",
        200,
        times=None,
        match=f"/visitors/{visitor}",
        body=body,
        content_type=content_type,
    )
    ticket_id = new_ticket(fake)
    event_id = post(
        svc, {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket_id}
    )
    status = svc.wait_for_state(event_id)
    assert status["state"] == "failed"
    assert words in status["reason"].lower(), status["reason"]
    assert "datafast" in status["reason"].lower()
    assert len(datafast_calls(fake, visitor)) == 1
    assert zendesk_puts(fake, ticket_id) == []


# g. DataFast 500 forever ------------------------------------------------------------------


def test_datafast_500_exhausts_retries_and_goes_dead(
    svc: Service, fake: FakeUpstream, module_redis: redis.Redis
) -> None:
    visitor = fake.add_visitor(full_profile())
    fake.fail("datafast", 500, times=None, match=f"/visitors/{visitor}")
    ticket_id = new_ticket(fake)
    event_id = post(
        svc, {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket_id}
    )
    status = svc.wait_for_state(event_id)
    assert status["state"] == "dead"
    assert "500" in status["reason"]
    assert len(datafast_calls(fake, visitor)) == MAX_RETRIES + 1 == 3
    assert status["source"]["attempts"] == 3
    assert len(steps(status, "source_retry")) == 2
    assert zendesk_puts(fake, ticket_id) == []
    assert module_redis.hexists(f"{svc.prefix}dead", event_id)


# h. one sink fails once --------------------------------------------------------------------


def test_zendesk_500_once_is_retried_without_reposting_hubspot(
    svc: Service, fake: FakeUpstream
) -> None:
    visitor = fake.add_visitor(full_profile())
    ticket_id = new_ticket(fake)
    email = new_email()
    fake.fail("zendesk", 500, times=1, method="PUT", match=f"/tickets/{ticket_id}.json")
    event_id = post(
        svc,
        {
            "type": "support_ticket",
            "datafast_visitor_id": visitor,
            "ticket_id": ticket_id,
            "email": email,
        },
    )
    status = svc.wait_for_state(event_id, {"delivered"})

    assert [r.status for r in zendesk_puts(fake, ticket_id)] == [500, 200]
    assert len(fake.zendesk_comments(ticket_id)) == 1
    assert len(note_posts(fake, event_id)) == 1
    assert len(fake.hubspot_notes(contains=f"visitor-enrich:{event_id}")) == 1
    sinks = status["sinks"]
    assert sinks["zendesk"]["state"] == "delivered" and sinks["zendesk"]["attempts"] == 2
    assert sinks["hubspot"]["state"] == "delivered" and sinks["hubspot"]["attempts"] == 1
    retries = steps(status, "sink_retry")
    assert [s["sink"] for s in retries] == ["zendesk"]
    assert "500" in retries[0]["detail"]
    assert len(datafast_calls(fake, visitor)) == 1  # the journey is not fetched again


# Exactly once when the answer is lost ----------------------------------------------------------


def test_lost_answers_do_not_post_twice(svc: Service, fake: FakeUpstream) -> None:
    """Zendesk and HubSpot take the post but answer after the read timeout (1.5 s): the next
    attempt finds the event's marker in the sink and does not post again."""
    visitor = fake.add_visitor(full_profile())
    ticket_id = new_ticket(fake)
    email = new_email()
    fake.delay("zendesk", 2.5, method="PUT", match=f"/tickets/{ticket_id}.json")
    event_id = new_event_id()
    fake.delay("hubspot", 2.5, method="POST", match="/hubspot/crm/v3/objects/notes\n{")
    post(
        svc,
        {
            "type": "support_ticket",
            "datafast_visitor_id": visitor,
            "ticket_id": ticket_id,
            "email": email,
        },
        event_id,
    )
    status = svc.wait_for_state(event_id, {"delivered"}, timeout=25)

    assert len(zendesk_puts(fake, ticket_id)) == 1
    assert len(fake.zendesk_comments(ticket_id)) == 1
    assert fake.requests_to("zendesk", method="GET", contains=f"/tickets/{ticket_id}/comments")
    assert len(note_posts(fake, event_id)) == 1
    assert len(fake.hubspot_notes(contains=f"visitor-enrich:{event_id}")) == 1
    assert {s["sink"] for s in steps(status, "sink_retry")} == {"zendesk", "hubspot"}


# i. the same event twice -------------------------------------------------------------------


def test_same_event_twice_comments_once(svc: Service, fake: FakeUpstream) -> None:
    visitor = fake.add_visitor(full_profile())
    ticket_id = new_ticket(fake)
    payload = {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket_id}
    event_id = post(svc, payload)
    again = svc.send_event(payload, event_id=event_id)
    assert again.status_code == 200
    assert again.json()["data"] == {"eventId": event_id, "state": "duplicate"}
    svc.wait_for_state(event_id, {"delivered"})
    # Sent again after delivery: still the same event.
    assert svc.send_event(payload, event_id=event_id).json()["data"]["state"] == "duplicate"
    assert len(fake.zendesk_comments(ticket_id)) == 1
    assert len(datafast_calls(fake, visitor)) == 1
    assert svc.queue_length() == 0


# Bad input through the real server ----------------------------------------------------------


def test_bad_input_through_uvicorn(svc: Service, fake: FakeUpstream) -> None:
    """The codes of issue 2 through the real uvicorn process (TestClient covers them all)."""
    visitor = fake.add_visitor(full_profile())
    good = {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": "1"}
    assert svc.http is not None
    cases = []
    eid = new_event_id()
    cases.append((eid, svc.send_event(None, event_id=eid, raw_body=b"{nope"), 400))
    eid = new_event_id()
    cases.append((eid, svc.send_event(good, event_id=eid, secret=None), 401))
    eid = new_event_id()
    big = {**good, "name": "x" * 70_000}
    cases.append((eid, svc.send_event(big, event_id=eid), 413))
    eid = new_event_id()
    chunked = svc.http.post(
        "/v1/events",
        content=iter([b'{"type": "signup", "name": "', *([b"y" * 8192] * 9), b'"}']),
        headers={"webhook-id": eid},
    )
    cases.append((eid, chunked, 413))
    eid = new_event_id()
    cases.append((eid, svc.send_event({"type": "signup"}, event_id=eid), 422))
    eid = new_event_id()
    bad_id = {**good, "datafast_visitor_id": "123"}
    cases.append((eid, svc.send_event(bad_id, event_id=eid), 400))
    for event_id, response, code in cases:
        assert response.status_code == code, (code, response.text)
        assert response.json()["error"]["code"] == code
        assert svc.status(event_id) is None  # nothing recorded, nothing queued
    assert fake.requests_to("datafast", contains=visitor) == []


def test_redis_down_answers_503_quickly(fake: FakeUpstream, tmp_path: Path) -> None:
    env = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "REDIS_KEY_PREFIX": new_prefix(),
        "CELERY_QUEUE": new_queue(),
        "WEBHOOK_SECRET": TEST_SECRET,
        **fake.env(),
    }
    with Service(env, tmp_path, workers=0) as down:
        assert down.http is not None
        started = time.monotonic()
        ready = down.http.get("/readyz")
        assert ready.status_code == 503
        assert time.monotonic() - started < 2
        started = time.monotonic()
        response = down.send_event(
            {"type": "signup", "datafast_visitor_id": str(uuid.uuid4())}, event_id=new_event_id()
        )
        assert response.status_code == 503
        assert time.monotonic() - started < 2
        body = response.json()
        assert body["status"] == "error" and body["error"]["code"] == 503
        assert body["error"]["message"]


# Logs ------------------------------------------------------------------------------------


def test_logs_show_the_work_and_hide_secrets(svc: Service) -> None:
    logs = svc.logs()
    assert "delivered" in logs
    assert "Traceback" not in logs, "a task crashed"
    for secret in (DATAFAST_KEY, HUBSPOT_TOKEN, ZENDESK_TOKEN, TEST_SECRET):
        assert secret not in logs
    assert "@example.com" not in logs  # email addresses are masked


# A sink answering 200 with a body that is not an object -----------------------------------------


def test_sink_200_with_a_non_object_body_ends_the_event(svc: Service, fake: FakeUpstream) -> None:
    visitor = fake.add_visitor(full_profile())
    ticket_id = new_ticket(fake)
    fake.fail(
        "zendesk",
        200,
        times=None,
        method="PUT",
        match=f"/tickets/{ticket_id}.json",
        body="[]",
        content_type="application/json",
    )
    event_id = post(
        svc, {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": ticket_id}
    )
    status = svc.wait_for_state(event_id, timeout=6)
    assert status["sinks"]["zendesk"]["state"] in ("delivered", "failed")
