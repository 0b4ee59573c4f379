"""Help Scout: the ``convo.created`` / ``beacon.chat.created`` webhooks (X-HelpScout-Signature,
mapping, other events), the customer lookup, conversation and chat notes with their marker
checks, the OAuth client-credentials token (cached for every worker, renewed on 401), and the
429 with Help Scout's own headers, against the fake Help Scout (``tests/fake_helpscout.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fake_helpscout import (
    HELPSCOUT_WEBHOOK_SECRET,
    VISITOR_FIELD_ID,
    FakeHelpScout,
    helpscout_error,
    rate_limit_headers,
)
from fakes import full_profile
from fastapi.testclient import TestClient
from harness import bearer, queue_length
from helpdesk_fakes import HelpdeskFake, helpdesk_runtime, helpdesk_settings, helpdesk_web
from pydantic import SecretStr

from config import ConfigError
from worker.errors import AuthFailed, RateLimited
from worker.events import Event
from worker.inbound import Ignored
from worker.integrations.helpscout import HelpScoutSink, chat_note_id, parse_helpscout_webhook
from worker.runtime import Runtime
from worker.tasks import fetch_context

VISITOR = "7d3c2a1b-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture
def fake() -> Iterator[HelpdeskFake]:
    with HelpdeskFake(FakeHelpScout()) as server:
        yield server


@pytest.fixture
def helpscout(fake: HelpdeskFake) -> FakeHelpScout:
    return fake.system("helpscout")  # type: ignore[no-any-return]


@pytest.fixture
def web(fake: HelpdeskFake, isolation: tuple[str, str]) -> Iterator[TestClient]:
    with helpdesk_web(fake, isolation) as client:
        yield client


@pytest.fixture
def runtime(fake: HelpdeskFake, key_prefix: str) -> Iterator[Runtime]:
    with helpdesk_runtime(fake, key_prefix) as rt:
        yield rt


def post(
    client: TestClient, payload: Any, event: str, secret: str = HELPSCOUT_WEBHOOK_SECRET
) -> Any:
    body, headers = FakeHelpScout.signed(payload, event, secret)
    return client.post("/v1/webhooks/helpscout", content=body, headers=headers)


# The webhook -------------------------------------------------------------------------------


def test_conversation_and_chat_are_queued_once_each(
    web: TestClient, helpscout: FakeHelpScout, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    customer = helpscout.add_customer()
    conversation = helpscout.conversation(customer, {"datafast_visitor_id": VISITOR})
    chat = helpscout.chat(customer, {"datafast_visitor_id": VISITOR})
    first = post(web, conversation, "convo.created")
    assert first.status_code == 202, first.text
    assert first.json()["data"]["eventId"] == f"helpscout:conversation:{conversation['id']}"
    assert post(web, chat, "beacon.chat.created").status_code == 202
    # Help Scout's retries (it has no event id): duplicates.
    again = post(web, conversation, "convo.created")
    assert again.status_code == 200 and again.json()["data"]["state"] == "duplicate"
    assert post(web, chat, "beacon.chat.created").json()["data"]["state"] == "duplicate"
    assert queue_length(redis_client, isolation[1]) == 2
    status = web.get(f"/v1/events/helpscout:chat:{chat['id']}", headers=bearer()).json()["data"]
    assert status["type"] == "livechat" and status["visitorId"] == VISITOR


def test_bad_signature_is_401_and_nothing_queued(
    web: TestClient, helpscout: FakeHelpScout, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    conversation = helpscout.conversation(helpscout.add_customer())
    assert post(web, conversation, "convo.created", secret="wrong").status_code == 401
    body, headers = FakeHelpScout.signed(conversation, "convo.created")
    del headers["X-HelpScout-Signature"]
    assert web.post("/v1/webhooks/helpscout", content=body, headers=headers).status_code == 401
    assert queue_length(redis_client, isolation[1]) == 0


def test_other_events_are_ignored(web: TestClient, helpscout: FakeHelpScout) -> None:
    conversation = helpscout.conversation(helpscout.add_customer())
    for event in ("convo.assigned", "beacon.chat.customer.replied", ""):
        response = post(web, conversation, event)
        assert response.status_code == 200 and response.json()["data"]["state"] == "ignored"


def test_mapping(fake: HelpdeskFake, helpscout: FakeHelpScout) -> None:
    settings = helpdesk_settings(fake, "unused:")
    customer = helpscout.add_customer()
    conversation = helpscout.conversation(customer, {"datafast_visitor_id": VISITOR})
    event = parse_helpscout_webhook("convo.created", conversation, settings)
    assert event.ticket_id == str(conversation["id"]) and event.type == "support_ticket"
    assert (event.visitor_id, event.email, event.name) == (
        VISITOR,
        "ada@example.com",
        "Ada Lovelace",
    )
    assert event.external == {"kind": "conversation", "customer_id": str(customer["id"])}
    # The field by its id, as HELPSCOUT_VISITOR_FIELD may name it.
    by_id = settings.model_copy(update={"helpscout_visitor_field": str(VISITOR_FIELD_ID)})
    assert parse_helpscout_webhook("convo.created", conversation, by_id).visitor_id == VISITOR
    # No field: the customer's properties are asked; no customer either: the short note.
    bare = helpscout.conversation(customer)
    assert parse_helpscout_webhook("convo.created", bare, settings).lookup == "helpscout"
    del bare["primaryCustomer"]
    orphan = parse_helpscout_webhook("convo.created", bare, settings)
    assert orphan.lookup is None and "Beacon('identify'" in (orphan.missing_reason or "")
    with pytest.raises(Ignored):
        parse_helpscout_webhook("customer.created", customer, settings)


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"uri": "https://api.helpscout.net/v2/conversations/1"}, 422, "id"),
        ([1], 422, "body"),
        (
            {"id": 5, "customFields": [{"id": 1, "name": "datafast_visitor_id", "value": "x"}]},
            400,
            "customFields.datafast_visitor_id",
        ),
    ],
)
def test_unmappable_payloads_name_the_field(
    web: TestClient, payload: Any, status: int, field: str
) -> None:
    response = post(web, payload, "convo.created")
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"].startswith(f"{field}:")


def test_webhook_secret_longer_than_help_scout_allows_is_refused() -> None:
    with pytest.raises(ConfigError, match="HELPSCOUT_WEBHOOK_SECRET"):
        from config import load_settings

        load_settings(_env_file=None, helpscout_webhook_secret="x" * 41)


# OAuth -------------------------------------------------------------------------------------


def test_token_is_fetched_once_and_renewed_on_401(
    fake: HelpdeskFake, helpscout: FakeHelpScout, runtime: Runtime
) -> None:
    sink = runtime.sinks["helpscout"]
    assert "app-owner@example.com" in sink.check()
    sink.check()
    assert helpscout.token_requests == 1  # the process keeps its token
    (grant,) = fake.requests_to("helpscout", route="/v2/oauth2/token")
    assert b"grant_type=client_credentials" in grant.body
    assert b"client_secret=" in grant.body
    # Revoked early: one 401, a new token, the call goes through.
    helpscout.revoke_tokens()
    sink.check()
    assert helpscout.token_requests == 2
    checks = fake.requests_to("helpscout", route="/v2/users/me")
    assert [r.status for r in checks] == [200, 200, 401, 200]


def test_bad_app_credentials_are_a_clear_auth_failure(fake: HelpdeskFake, runtime: Runtime) -> None:
    bad = runtime.settings.model_copy(update={"helpscout_app_secret": SecretStr("wrong")})
    runtime.redis.delete(f"{runtime.settings.redis_key_prefix}oauth:helpscout")
    with pytest.raises(AuthFailed) as caught:
        HelpScoutSink(bad, runtime.limiter).check()
    assert "HELPSCOUT_APP_SECRET" in str(caught.value) and "wrong" not in str(caught.value)


# Lookup and notes --------------------------------------------------------------------------


def test_lookup_reads_the_customer_property(
    fake: HelpdeskFake, helpscout: FakeHelpScout, runtime: Runtime
) -> None:
    visitor = fake.add_visitor(full_profile())
    customer = helpscout.add_customer({"datafast_visitor_id": visitor})
    event = parse_helpscout_webhook(
        "convo.created", helpscout.conversation(customer), runtime.settings
    )
    ctx = fetch_context(runtime, event)
    assert ctx.found and ctx.visitor_id == visitor
    no_property = helpscout.add_customer()
    event = parse_helpscout_webhook(
        "convo.created", helpscout.conversation(no_property), runtime.settings
    )
    missing = fetch_context(runtime, event)
    assert not missing.found and "Beacon('identify'" in (missing.missing_reason or "")


def test_conversation_note_once_and_found_by_marker(
    helpscout: FakeHelpScout, runtime: Runtime
) -> None:
    sink = runtime.sinks["helpscout"]
    conversation = helpscout.conversation(helpscout.add_customer())
    event = parse_helpscout_webhook("convo.created", conversation, runtime.settings)
    event = event.model_copy(update={"lookup": None, "missing_reason": "no field"})
    ctx = fetch_context(runtime, event)
    assert sink.already_delivered(event) is False
    result = sink.deliver(event, ctx, sink.render_note(event, ctx))
    (note,) = helpscout.notes(str(conversation["id"]))
    assert result.external_id == str(note["id"])
    assert event.marker in note["body"] and "No visitor journey found" in note["body"]
    assert sink.already_delivered(event) is True


def test_chat_note_has_a_stable_id_and_is_never_doubled(
    helpscout: FakeHelpScout, runtime: Runtime
) -> None:
    sink = runtime.sinks["helpscout"]
    chat = helpscout.chat(helpscout.add_customer())
    event = parse_helpscout_webhook("beacon.chat.created", chat, runtime.settings)
    event = event.model_copy(update={"lookup": None, "missing_reason": "no field"})
    ctx = fetch_context(runtime, event)
    assert sink.already_delivered(event) is False
    first = sink.deliver(event, ctx, sink.render_note(event, ctx))
    again = sink.deliver(event, ctx, sink.render_note(event, ctx))
    assert first.external_id == again.external_id == chat_note_id(event)
    assert "already there" in (again.detail or "")
    (note,) = helpscout.chat_notes(chat["id"])
    assert event.marker in note["body"] and "<" not in note["body"]  # text in the chat screen
    assert sink.already_delivered(event) is True


def test_429_with_help_scout_headers_pauses_every_worker(
    fake: HelpdeskFake, helpscout: FakeHelpScout, runtime: Runtime
) -> None:
    sink = runtime.sinks["helpscout"]
    conversation = helpscout.conversation(helpscout.add_customer())
    event = Event(
        id="helpscout:conversation:x",
        type="support_ticket",
        ticket_id=str(conversation["id"]),
        inbound="helpscout",
    )
    sink.check()  # the token first, so the scripted 429 meets the threads call
    fake.fail(
        "helpscout", 429, headers=rate_limit_headers(9), body=helpscout_error("Too many requests")
    )
    with pytest.raises(RateLimited) as limited:
        sink.already_delivered(event)
    assert limited.value.retry_after == 9
    assert runtime.limiter.paused_for("helpscout") > 5


def test_app_id_and_secret_go_together() -> None:
    from config import load_settings

    with pytest.raises(ConfigError, match="HELPSCOUT_APP_SECRET"):
        load_settings(_env_file=None, helpscout_app_id="app")


def test_marker_is_found_on_a_later_page_of_threads(
    fake: HelpdeskFake, helpscout: FakeHelpScout, runtime: Runtime
) -> None:
    sink = runtime.sinks["helpscout"]
    conversation = helpscout.conversation(helpscout.add_customer())
    cid = str(conversation["id"])
    event = parse_helpscout_webhook("convo.created", conversation, runtime.settings)
    event = event.model_copy(update={"lookup": None, "missing_reason": "no field"})
    ctx = fetch_context(runtime, event)
    sink.deliver(event, ctx, sink.render_note(event, ctx))
    helpscout.page_size = 2
    for number in range(5):  # newer threads push the note to page 3
        helpscout.conversations[cid].insert(0, {"id": number, "type": "customer", "body": "hi"})
    assert sink.already_delivered(event) is True
    pages = [
        r.query.get("page")
        for r in fake.requests_to("helpscout", route=f"/v2/conversations/{cid}/threads")
    ]
    assert pages == ["1", "2", "3"]
    other = event.model_copy(update={"id": "helpscout:conversation:other"})
    assert sink.already_delivered(other) is False
