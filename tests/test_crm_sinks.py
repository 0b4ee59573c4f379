"""Attio, Pipedrive and Salesforce: the person found or created by email, one note per event,
exactly once (the marker found in the person's notes), their errors and limits, against a
fake speaking their documented formats; and end to end through the real processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from crm_fakes import CrmFake
from fakes import FakeUpstream, full_profile
from harness import REDIS_URL, TEST_SECRET, Service, cleanup_redis, new_prefix, new_queue

from config import load_settings
from worker.crm import CrmSink, split_name
from worker.errors import AuthFailed, RateLimited
from worker.events import Event
from worker.integrations.attio import AttioSink
from worker.integrations.pipedrive import PipedriveSink
from worker.integrations.salesforce import SalesforceSink, soql_string
from worker.journey import FirstTouch, JourneyContext, PageVisit, Prediction
from worker.ratelimit import SharedRateLimiter

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
JOURNEY = JourneyContext(
    provider="datafast",
    visitor_id=VISITOR,
    first_touch=FirstTouch(utm_source="producthunt", referrer="https://producthunt.com/"),
    visit_count=6,
    recent_pages=[PageVisit(url="https://shop.example/pricing")],
    prediction=Prediction(score=77),
)


def event(email: str = "ada@acme.io", **values: Any) -> Event:
    return Event.model_validate(
        {
            "id": f"evt_{uuid.uuid4().hex[:10]}",
            "type": "signup",
            "visitor_id": VISITOR,
            "email": email,
            "name": "Ada Lovelace",
            **values,
        }
    )


@pytest.fixture
def crm() -> Iterator[CrmFake]:
    with CrmFake() as fake:
        yield fake


def build(crm: CrmFake, redis_client: redis.Redis, key_prefix: str, **extra: Any) -> list[CrmSink]:
    values = {k.lower(): v for k, v in crm.env().items()} | extra
    settings = load_settings(_env_file=None, redis_key_prefix=key_prefix, **values)
    limiter = SharedRateLimiter(redis_client, key_prefix)
    return [
        AttioSink(settings, limiter),
        PipedriveSink(settings, limiter),
        SalesforceSink(settings, limiter),
    ]


NOTES = {"attio": "attio", "pipedrive": "pipedrive", "salesforce": "sf"}


def test_each_crm_creates_the_person_once_and_notes_once(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    for sink in build(crm, redis_client, key_prefix):
        first, second = event(), event()  # the same person, two events
        for ev in (first, second):
            assert sink.already_delivered(ev) is False
            result = sink.deliver(ev, JOURNEY, sink.render_note(ev, JOURNEY))
            assert result.external_id
            # A task run again after a crash finds the note and does not post another.
            assert sink.already_delivered(ev) is True
        store = NOTES[sink.name]
        assert len(crm.notes_with(store, first.marker)) == 1
        assert len(crm.notes_with(store, second.marker)) == 1
        assert sink.label in sink.check()
    assert len(crm.attio_people) == 1 and len(crm.pipedrive_people) == 1
    leads = [r for r in crm.sf_records.values() if r["type"] == "Lead"]
    assert len(leads) == 1 and leads[0]["Company"] == "acme.io"
    assert leads[0]["LastName"] == "Lovelace" and leads[0]["FirstName"] == "Ada"


def test_the_notes_say_where_the_visitor_came_from(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    attio, pipedrive, salesforce = build(crm, redis_client, key_prefix)
    ev = event()
    for sink in (attio, pipedrive, salesforce):
        sink.deliver(ev, JOURNEY, sink.render_note(ev, JOURNEY))
    (a,) = crm.notes_with("attio", ev.marker)
    assert "- **UTM source:** producthunt" in a["content_markdown"]
    (p,) = crm.notes_with("pipedrive", ev.marker)
    assert "<li><strong>UTM source:</strong> producthunt</li>" in p["content"]
    (s,) = crm.notes_with("sf", ev.marker)
    assert "UTM source: producthunt" in s["Body"] and len(s["Title"]) <= 80


def test_salesforce_finds_a_contact_first_and_escapes_soql(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    salesforce = build(crm, redis_client, key_prefix)[2]
    crm.sf_records["003contact"] = {"type": "Contact", "Email": "o'brien@acme.io"}
    ev = event("o'brien@acme.io")
    result = salesforce.deliver(ev, JOURNEY, salesforce.render_note(ev, JOURNEY))
    assert result.detail == "note on record 003contact"
    assert soql_string("a'b\\c") == "'a\\'b\\\\c'"
    assert not [r for r in crm.sf_records.values() if r["type"] == "Lead"]


def test_salesforce_token_is_cached_and_renewed_on_401(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    salesforce = build(crm, redis_client, key_prefix)[2]
    salesforce.check()
    salesforce.check()
    assert crm.token_requests == 1
    crm.revoke_tokens()
    assert "API calls left today" in salesforce.check()
    assert crm.token_requests == 2
    bad = build(crm, redis_client, key_prefix, salesforce_client_secret="wrong-secret")[2]
    with pytest.raises(AuthFailed) as caught:
        bad.check()
    assert "invalid client credentials" in str(caught.value)
    assert "wrong-secret" not in str(caught.value)


def test_attio_429_with_an_http_date_is_a_shared_pause(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    attio = build(crm, redis_client, key_prefix)[0]
    crm.attio_limited = 1
    ev = event()
    with pytest.raises(RateLimited) as caught:
        attio.deliver(ev, JOURNEY, attio.render_note(ev, JOURNEY))
    assert caught.value.retry_after is not None and caught.value.retry_after <= 1.5
    assert "Rate limit exceeded" in str(caught.value)


def test_wrong_credentials_are_auth_errors(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    sinks = build(crm, redis_client, key_prefix, attio_api_key="nope", pipedrive_api_token="nope")
    for sink in sinks[:2]:
        with pytest.raises(AuthFailed):
            sink.check()


def test_names_split_for_crms_that_need_a_last_name() -> None:
    assert split_name(event(name="Ada")) == (None, "Ada")
    assert split_name(event(name="Ada King Lovelace")) == ("Ada", "King Lovelace")
    assert split_name(event(name=None)) == (None, "ada")


@pytest.mark.e2e
def test_a_signup_reaches_every_crm_once(crm: CrmFake, redis_server: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_server)
    prefix, queue = new_prefix(), new_queue()
    with FakeUpstream() as upstream:
        visitor = upstream.add_visitor(full_profile(utm_source="producthunt"))
        env = {
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "CELERY_QUEUE": queue,
            "WEBHOOK_SECRET": TEST_SECRET,
            "DATAFAST_API_KEY": upstream.datafast_key,
            "DATAFAST_BASE_URL": upstream.base_url("datafast"),
            **crm.env(),
        }
        try:
            with Service(env, tmp_path, workers=1, redis_client=client) as svc:
                event_id = f"evt_{uuid.uuid4().hex[:12]}"
                payload = {
                    "type": "signup",
                    "datafast_visitor_id": visitor,
                    "email": "grace@hopper.example",
                    "name": "Grace Hopper",
                }
                assert svc.send_event(payload, event_id=event_id).status_code == 202
                status = svc.wait_for_state(event_id, {"delivered"})
                again = svc.send_event(payload, event_id=event_id)
                assert again.json()["data"]["state"] == "duplicate"
        finally:
            cleanup_redis(client, prefix, queue)
            client.close()
    marker = f"visitor-enrich:{event_id}"
    for sink, store in NOTES.items():
        assert status["sinks"][sink]["state"] == "delivered", status["sinks"][sink]
        notes = crm.notes_with(store, marker)
        assert len(notes) == 1, sink
        assert "producthunt" in str(notes[0])
