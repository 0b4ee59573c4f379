"""Plain: the request signature and the delivery-attempt tolerance, the mapping of
``thread.thread_created`` (each visitor-id source), the thread-field lookup, ``createNote``,
the exactly-once timeline listing, GraphQL errors and 429, and the endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fake_plain import (
    PLAIN_API_KEY,
    PLAIN_WEBHOOK_SECRET,
    FakePlain,
    signed_headers,
    thread_created,
)
from fastapi.testclient import TestClient
from harness import queue_length
from helpdesk_fakes import HelpdeskFake, helpdesk_runtime, helpdesk_web
from pydantic import SecretStr

from config import load_settings
from worker.errors import AuthFailed, RateLimited, Rejected
from worker.events import Event, EventRejected
from worker.inbound import Ignored, WebhookRequest
from worker.integrations.plain import PlainSink, PlainWebhook, parse_plain_webhook
from worker.journey import JourneyContext
from worker.runtime import Runtime
from worker.signature import SignatureError

VISITOR = "0b9e5f2a-7c4d-4e1f-8a3b-6d5c4b3a2f10"
HOOK_ENV = {"PLAIN_WEBHOOK_SECRET": PLAIN_WEBHOOK_SECRET}


def settings(**overrides: Any) -> Any:
    values = {k.lower(): v for k, v in HOOK_ENV.items()}
    return load_settings(_env_file=None, **{**values, **overrides})


# Mapping ----------------------------------------------------------------------------------


def test_thread_created_names_the_thread_and_customer_and_asks_for_the_fields() -> None:
    payload = thread_created("th_1", "c_1", event_id="pEv_1")
    event = parse_plain_webhook(payload, settings(), event_id="pEv_1")
    assert event.id == "plain:pEv_1"
    assert (event.type, event.inbound, event.ticket_id) == ("support_ticket", "plain", "th_1")
    assert event.external == {"customer_id": "c_1"}
    assert (event.email, event.name) == ("peter@example.com", "Peter Santos")
    assert event.visitor_id is None and event.lookup == "plain" and event.missing_reason is None


def test_the_body_id_when_the_header_is_missing_and_thread_fields_when_sent() -> None:
    payload = thread_created("th_1", "c_1", event_id="pEv_body")
    payload["payload"]["thread"]["threadFields"] = [
        {"key": "datafast_visitor_id", "stringValue": VISITOR}
    ]
    event = parse_plain_webhook(payload, settings(), event_id=None)
    assert event.id == "plain:pEv_body" and event.visitor_id == VISITOR and event.lookup is None


def test_customer_external_id_as_the_source() -> None:
    chosen = settings(plain_visitor_source="customer_external_id")
    with_id = parse_plain_webhook(
        thread_created("th_1", "c_1", customer_external_id=VISITOR), chosen, event_id="e1"
    )
    assert with_id.visitor_id == VISITOR and with_id.lookup is None
    without = parse_plain_webhook(thread_created("th_2", "c_2"), chosen, event_id="e2")
    assert without.lookup is None and "external id" in (without.missing_reason or "")
    with pytest.raises(EventRejected) as caught:
        parse_plain_webhook(
            thread_created("th_3", "c_3", customer_external_id="user_42"), chosen, event_id="e3"
        )
    assert caught.value.status_code == 400
    assert caught.value.message.startswith("payload.thread.customer.externalId:")


def test_other_events_are_ignored_and_bad_bodies_name_the_field() -> None:
    other = thread_created("th_1", "c_1")
    other["type"] = other["payload"]["eventType"] = "thread.note_created"
    with pytest.raises(Ignored, match=r"thread\.note_created"):
        parse_plain_webhook(other, settings(), event_id="e")
    no_customer = thread_created("th_1", "c_1")
    del no_customer["payload"]["thread"]["customer"]
    with pytest.raises(EventRejected, match=r"^payload\.thread\.customer\.id:"):
        parse_plain_webhook(no_customer, settings(), event_id="e")
    no_thread = thread_created("th_1", "c_1")
    del no_thread["payload"]["thread"]
    with pytest.raises(EventRejected, match=r"^payload\.thread:"):
        parse_plain_webhook(no_thread, settings(), event_id="e")


# Signatures -------------------------------------------------------------------------------


def _request(body: bytes, headers: dict[str, str]) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        url="/v1/webhooks/plain",
        body=body,
        headers={k.lower(): v for k, v in headers.items()},
    )


def test_signature_over_the_raw_body_with_rotation() -> None:
    payload = thread_created("th_1", "c_1")
    body = json.dumps(payload).encode()
    PlainWebhook(settings()).verify(_request(body, signed_headers(body, payload)))
    rotated = settings(plain_webhook_secret=f"new-secret,{PLAIN_WEBHOOK_SECRET}")
    PlainWebhook(rotated).verify(_request(body, signed_headers(body, payload)))
    # Plain signs the bytes it sends: the same JSON re-serialized does not match.
    with pytest.raises(SignatureError, match="Plain-Request-Signature"):
        PlainWebhook(settings()).verify(
            _request(json.dumps(payload, indent=1).encode(), signed_headers(body, payload))
        )
    with pytest.raises(SignatureError):
        PlainWebhook(settings()).verify(
            _request(body, signed_headers(body, payload, secret="other"))
        )
    unsigned = {
        k: v for k, v in signed_headers(body, payload).items() if k != "Plain-Request-Signature"
    }
    with pytest.raises(SignatureError):
        PlainWebhook(settings()).verify(_request(body, unsigned))


def test_stale_delivery_attempt_is_refused(
    server: HelpdeskFake,
) -> None:
    payload = thread_created("th_1", "c_1", attempt_offset=-600)
    body = json.dumps(payload).encode()
    headers = signed_headers(body, payload)
    with pytest.raises(SignatureError, match="too old or too new"):
        PlainWebhook(settings()).verify(_request(body, headers))
    # Without the header, the body's webhookMetadata tells the attempt's time.
    del headers["Plain-Webhook-Delivery-Attempt-Timestamp"]
    with pytest.raises(SignatureError, match="too old or too new"):
        PlainWebhook(settings()).verify(_request(body, headers))
    PlainWebhook(settings(plain_timestamp_tolerance=0)).verify(_request(body, headers))


# Against the fake Plain -------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[HelpdeskFake]:
    with HelpdeskFake(FakePlain()) as helpdesks:
        yield helpdesks


@pytest.fixture
def fake(server: HelpdeskFake) -> FakePlain:
    found: FakePlain = server.system(FakePlain.name)
    return found


@pytest.fixture
def runtime(server: HelpdeskFake, key_prefix: str) -> Iterator[Runtime]:
    with helpdesk_runtime(server, key_prefix) as rt:
        yield rt


def _sink(rt: Runtime) -> PlainSink:
    sink = rt.sinks["plain"]
    assert isinstance(sink, PlainSink)
    return sink


def _event(thread_id: str, customer_id: str, **more: Any) -> Event:
    return Event(
        id="plain:pEv_x",
        type="support_ticket",
        ticket_id=thread_id,
        inbound="plain",
        external={"customer_id": customer_id},
        **more,
    )


def test_create_note_and_find_it_in_the_timeline(
    server: HelpdeskFake, fake: FakePlain, runtime: Runtime
) -> None:
    thread_id, customer_id = fake.add_thread(other_entries=60)  # more than a page of notes
    sink = _sink(runtime)
    event = _event(thread_id, customer_id)
    ctx = JourneyContext.not_found("DataFast", "", "no visitor id")
    assert sink.skip_reason(event, ctx) is None
    assert sink.already_delivered(event) is False
    result = sink.deliver(event, ctx, sink.render_note(event, ctx))
    note = fake.notes(thread_id)[-1]
    assert result.external_id == note["noteId"]
    assert event.marker in note["text"] and event.marker in (note["markdown"] or "")
    assert "No visitor journey found" in note["text"]
    assert sink.already_delivered(event) is True
    calls = server.requests_to(fake.name, method="POST")
    assert calls[0].headers["authorization"] == f"Bearer {PLAIN_API_KEY}"
    assert any("NOTE" in c.json["query"] and c.json["variables"].get("after") for c in calls)


def test_sink_needs_the_customer(runtime: Runtime) -> None:
    ctx = JourneyContext.not_found("DataFast", "", "x")
    no_customer = Event(id="a", type="support_ticket", ticket_id="th_1", inbound="plain")
    assert "customer" in (_sink(runtime).skip_reason(no_customer, ctx) or "")
    api = Event(id="b", type="support_ticket", ticket_id="th_1", external={"customer_id": "c"})
    assert "did not come from the Plain webhook" in (_sink(runtime).skip_reason(api, ctx) or "")


def test_lookup_reads_the_thread_field(fake: FakePlain, runtime: Runtime) -> None:
    with_id = fake.add_thread({"datafast_visitor_id": VISITOR, "product_area": "billing"})
    without = fake.add_thread({"product_area": "billing"})
    sink = _sink(runtime)
    done = sink.complete_event(_event(*with_id, lookup="plain"))
    assert done.missing is None and done.event.visitor_id == VISITOR
    missing = sink.complete_event(_event(*without, lookup="plain"))
    assert "upsertThreadField" in (missing.missing or "")
    gone = sink.complete_event(_event("th_gone", "c_1", lookup="plain"))
    assert gone.missing == "Plain has no thread th_gone"


def test_mutation_errors_graphql_errors_and_429(
    server: HelpdeskFake, fake: FakePlain, runtime: Runtime
) -> None:
    thread_id, _ = fake.add_thread()
    sink = _sink(runtime)
    ctx = JourneyContext.not_found("DataFast", "", "x")
    wrong_customer = _event(thread_id, "c_someone_else")
    with pytest.raises(
        Rejected, match=r"createNote: Invalid input \(customerId: Customer not in thread\)"
    ):
        sink.deliver(wrong_customer, ctx, sink.render_note(wrong_customer, ctx))
    server.fail(fake.name, 429, headers=fake.rate_limit_headers(429))
    with pytest.raises(RateLimited) as limited:
        sink.check()
    assert limited.value.retry_after == 1.0
    assert runtime.limiter.paused_for("plain") > 0
    runtime.redis.delete(f"{runtime.settings.redis_key_prefix}pause:plain")
    bad = PlainSink(
        runtime.settings.model_copy(update={"plain_api_key": SecretStr("wrong")}), runtime.limiter
    )
    with pytest.raises(AuthFailed) as auth:
        bad.check()
    assert "Authentication failed" in str(auth.value) and "PLAIN_API_KEY" in str(auth.value)
    assert "Acme" in sink.check()
    assert fake.notes(thread_id) == []


# The endpoint ------------------------------------------------------------------------------


@pytest.fixture
def web(server: HelpdeskFake, isolation: tuple[str, str]) -> Iterator[TestClient]:
    with helpdesk_web(server, isolation) as client:
        yield client


def test_endpoint_signature_dedupe_and_ignored(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    queue = isolation[1]
    payload = thread_created("th_9", "c_9")
    body = json.dumps(payload).encode()
    headers = signed_headers(body, payload)
    bad = web.post("/v1/webhooks/plain", content=body + b" ", headers=headers)
    assert bad.status_code == 401 and queue_length(redis_client, queue) == 0
    first = web.post("/v1/webhooks/plain", content=body, headers=headers)
    assert first.status_code == 202 and first.json()["data"]["eventId"] == f"plain:{payload['id']}"
    # Plain's retry: a new attempt of the same event (same Plain-Event-Id).
    retry = dict(
        payload, webhookMetadata={**payload["webhookMetadata"], "webhookDeliveryAttemptNumber": 2}
    )
    retry_body = json.dumps(retry).encode()
    again = web.post(
        "/v1/webhooks/plain", content=retry_body, headers=signed_headers(retry_body, retry)
    )
    assert again.status_code == 200 and again.json()["data"]["state"] == "duplicate"
    other = dict(payload, type="thread.note_created")
    other_body = json.dumps(other).encode()
    ignored = web.post(
        "/v1/webhooks/plain", content=other_body, headers=signed_headers(other_body, other)
    )
    assert ignored.status_code == 200 and ignored.json()["data"]["state"] == "ignored"
    assert queue_length(redis_client, queue) == 1
