"""Intercom: the ``conversation.user.created`` webhook (X-Hub-Signature, HEAD check, ping and
other topics, mapping), the contact lookup, the note reply and its marker check, errors and
the 429 with Intercom's own headers, against the fake Intercom (``tests/fake_intercom.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fake_intercom import (
    INTERCOM_ADMIN_ID,
    INTERCOM_CLIENT_SECRET,
    FakeIntercom,
    intercom_errors,
    rate_limit_headers,
)
from fakes import full_profile
from fastapi.testclient import TestClient
from harness import bearer, queue_length
from helpdesk_fakes import HelpdeskFake, helpdesk_runtime, helpdesk_settings, helpdesk_web
from pydantic import SecretStr

from worker.errors import AuthFailed, RateLimited, Rejected
from worker.events import Event
from worker.inbound import Ignored
from worker.integrations.intercom import IntercomSink, parse_intercom_webhook
from worker.runtime import Runtime
from worker.tasks import fetch_context

VISITOR = "0b6f3f5e-2b2d-4a53-8f0e-5d7c9a1e2f34"


@pytest.fixture
def fake() -> Iterator[HelpdeskFake]:
    with HelpdeskFake(FakeIntercom()) as server:
        yield server


@pytest.fixture
def intercom(fake: HelpdeskFake) -> FakeIntercom:
    return fake.system("intercom")  # type: ignore[no-any-return]


@pytest.fixture
def web(fake: HelpdeskFake, isolation: tuple[str, str]) -> Iterator[TestClient]:
    with helpdesk_web(fake, isolation) as client:
        yield client


@pytest.fixture
def runtime(fake: HelpdeskFake, key_prefix: str) -> Iterator[Runtime]:
    with helpdesk_runtime(fake, key_prefix) as rt:
        yield rt


def post(client: TestClient, payload: Any, secret: str = INTERCOM_CLIENT_SECRET) -> Any:
    body, headers = FakeIntercom.signed(payload, secret)
    return client.post("/v1/webhooks/intercom", content=body, headers=headers)


# The webhook -------------------------------------------------------------------------------


def test_head_check_is_answered(web: TestClient) -> None:
    assert web.head("/v1/webhooks/intercom").status_code == 200


def test_signed_notification_is_queued_once(
    web: TestClient, intercom: FakeIntercom, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    conversation, contact = intercom.add_conversation()
    payload = intercom.notification(
        conversation, contact, attributes={"datafast_visitor_id": VISITOR}
    )
    first = post(web, payload)
    assert first.status_code == 202, first.text
    event_id = f"intercom:{payload['id']}"
    assert first.json()["data"] == {"eventId": event_id, "state": "queued"}
    replay = post(web, payload)
    assert replay.status_code == 200 and replay.json()["data"]["state"] == "duplicate"
    assert queue_length(redis_client, isolation[1]) == 1
    status = web.get(f"/v1/events/{event_id}", headers=bearer()).json()["data"]
    assert status["visitorId"] == VISITOR


@pytest.mark.parametrize("header", ["sha1=" + "0" * 40, "", "sha256=abc", "garbage"])
def test_bad_signature_is_401_and_nothing_queued(
    web: TestClient,
    intercom: FakeIntercom,
    isolation: tuple[str, str],
    redis_client: redis.Redis,
    header: str,
) -> None:
    conversation, contact = intercom.add_conversation()
    body, headers = FakeIntercom.signed(intercom.notification(conversation, contact))
    headers["X-Hub-Signature"] = header
    response = web.post("/v1/webhooks/intercom", content=body, headers=headers)
    assert response.status_code == 401
    assert post(web, {"topic": "x"}, secret="wrong").status_code == 401
    assert queue_length(redis_client, isolation[1]) == 0


def test_ping_and_other_topics_are_ignored(web: TestClient, intercom: FakeIntercom) -> None:
    conversation, contact = intercom.add_conversation()
    for topic in ("ping", "conversation.admin.replied"):
        response = post(web, intercom.notification(conversation, contact, topic=topic))
        assert response.status_code == 200
        assert response.json()["data"]["state"] == "ignored"


def test_mapping_and_lookup_choice(fake: HelpdeskFake, intercom: FakeIntercom) -> None:
    settings = helpdesk_settings(fake, "unused:")
    conversation, contact = intercom.add_conversation()
    event = parse_intercom_webhook(
        intercom.notification(conversation, contact, attributes={"datafast_visitor_id": VISITOR}),
        settings,
    )
    assert (event.ticket_id, event.visitor_id, event.email) == (
        conversation,
        VISITOR,
        "ada@example.com",
    )
    assert event.inbound == "intercom" and event.lookup is None
    # No attribute in the payload: the contact is fetched.
    looked = parse_intercom_webhook(intercom.notification(conversation, contact), settings)
    assert looked.lookup == "intercom" and looked.external == {"contact_id": contact}
    # No contact at all: the short note says how to set the attribute.
    orphan = intercom.notification(conversation, contact)
    orphan["data"]["item"]["contacts"]["contacts"] = []
    orphan["data"]["item"]["source"]["author"] = {"type": "bot", "id": "1"}
    bare = parse_intercom_webhook(orphan, settings)
    assert bare.lookup is None and "Intercom('update'" in (bare.missing_reason or "")
    with pytest.raises(Ignored):
        parse_intercom_webhook({"topic": "user.created", "id": "notif_1"}, settings)


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"topic": "conversation.user.created"}, 422, "id"),
        ({"topic": "conversation.user.created", "id": "notif_1", "data": {}}, 422, "data.item"),
        (
            {"topic": "conversation.user.created", "id": "notif_2", "data": {"item": {"x": 1}}},
            422,
            "data.item.id",
        ),
        (
            {
                "topic": "conversation.user.created",
                "id": "notif_3",
                "data": {"item": {"id": "1", "custom_attributes": {"datafast_visitor_id": "x"}}},
            },
            400,
            "data.item.custom_attributes.datafast_visitor_id",
        ),
    ],
)
def test_unmappable_payloads_name_the_field(
    web: TestClient, payload: Any, status: int, field: str
) -> None:
    response = post(web, payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"].startswith(f"{field}:")


# Lookup and note ---------------------------------------------------------------------------


def test_lookup_fetches_the_contact(
    fake: HelpdeskFake, intercom: FakeIntercom, runtime: Runtime
) -> None:
    visitor = fake.add_visitor(full_profile())
    conversation, contact = intercom.add_conversation(
        contact_attributes={"datafast_visitor_id": visitor}
    )
    event = parse_intercom_webhook(intercom.notification(conversation, contact), runtime.settings)
    ctx = fetch_context(runtime, event)
    assert ctx.found and ctx.visitor_id == visitor
    (call,) = fake.requests_to("intercom", route=f"/contacts/{contact}")
    assert call.headers["authorization"].startswith("Bearer ")
    assert call.headers["intercom-version"]


def test_note_once_and_found_by_marker(
    fake: HelpdeskFake, intercom: FakeIntercom, runtime: Runtime
) -> None:
    sink = runtime.sinks["intercom"]
    assert isinstance(sink, IntercomSink)
    conversation, _ = intercom.add_conversation()
    event = Event(
        id="intercom:notif_a",
        type="support_ticket",
        ticket_id=conversation,
        inbound="intercom",
        missing_reason="no attribute",
    )
    ctx = fetch_context(runtime, event)
    assert sink.already_delivered(event) is False
    result = sink.deliver(event, ctx, sink.render_note(event, ctx))
    (note,) = intercom.notes(conversation)
    assert result.external_id == note["id"]
    assert event.marker in note["body"] and "No visitor journey found" in note["body"]
    assert note["author"] == {"type": "admin", "id": INTERCOM_ADMIN_ID}
    assert sink.already_delivered(event) is True
    # Another system's ticket, or a POST /v1/events ticket id, is never annotated here.
    for inbound in ("zendesk", "api"):
        other = event.model_copy(update={"inbound": inbound})
        assert "did not come from the Intercom webhook" in (sink.skip_reason(other, ctx) or "")


def test_errors_and_429_with_intercom_headers(
    fake: HelpdeskFake, intercom: FakeIntercom, runtime: Runtime
) -> None:
    sink = runtime.sinks["intercom"]
    event = Event(
        id="intercom:notif_b", type="support_ticket", ticket_id="nope", inbound="intercom"
    )
    ctx = fetch_context(runtime, event.model_copy(update={"missing_reason": "x"}))
    with pytest.raises(Rejected, match="Resource Not Found"):
        sink.deliver(event, ctx, sink.render_note(event, ctx))
    bad = runtime.settings.model_copy(update={"intercom_access_token": SecretStr("wrong")})
    with pytest.raises(AuthFailed, match="INTERCOM_ACCESS_TOKEN"):
        IntercomSink(bad, runtime.limiter).check()
    fake.fail(
        "intercom",
        429,
        headers=rate_limit_headers(30),
        body=intercom_errors("rate_limit_exceeded", "Exceeded rate limit"),
    )
    with pytest.raises(RateLimited) as limited:
        sink.already_delivered(event)
    assert "429 Exceeded rate limit" in str(limited.value)  # Intercom's errors[].message
    # X-RateLimit-Reset (unix time) becomes the wait, shared by every worker.
    assert limited.value.retry_after is not None and 25 <= limited.value.retry_after <= 31
    assert runtime.limiter.paused_for("intercom") > 20


def test_check_names_the_admin(fake: HelpdeskFake, runtime: Runtime) -> None:
    assert "bot@example.com" in runtime.sinks["intercom"].check()
    assert all(r.method == "GET" for r in fake.requests_to("intercom"))


def test_token_and_admin_go_together() -> None:
    from config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="INTERCOM_ADMIN_ID"):
        load_settings(_env_file=None, intercom_access_token="tok")
    settings = load_settings(_env_file=None, intercom_client_secret="s")
    assert not IntercomSink.enabled(settings)  # the webhook alone: no sink, no note
