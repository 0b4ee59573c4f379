"""Freshdesk: the automation rule's webhook (token, mapping, tolerance of placeholders), the
ticket lookup, the private note, the exactly-once listing, errors and 429, and the endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fake_freshdesk import (
    FRESHDESK_API_KEY,
    FRESHDESK_WEBHOOK_TOKEN,
    VISITOR_FIELD,
    FakeFreshdesk,
    new_ticket_id,
    rule_body,
    rule_headers,
)
from fakes import full_profile
from fastapi.testclient import TestClient
from harness import queue_length
from helpdesk_fakes import HelpdeskFake, helpdesk_runtime, helpdesk_web
from pydantic import SecretStr

from config import load_settings
from worker.errors import AuthFailed, RateLimited, Rejected
from worker.events import Event, EventRejected
from worker.inbound import WebhookRequest
from worker.integrations.freshdesk import FreshdeskSink, FreshdeskWebhook, parse_freshdesk_webhook
from worker.journey import JourneyContext
from worker.runtime import Runtime
from worker.sink import Note
from worker.tasks import fetch_context

VISITOR = "3f2b8c1e-6d4a-4b7e-9a10-2c5d8e7f6a91"
SETTINGS_ENV = {"FRESHDESK_WEBHOOK_TOKEN": FRESHDESK_WEBHOOK_TOKEN}


def settings(**overrides: Any) -> Any:
    values = {k.lower(): v for k, v in SETTINGS_ENV.items()}
    return load_settings(_env_file=None, **{**values, **overrides})


# The webhook ------------------------------------------------------------------------------


def test_rule_body_maps_to_one_note_per_ticket() -> None:
    event = parse_freshdesk_webhook(rule_body("5001", VISITOR), settings())
    assert event.id == "freshdesk:5001"
    assert (event.type, event.inbound, event.ticket_id) == ("support_ticket", "freshdesk", "5001")
    assert (event.visitor_id, event.email, event.name) == (
        VISITOR,
        "ada@example.com",
        "Ada Lovelace",
    )
    assert event.lookup is None and event.missing_reason is None


def test_visitor_id_in_custom_fields_or_the_legacy_wrapper() -> None:
    nested = {"ticket_id": 7, "custom_fields": {"datafast_visitor_id": VISITOR}}
    assert parse_freshdesk_webhook(nested, settings()).visitor_id == VISITOR
    wrapped = {
        "freshdesk_webhook": {
            "ticket_id": "8",
            "ticket": {"custom_fields": {VISITOR_FIELD: VISITOR}},
        }
    }
    event = parse_freshdesk_webhook(wrapped, settings())
    assert (event.id, event.visitor_id) == ("freshdesk:8", VISITOR)
    custom = parse_freshdesk_webhook(
        {"ticket_id": "9", "vid": VISITOR}, settings(freshdesk_visitor_field="vid")
    )
    assert custom.visitor_id == VISITOR


def test_empty_field_says_why_and_absent_or_unrendered_field_is_looked_up() -> None:
    empty = parse_freshdesk_webhook(rule_body("10", None), settings())
    assert empty.visitor_id is None and empty.lookup is None
    assert empty.missing_reason is not None
    assert (
        VISITOR_FIELD in empty.missing_reason
        and "FreshworksWidget('prefill'" in empty.missing_reason
    )
    absent = parse_freshdesk_webhook({"ticket_id": "11"}, settings())
    assert absent.lookup == "freshdesk" and absent.missing_reason is None
    unrendered = parse_freshdesk_webhook(
        {
            "ticket_id": "12",
            "visitor_id": "{{ticket.datafast_visitor_id}}",
            "email": "{{ticket.contact.email}}",
        },
        settings(),
    )
    assert unrendered.lookup == "freshdesk" and unrendered.email is None


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ([], 422, "body"),
        ({"email": "a@b.co"}, 422, "ticket_id"),
        ({"ticket_id": "{{ticket.id}}"}, 422, "ticket_id"),
        ({"ticket_id": "12a"}, 422, "ticket_id"),
        ({"ticket_id": "13", "visitor_id": "not-a-uuid"}, 400, "visitor_id"),
    ],
)
def test_unmappable_bodies_name_the_field(payload: Any, status: int, field: str) -> None:
    with pytest.raises(EventRejected) as caught:
        parse_freshdesk_webhook(payload, settings())
    assert caught.value.status_code == status
    assert caught.value.message.startswith(f"{field}:")


def _request(token: str | None) -> WebhookRequest:
    headers = {"x-visitor-enrich-token": token} if token is not None else {}
    return WebhookRequest(method="POST", url="/v1/webhooks/freshdesk", body=b"{}", headers=headers)


def test_token_is_checked_and_may_be_rotated(
    server: HelpdeskFake,
) -> None:
    adapter = FreshdeskWebhook(
        settings(freshdesk_webhook_token=f"old-token,{FRESHDESK_WEBHOOK_TOKEN}")
    )
    adapter.verify(_request(FRESHDESK_WEBHOOK_TOKEN))
    adapter.verify(_request("old-token"))
    for bad in (None, "", "wrong", FRESHDESK_WEBHOOK_TOKEN + "x"):
        with pytest.raises(Exception, match="X-Visitor-Enrich-Token"):
            adapter.verify(_request(bad))


# Against the fake Freshdesk ---------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[HelpdeskFake]:
    with HelpdeskFake(FakeFreshdesk()) as helpdesks:
        yield helpdesks


@pytest.fixture
def fake(server: HelpdeskFake) -> FakeFreshdesk:
    found: FakeFreshdesk = server.system(FakeFreshdesk.name)
    return found


@pytest.fixture
def runtime(server: HelpdeskFake, key_prefix: str) -> Iterator[Runtime]:
    with helpdesk_runtime(server, key_prefix) as rt:
        yield rt


def _sink(rt: Runtime) -> FreshdeskSink:
    sink = rt.sinks["freshdesk"]
    assert isinstance(sink, FreshdeskSink)
    return sink


def test_note_is_private_html_and_found_again_by_its_marker(
    server: HelpdeskFake, fake: FakeFreshdesk, runtime: Runtime
) -> None:
    ticket = new_ticket_id()
    fake.add_ticket(ticket)
    # 150 earlier conversations: the marker check must page past the first 100.
    for _ in range(150):
        fake.conversations[ticket].append(
            {"id": 1, "body": "<p>reply</p>", "body_text": "reply", "private": False}
        )
    sink = _sink(runtime)
    event = Event(
        id=f"freshdesk:{ticket}", type="support_ticket", ticket_id=ticket, inbound="freshdesk"
    )
    ctx = JourneyContext.not_found("DataFast", "", "no visitor id")
    assert sink.skip_reason(event, ctx) is None
    assert sink.already_delivered(event) is False
    result = sink.deliver(event, ctx, sink.render_note(event, ctx))
    (note,) = fake.notes(ticket)
    assert result.external_id == str(note["id"]) and note["private"] is True
    assert event.marker in note["body"] and "<" in note["body"]
    assert sink.already_delivered(event) is True
    pages = [
        r.query["page"]
        for r in server.requests_to(
            fake.name, method="GET", route=f"/api/v2/tickets/{ticket}/conversations"
        )
    ]
    assert pages == ["1", "2", "1", "2"]  # both looks read past the first 100
    post = server.requests_to(fake.name, method="POST")[0]
    assert post.json == {"body": note["body"], "private": True}


def test_other_systems_tickets_are_skipped(runtime: Runtime) -> None:
    sink = _sink(runtime)
    ctx = JourneyContext.not_found("DataFast", "", "x")
    zendesk = Event(id="z", type="support_ticket", ticket_id="5", inbound="zendesk")
    assert "zendesk" in (sink.skip_reason(zendesk, ctx) or "")
    assert (
        sink.skip_reason(Event(id="n", type="signup", inbound="freshdesk"), ctx)
        == "no ticket_id on the event"
    )


def test_lookup_reads_the_custom_field_and_requester(
    server: HelpdeskFake, fake: FakeFreshdesk, runtime: Runtime
) -> None:
    with_id, without = new_ticket_id(), new_ticket_id()
    fake.add_ticket(with_id, VISITOR, email="grace@example.com")
    fake.add_ticket(without)
    sink = _sink(runtime)
    done = sink.complete_event(
        Event(id="a", type="support_ticket", ticket_id=with_id, lookup="freshdesk")
    )
    assert done.missing is None
    assert (done.event.visitor_id, done.event.email, done.event.name) == (
        VISITOR,
        "grace@example.com",
        "Ada Lovelace",
    )
    assert server.requests_to(fake.name, route=f"/api/v2/tickets/{with_id}")[0].query == {
        "include": "requester"
    }
    missing = sink.complete_event(
        Event(id="b", type="support_ticket", ticket_id=without, lookup="freshdesk")
    )
    assert missing.missing is not None and VISITOR_FIELD in missing.missing
    gone = sink.complete_event(
        Event(id="c", type="support_ticket", ticket_id="999999", lookup="freshdesk")
    )
    assert gone.missing == "Freshdesk has no ticket 999999"


def test_fetch_context_with_the_lookup_reaches_the_source(
    server: HelpdeskFake, fake: FakeFreshdesk, runtime: Runtime
) -> None:
    visitor = server.add_visitor(full_profile())
    ticket = new_ticket_id()
    fake.add_ticket(ticket, visitor)
    event = Event(
        id=f"freshdesk:{ticket}", type="support_ticket", ticket_id=ticket, lookup="freshdesk"
    )
    context = fetch_context(runtime, event)
    assert context.found and context.visitor_id == visitor


def test_errors_and_429_with_freshdesks_headers(
    server: HelpdeskFake, fake: FakeFreshdesk, runtime: Runtime
) -> None:
    ticket = new_ticket_id()
    fake.add_ticket(ticket)
    sink = _sink(runtime)
    event = Event(id="e", type="support_ticket", ticket_id=ticket, inbound="freshdesk")
    ctx = JourneyContext.not_found("DataFast", "", "x")
    server.fail(fake.name, 429, headers=fake.rate_limit_headers(429), method="POST")
    with pytest.raises(RateLimited) as limited:
        sink.deliver(event, ctx, sink.render_note(event, ctx))
    assert limited.value.retry_after == 1.0 and "exceeded the limit" in str(limited.value)
    # Every worker waits: the shared limiter holds the pause.
    assert runtime.limiter.paused_for("freshdesk") > 0
    runtime.redis.delete(f"{runtime.settings.redis_key_prefix}pause:freshdesk")
    with pytest.raises(Rejected) as invalid:
        sink.deliver(event, ctx, Note(""))
    assert "Validation failed: body: It should be a/an String" in str(invalid.value)
    wrong_key = runtime.settings.model_copy(update={"freshdesk_api_key": SecretStr("wrong")})
    bad = FreshdeskSink(wrong_key, runtime.limiter)
    with pytest.raises(AuthFailed) as auth:
        bad.check()
    assert "You have to be logged in" in str(auth.value) and "FRESHDESK_API_KEY" in str(auth.value)
    assert "wrong" not in str(auth.value) and FRESHDESK_API_KEY not in str(auth.value)
    assert "api@example.com" in sink.check()


# The endpoint ------------------------------------------------------------------------------


@pytest.fixture
def web(server: HelpdeskFake, isolation: tuple[str, str]) -> Iterator[TestClient]:
    with helpdesk_web(server, isolation) as client:
        yield client


def test_endpoint_token_duplicate_and_field_errors(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    queue = isolation[1]
    body = json.dumps(rule_body("6001", VISITOR))
    bad = web.post("/v1/webhooks/freshdesk", content=body, headers=rule_headers("nope"))
    assert bad.status_code == 401 and queue_length(redis_client, queue) == 0
    assert "X-Visitor-Enrich-Token" in bad.json()["error"]["message"]
    first = web.post("/v1/webhooks/freshdesk", content=body, headers=rule_headers())
    assert first.status_code == 202 and first.json()["data"] == {
        "eventId": "freshdesk:6001",
        "state": "queued",
    }
    again = web.post("/v1/webhooks/freshdesk", content=body, headers=rule_headers())
    assert again.status_code == 200 and again.json()["data"]["state"] == "duplicate"
    assert queue_length(redis_client, queue) == 1
    missing = web.post(
        "/v1/webhooks/freshdesk", content=b'{"email": "a@b.co"}', headers=rule_headers()
    )
    assert missing.status_code == 422 and missing.json()["error"]["message"].startswith(
        "ticket_id:"
    )
