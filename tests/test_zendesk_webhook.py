"""Zendesk inbound: the trigger and ``ticket.created`` webhooks (signature, mapping, dedupe per
ticket), the ticket lookup (custom field and requester), and the comment sink's marker check,
against the fake Zendesk API (``tests/fakes.py``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fakes import full_profile
from fastapi.testclient import TestClient
from harness import bearer, queue_length
from helpdesk_fakes import HelpdeskFake, helpdesk_runtime, helpdesk_settings, helpdesk_web
from zendesk_webhooks import (
    VISITOR_FIELD_ID,
    ZENDESK_WEBHOOK_SECRET,
    signed,
    ticket_created,
    trigger_body,
)

from worker.errors import RateLimited
from worker.events import Event
from worker.inbound import Ignored, WebhookRequest
from worker.integrations.zendesk import ZendeskWebhook
from worker.runtime import Runtime
from worker.tasks import fetch_context

VISITOR = "3f1f9a52-8c2e-4d4b-9a11-2f6c2b7d0e41"
SETTINGS = {
    "zendesk_webhook_secret": ZENDESK_WEBHOOK_SECRET,
    "zendesk_visitor_field": VISITOR_FIELD_ID,
}


@pytest.fixture
def fake() -> Iterator[HelpdeskFake]:
    with HelpdeskFake() as server:
        yield server


@pytest.fixture
def web(fake: HelpdeskFake, isolation: tuple[str, str]) -> Iterator[TestClient]:
    rotating = {**SETTINGS, "zendesk_webhook_secret": f"old-secret,{ZENDESK_WEBHOOK_SECRET}"}
    with helpdesk_web(fake, isolation, **rotating) as client:
        yield client


@pytest.fixture
def runtime(fake: HelpdeskFake, key_prefix: str) -> Iterator[Runtime]:
    with helpdesk_runtime(fake, key_prefix, **SETTINGS) as rt:
        yield rt


def post(client: TestClient, payload: Any, **sign: Any) -> Any:
    body, headers = signed(payload, **sign)
    return client.post("/v1/webhooks/zendesk", content=body, headers=headers)


def new_ticket() -> str:
    return str(uuid.uuid4().int % 10**9)


# Signature ---------------------------------------------------------------------------------


def test_signed_trigger_is_queued_and_every_later_webhook_of_the_ticket_is_a_duplicate(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    ticket = new_ticket()
    first = post(web, trigger_body(ticket, VISITOR))
    assert first.status_code == 202, first.text
    assert first.json()["data"] == {"eventId": f"zendesk:ticket:{ticket}", "state": "queued"}
    # Zendesk's retry, and the event webhook for the same ticket: one note per ticket.
    assert post(web, trigger_body(ticket, VISITOR)).json()["data"]["state"] == "duplicate"
    again = post(web, ticket_created(ticket))
    assert again.status_code == 200 and again.json()["data"]["state"] == "duplicate"
    assert queue_length(redis_client, isolation[1]) == 1
    status = web.get(f"/v1/events/zendesk:ticket:{ticket}", headers=bearer()).json()["data"]
    assert status["visitorId"] == VISITOR and status["type"] == "support_ticket"


@pytest.mark.parametrize(
    "sign",
    [
        {"secret": "not-the-secret"},
        {"timestamp": (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"timestamp": "yesterday"},
    ],
    ids=["wrong-secret", "stale-timestamp", "malformed-timestamp"],
)
def test_bad_signature_is_401_and_nothing_queued(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis, sign: dict[str, str]
) -> None:
    response = post(web, trigger_body(new_ticket(), VISITOR), **sign)
    assert response.status_code == 401
    assert "Zendesk" in response.json()["error"]["message"]
    assert queue_length(redis_client, isolation[1]) == 0


def test_tampered_body_and_missing_headers_are_401(web: TestClient) -> None:
    body, headers = signed(trigger_body(new_ticket(), VISITOR))
    tampered = body.replace(b"ada@", b"eve@")
    assert web.post("/v1/webhooks/zendesk", content=tampered, headers=headers).status_code == 401
    assert web.post("/v1/webhooks/zendesk", content=body).status_code == 401


# Mapping -----------------------------------------------------------------------------------


def _adapter(fake: HelpdeskFake, **overrides: Any) -> ZendeskWebhook:
    values = {"zendesk_webhook_secret": ZENDESK_WEBHOOK_SECRET, **overrides}
    return ZendeskWebhook(helpdesk_settings(fake, "unused:", **values))


def _map(adapter: ZendeskWebhook, payload: Any) -> Event:
    request = WebhookRequest(method="POST", url="/v1/webhooks/zendesk", body=b"", headers={})
    (event,) = adapter.map_events(request, payload)
    return event


def test_event_webhook_asks_the_ticket(fake: HelpdeskFake) -> None:
    event = _map(_adapter(fake), ticket_created("4242", requester_id=77))
    assert event.id == "zendesk:ticket:4242" and event.ticket_id == "4242"
    assert event.lookup == "zendesk" and event.inbound == "zendesk"
    assert event.external["requester_id"] == "77"


def test_trigger_mapping(fake: HelpdeskFake) -> None:
    adapter = _adapter(fake, zendesk_visitor_field=VISITOR_FIELD_ID)
    event = _map(adapter, trigger_body("77", VISITOR))
    assert (event.visitor_id, event.email, event.name) == (
        VISITOR,
        "ada@example.com",
        "Ada Lovelace",
    )
    assert event.lookup is None
    # The field empty (or its placeholder left unrendered): the ticket is asked.
    assert _map(adapter, trigger_body("78", "")).lookup == "zendesk"
    assert _map(adapter, trigger_body("79", "{{ticket.ticket_field_1}}")).lookup == "zendesk"
    # Nested as Zendesk's own JSON would be.
    nested = {"ticket": {"id": 80, "requester": {"email": "b@example.com"}}}
    assert _map(adapter, nested).email == "b@example.com"
    # No field configured and none sent: the short note says why.
    bare = _map(_adapter(fake), trigger_body("81", ""))
    assert bare.lookup is None and "ZENDESK_VISITOR_FIELD" in (bare.missing_reason or "")


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"email": "a@example.com"}, 422, "ticket_id"),
        ({"ticket_id": "{{ticket.id}}"}, 422, "ticket_id"),
        ({"ticket_id": "abc"}, 422, "ticket_id"),
        ({"ticket_id": "5", "datafast_visitor_id": "not-a-uuid"}, 400, "datafast_visitor_id"),
        ({"type": "zen:event-type:ticket.created", "detail": {}}, 422, "detail.id"),
        ([1, 2], 422, "body"),
    ],
)
def test_unmappable_payloads_name_the_field(
    web: TestClient, payload: Any, status: int, field: str
) -> None:
    response = post(web, payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"].startswith(f"{field}:")


def test_other_event_types_are_ignored(fake: HelpdeskFake, web: TestClient) -> None:
    with pytest.raises(Ignored):
        _map(
            _adapter(fake), {**ticket_created("1"), "type": "zen:event-type:ticket.status_changed"}
        )
    response = post(web, {**ticket_created("2"), "type": "zen:event-type:ticket.tags_changed"})
    assert response.status_code == 200 and response.json()["data"]["state"] == "ignored"


# Lookup and sink ---------------------------------------------------------------------------


def test_lookup_reads_the_field_and_requester(fake: HelpdeskFake, runtime: Runtime) -> None:
    visitor = fake.add_visitor(full_profile())
    fake.add_ticket(
        "5001",
        requester={"id": 91, "email": "grace@example.com", "name": "Grace"},
        fields={VISITOR_FIELD_ID: visitor},
    )
    event = Event(
        id="zendesk:ticket:5001",
        type="support_ticket",
        ticket_id="5001",
        inbound="zendesk",
        lookup="zendesk",
    )
    assert runtime.store.accept(event)
    ctx = fetch_context(runtime, event)
    assert ctx.found and ctx.visitor_id == visitor
    stored = runtime.store.load_event(event.id)
    assert stored is not None and stored.email == "grace@example.com" and stored.lookup is None
    (show,) = fake.requests_to("zendesk", route="/api/v2/tickets/5001.json")
    assert show.query == {"include": "users"}


def test_lookup_without_the_field_gives_the_widget_hint(
    fake: HelpdeskFake, runtime: Runtime
) -> None:
    fake.add_ticket("5002")
    event = Event(
        id="zendesk:ticket:5002",
        type="support_ticket",
        ticket_id="5002",
        inbound="zendesk",
        lookup="zendesk",
    )
    ctx = fetch_context(runtime, event)
    assert not ctx.found
    assert "zE('messenger:set', 'conversationFields'" in (ctx.missing_reason or "")
    assert VISITOR_FIELD_ID in (ctx.missing_reason or "")
    assert not fake.requests_to("datafast")


def test_sink_finds_its_comment_by_marker(fake: HelpdeskFake, runtime: Runtime) -> None:
    sink = runtime.sinks["zendesk"]
    fake.add_ticket("5003", "Help please")
    event = Event(
        id="zendesk:ticket:5003",
        type="support_ticket",
        ticket_id="5003",
        inbound="zendesk",
        missing_reason="no field",
    )
    ctx = fetch_context(runtime, event)
    assert sink.already_delivered(event) is False
    sink.deliver(event, ctx, sink.render_note(event, ctx))
    assert sink.already_delivered(event) is True
    comment = fake.zendesk_comments("5003")[-1]
    assert not comment["public"] and "No visitor journey found" in comment["body"]


def test_timestamp_in_unix_seconds_is_accepted_too(web: TestClient) -> None:
    response = post(web, trigger_body(new_ticket(), VISITOR), timestamp=str(int(time.time())))
    assert response.status_code == 202


def test_zendesk_429_retry_after_pauses_the_lookup(fake: HelpdeskFake, runtime: Runtime) -> None:
    fake.add_ticket("5004")
    fake.fail("zendesk", 429, headers={"Retry-After": "7"}, match="/tickets/5004.json")
    event = Event(
        id="zendesk:ticket:5004",
        type="support_ticket",
        ticket_id="5004",
        inbound="zendesk",
        lookup="zendesk",
    )
    with pytest.raises(RateLimited) as limited:
        runtime.sinks["zendesk"].complete_event(event)
    assert limited.value.retry_after == 7
    assert runtime.limiter.paused_for("zendesk") > 5


def test_timestamp_tolerance_is_configurable(
    fake: HelpdeskFake, isolation: tuple[str, str]
) -> None:
    stale = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for tolerance, status in ((0, 202), (10_000, 202), (60, 401)):
        with helpdesk_web(
            fake, isolation, **SETTINGS, zendesk_timestamp_tolerance=tolerance
        ) as client:
            response = post(client, trigger_body(new_ticket(), VISITOR), timestamp=stale)
            assert response.status_code == status, (tolerance, response.text)
