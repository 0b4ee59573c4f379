"""The signed outbound webhook: its body against the published JSON Schema, its Standard
Webhooks signature verified by the ``standardwebhooks`` library's own verifier, and what a
receiver's errors and 429s do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeUpstream, full_profile
from jsonschema import Draft202012Validator
from sales_support import OUTBOUND_SECRET, stripe_checkout_completed
from standardwebhooks.webhooks import Webhook

from config import ConfigError, load_settings
from worker.errors import RateLimited, Rejected, Unavailable
from worker.events import Event, Payment
from worker.integrations.datafast import VisitorProfile, to_journey
from worker.integrations.stripe import parse_stripe_event
from worker.integrations.webhook import OutboundWebhookSink, webhook_payload
from worker.journey import FirstTouch, JourneyContext, PageVisit, Prediction
from worker.runtime import Runtime, build_runtime
from worker.sink import Note

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "visitor-enriched.v1.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def _found() -> JourneyContext:
    return to_journey(VisitorProfile.model_validate(full_profile(VISITOR)))


def _payment_event() -> Event:
    settings = load_settings(_env_file=None, stripe_webhook_secret="whsec_x")
    return parse_stripe_event(stripe_checkout_completed(VISITOR), settings)


# The body and its schema -------------------------------------------------------------------


def test_schema_is_valid_and_documents_every_field_of_the_models() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    defs = SCHEMA["$defs"]
    journey = defs["journey"]["properties"]
    # additionalProperties is false throughout: a field added to a model must be documented.
    assert set(journey) == set(JourneyContext.model_fields)
    assert set(journey["first_touch"]["properties"]) == set(FirstTouch.model_fields)
    assert set(journey["recent_pages"]["items"]["properties"]) == set(PageVisit.model_fields)
    assert set(journey["prediction"]["properties"]) == set(Prediction.model_fields)
    assert set(defs["event"]["properties"]["payment"]["properties"]) == set(Payment.model_fields)


@pytest.mark.parametrize(
    ("event", "context"),
    [
        (_payment_event(), _found()),
        (
            Event(id="evt_signup", type="signup", email="a@b.co"),
            JourneyContext.not_found("DataFast", "", "no datafast_visitor_id on the event"),
        ),
        (
            Event(id="rc:room", type="livechat", room_id="room", inbound="rocketchat"),
            JourneyContext(provider="DataFast", visitor_id=VISITOR),
        ),
    ],
)
def test_every_body_validates_against_the_schema(event: Event, context: JourneyContext) -> None:
    payload = webhook_payload(event, context, Note("the note"))
    errors = sorted(VALIDATOR.iter_errors(json.loads(json.dumps(payload))), key=str)
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]
    assert payload["id"] == payload["event"]["id"] == event.id
    assert payload["type"] == "visitor.enriched" and payload["version"] == 1


def test_schema_refuses_what_is_not_v1() -> None:
    good = webhook_payload(_payment_event(), _found(), Note("n"))
    good = json.loads(json.dumps(good))
    assert not VALIDATOR.is_valid({**good, "version": 2})
    assert not VALIDATOR.is_valid({**good, "journey": {**good["journey"], "score": 5}})
    assert not VALIDATOR.is_valid({**good, "event": {**good["event"], "type": "refund"}})


# Delivery, signature, errors ----------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def _runtime(fake: FakeUpstream, key_prefix: str, secret: str) -> Runtime:
    settings = load_settings(
        _env_file=None,
        redis_key_prefix=key_prefix,
        outbound_webhook_url=fake.base_url("webhook"),
        outbound_webhook_secret=secret,
        retry_backoff_base=0.1,
        retry_backoff_max=0.5,
    )
    return build_runtime(settings)


@pytest.fixture
def runtime(fake: FakeUpstream, key_prefix: str) -> Iterator[Runtime]:
    rt = _runtime(fake, key_prefix, OUTBOUND_SECRET)
    yield rt
    rt.redis.close()


def _deliver(rt: Runtime, event: Event, context: JourneyContext) -> Any:
    sink = rt.sinks["webhook"]
    return sink.deliver(event, context, sink.render_note(event, context))


def test_delivery_is_verified_by_the_standardwebhooks_library(
    fake: FakeUpstream, runtime: Runtime
) -> None:
    event, context = _payment_event(), _found()
    _deliver(runtime, event, context)
    _deliver(runtime, event, context)  # a retry: same webhook-id, fresh timestamp
    first, second = fake.webhook_deliveries()
    verified = Webhook(OUTBOUND_SECRET).verify(first.body.decode(), first.headers)
    assert verified["event"]["payment"] == {
        "amount": 49.0,
        "currency": "EUR",
        "description": "Pro plan",
    }
    assert verified["journey"]["first_touch"]["utm_source"] == "hn-launch-week"
    assert "49.00 EUR" in verified["note"]["body"]
    assert VALIDATOR.is_valid(verified)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.id
    assert first.headers["content-type"] == "application/json"
    Webhook(OUTBOUND_SECRET).verify(second.body.decode(), second.headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook("whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==").verify(
            first.body.decode(), first.headers
        )
    assert runtime.sinks["webhook"].already_delivered(event) is None


def test_rotation_signs_with_every_secret(fake: FakeUpstream, key_prefix: str) -> None:
    old = "whsec_" + "b2xkLW91dGJvdW5kLXNlY3JldC0wMTIzNDU2Nzg5"
    rt = _runtime(fake, key_prefix, f"{old},{OUTBOUND_SECRET}")
    try:
        _deliver(rt, _payment_event(), _found())
    finally:
        rt.redis.close()
    (delivery,) = fake.webhook_deliveries()
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, OUTBOUND_SECRET):
        Webhook(secret).verify(delivery.body.decode(), delivery.headers)


def test_receiver_errors_map_to_retry_or_failure(fake: FakeUpstream, runtime: Runtime) -> None:
    event, context = _payment_event(), _found()
    fake.fail("webhook", 503)
    with pytest.raises(Unavailable):
        _deliver(runtime, event, context)
    fake.fail("webhook", 429, headers={"Retry-After": "1"})
    with pytest.raises(RateLimited) as limited:
        _deliver(runtime, event, context)
    assert limited.value.retry_after == 1
    fake.fail("webhook", 400, body="bad payload")
    with pytest.raises(Rejected, match="bad payload"):
        _deliver(runtime, event, context)
    assert fake.webhook_deliveries() == []


def test_url_and_secret_go_together() -> None:
    with pytest.raises(ConfigError, match="OUTBOUND_WEBHOOK_SECRET"):
        load_settings(_env_file=None, outbound_webhook_url="https://example.com/hook")
    with pytest.raises(ConfigError, match="OUTBOUND_WEBHOOK_SECRET"):
        load_settings(
            _env_file=None,
            outbound_webhook_url="https://example.com/hook",
            outbound_webhook_secret="plain-secret",
        )
    settings = load_settings(_env_file=None)
    assert not OutboundWebhookSink.enabled(settings)
