"""Attio, Pipedrive and Salesforce: the person found or created by email, their journey fields
(only those that exist; created once by the set-up), one note per event, exactly once (the
marker found in the person's notes), their errors and limits, against a fake speaking their
documented formats; and end to end through the real processes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
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
from worker.integrations.hubspot import HUBSPOT_PROPERTIES, hubspot_contact_properties
from worker.integrations.pipedrive import PipedriveSink
from worker.integrations.salesforce import SalesforceSink, soql_string
from worker.journey import FirstTouch, JourneyContext, PageVisit, Prediction
from worker.journey_fields import JOURNEY_FIELDS, journey_field_values
from worker.ratelimit import SharedRateLimiter

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
JOURNEY = JourneyContext(
    provider="datafast",
    visitor_id=VISITOR,
    first_touch=FirstTouch(utm_source="producthunt", referrer="https://producthunt.com/"),
    first_visit_at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC),
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
    assert (result.detail or "").startswith("note on record 003contact; ")
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


# Journey fields ------------------------------------------------------------------------------


def test_the_journey_values_are_typed_and_hubspot_keeps_its_properties() -> None:
    values = journey_field_values(JOURNEY)
    assert values["first_touch"] == "producthunt" and values["visit_count"] == 6
    assert values["lead_score"] == 77 and values["lead_score_estimated"] is False
    assert values["first_visit_at"] == datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    assert "utm_medium" not in values and "pageview_count" not in values  # unknown: left out
    missing = JourneyContext.not_found("datafast", VISITOR, "no pageviews")
    assert journey_field_values(missing) == {"visitor_id": VISITOR}
    # HubSpot's ve_* properties are the same fields, its values the same values as text.
    assert [p["name"] for p in HUBSPOT_PROPERTIES] == [f"ve_{f.name}" for f in JOURNEY_FIELDS]
    props = hubspot_contact_properties(event(), JOURNEY)
    assert set(props) == {f"ve_{name}" for name in values}
    assert props["ve_visit_count"] == "6" and props["ve_lead_score_estimated"] == "false"
    assert props["ve_first_visit_at"] == "2026-03-01T23:30:00.000Z"


def test_each_crm_gets_the_journey_fields_with_its_own_keys_and_types(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    crm.define_journey_fields()
    attio, pipedrive, salesforce = build(crm, redis_client, key_prefix)
    for sink in (attio, pipedrive, salesforce):
        for ev in (event(), event()):  # two events: the field list is read once
            result = sink.deliver(ev, JOURNEY, sink.render_note(ev, JOURNEY))
            assert (result.detail or "").endswith("; 9 journey fields set"), result.detail
    a = crm.attio_person("ada@acme.io")
    assert a["ve_first_touch"] == "producthunt" and a["ve_visit_count"] == 6
    assert a["ve_lead_score_estimated"] is False and a["ve_lead_score"] == 77
    assert a["ve_first_visit_at"] == "2026-03-01T23:30:00.000Z"
    assert a["ve_referrer"] == "https://producthunt.com/"
    assert a["ve_last_page"] == "https://shop.example/pricing"
    p = crm.pipedrive_person("ada@acme.io")
    assert p["VE First touch"] == "producthunt" and p["VE Visits"] == 6
    assert p["VE First visit"] == "2026-03-01"  # a Pipedrive date field: the UTC day
    assert p["VE Lead score estimated"] == "no"
    (written,) = crm.pipedrive_values.values()
    assert all(re.fullmatch(r"[0-9a-f]{40}", key) for key in written)  # the hash keys
    (lead,) = [r for r in crm.sf_records.values() if r["type"] == "Lead"]
    assert lead["VE_First_Touch__c"] == "producthunt" and lead["VE_Visit_Count__c"] == 6
    assert lead["VE_Lead_Score_Estimated__c"] is False
    assert lead["VE_First_Visit_At__c"] == "2026-03-01T23:30:00.000Z"
    # One list read per CRM, and Attio writes the fields in the assert call itself.
    calls = [f"{method} {path.split('?')[0]}" for method, path in crm.requests]
    assert calls.count("GET /attio/v2/objects/people/attributes") == 1
    assert calls.count("PUT /attio/v2/objects/people/records") == 2
    assert calls.count("GET /pipedrive/api/v1/personFields") == 1
    assert calls.count("GET /salesforce/services/data/v60.0/sobjects/Contact/describe") == 1
    assert calls.count("GET /salesforce/services/data/v60.0/sobjects/Lead/describe") == 1


def test_a_contact_gets_the_contact_fields(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    crm.define_journey_fields(crms=["salesforce"])
    salesforce = build(crm, redis_client, key_prefix)[2]
    crm.sf_records["003contact"] = {"type": "Contact", "Email": "grace@acme.io"}
    ev = event("grace@acme.io")
    salesforce.deliver(ev, JOURNEY, salesforce.render_note(ev, JOURNEY))
    assert crm.sf_records["003contact"]["VE_First_Touch__c"] == "producthunt"
    assert ("PATCH", "/salesforce/services/data/v60.0/sobjects/Contact/003contact") in [
        (m, p.rstrip("?")) for m, p in crm.requests
    ]


def test_missing_fields_are_skipped_and_never_sent(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    some = [f for f in JOURNEY_FIELDS if f.name in ("first_touch", "visit_count")]
    crm.define_journey_fields(some)
    for sink in build(crm, redis_client, key_prefix):
        ev = event()
        result = sink.deliver(ev, JOURNEY, sink.render_note(ev, JOURNEY))
        assert (result.detail or "").endswith("; 2 journey fields set"), result.detail
        assert len(crm.notes_with(NOTES[sink.name], ev.marker)) == 1
    assert set(crm.attio_person("ada@acme.io")) == {"ve_first_touch", "ve_visit_count"}
    assert set(crm.pipedrive_person("ada@acme.io")) == {"VE First touch", "VE Visits"}
    lead = crm.sf_person("ada@acme.io")
    assert {k for k in lead if k.startswith("VE_")} == {"VE_First_Touch__c", "VE_Visit_Count__c"}


def test_without_any_field_the_note_says_which_command_creates_them(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    for sink in build(crm, redis_client, key_prefix):
        ev = event()
        result = sink.deliver(ev, JOURNEY, sink.render_note(ev, JOURNEY))
        assert f"visitor-enrich {sink.name}-setup" in (result.detail or "")
        assert len(crm.notes_with(NOTES[sink.name], ev.marker)) == 1


def test_a_refused_field_update_still_posts_the_note_once(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    crm.define_journey_fields()
    sinks = build(crm, redis_client, key_prefix)
    for sink in sinks:
        for scope in sink.field_scopes():
            sink.field_keys(scope)  # the list is read (and kept) ...
    # ... then a field goes away behind the process's back.
    crm.attio_attributes["ve_first_touch"]["is_archived"] = True
    crm.pipedrive_fields = [f for f in crm.pipedrive_fields if f["name"] != "VE First touch"]
    crm.sf_hidden.add("lead.ve_first_touch__c")
    for sink in sinks:
        ev = event()
        result = sink.deliver(ev, JOURNEY, sink.render_note(ev, JOURNEY))
        assert "journey fields not set" in (result.detail or ""), result.detail
        assert len(crm.notes_with(NOTES[sink.name], ev.marker)) == 1
        assert sink.already_delivered(ev) is True
        # The list is read again: the next event writes the fields that are left.
        again = event()
        result = sink.deliver(again, JOURNEY, sink.render_note(again, JOURNEY))
        assert (result.detail or "").endswith("; 8 journey fields set"), result.detail
    assert "ve_visit_count" in crm.attio_person("ada@acme.io")
    assert crm.pipedrive_person("ada@acme.io")["VE Visits"] == 6
    assert crm.sf_person("ada@acme.io")["VE_Visit_Count__c"] == 6


def test_a_429_on_the_fields_posts_no_note_until_the_retry(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    crm.define_journey_fields(crms=["attio"])
    attio = build(crm, redis_client, key_prefix)[0]
    attio.field_keys("")
    crm.attio_limited = 1  # the assert call, which carries the fields, is limited
    ev = event()
    with pytest.raises(RateLimited):
        attio.deliver(ev, JOURNEY, attio.render_note(ev, JOURNEY))
    assert crm.notes_with("attio", ev.marker) == []
    assert attio.already_delivered(ev) is False
    attio.deliver(ev, JOURNEY, attio.render_note(ev, JOURNEY))
    assert len(crm.notes_with("attio", ev.marker)) == 1
    assert crm.attio_person("ada@acme.io")["ve_first_touch"] == "producthunt"


def test_setup_creates_only_the_missing_fields_once(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    crm.define_journey_fields([f for f in JOURNEY_FIELDS if f.name == "first_touch"])
    attio, pipedrive, salesforce = build(crm, redis_client, key_prefix)
    assert "1 of 15 journey fields exist, 14 missing" in attio.check()
    first = [sink.ensure_fields() for sink in (attio, pipedrive, salesforce)]
    assert [len(s.created) for s in first] == [14, 14, 28]  # Salesforce: Contact and Lead
    assert "ve_visitor_id" in first[0].created and "VE Visits" in first[1].created
    assert "Lead.VE_Lead_Score_Estimated__c" in first[2].created
    assert crm.attio_attributes["ve_first_visit_at"]["type"] == "timestamp"
    assert crm.attio_attributes["ve_lead_score_estimated"]["type"] == "checkbox"
    assert crm.attio_attributes["ve_visit_count"]["type"] == "number"
    types = {f["name"]: f["field_type"] for f in crm.pipedrive_fields}
    assert types["VE Visits"] == "double" and types["VE First visit"] == "date"
    assert types["VE Lead score estimated"] == "varchar"
    assert crm.sf_fields["Contact"]["ve_visit_count__c"]["type"] == "double"
    assert [f["name"] for f in crm.pipedrive_fields].count("VE First touch") == 1
    # Run again: nothing new. Salesforce's new fields are hidden until the admin grants
    # field-level security: they exist, the sink cannot write them, and says so.
    second = [sink.ensure_fields() for sink in (attio, pipedrive, salesforce)]
    assert [s.created for s in second] == [[], [], []]
    assert [len(s.unwritable) for s in second] == [0, 0, 28]
    assert "all 15 journey fields exist" in attio.check()
    assert "all 15 journey fields exist" in pipedrive.check()
    assert "1 of 15 journey fields exist on Contact" in salesforce.check()
    crm.grant_salesforce_fields()
    third = salesforce.ensure_fields()
    assert third.created == [] and third.unwritable == []
    status = salesforce.check()
    assert "all 15 journey fields exist on Contact" in status
    assert "all 15 journey fields exist on Lead" in status
    ev = event()
    result = salesforce.deliver(ev, JOURNEY, salesforce.render_note(ev, JOURNEY))
    assert (result.detail or "").endswith("; 9 journey fields set")


def test_journey_fields_can_be_turned_off(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    crm.define_journey_fields()
    for sink in build(crm, redis_client, key_prefix, crm_journey_fields=False):
        ev = event()
        result = sink.deliver(ev, JOURNEY, sink.render_note(ev, JOURNEY))
        assert (result.detail or "").endswith("; journey fields off (CRM_JOURNEY_FIELDS)")
        assert "journey fields off" in sink.check()
    assert crm.attio_person("ada@acme.io") == {}
    listed = [p for _, p in crm.requests if "attributes" in p or "personFields" in p]
    assert listed == [] and not [p for _, p in crm.requests if "describe" in p]


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


def test_pipedrive_pages_through_notes_and_person_fields(
    crm: CrmFake, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.integrations.pipedrive as pipedrive

    monkeypatch.setattr(pipedrive, "NOTES_PAGE", 2)
    monkeypatch.setattr(pipedrive, "FIELDS_PAGE", 3)
    _, sink, _ = build(crm, redis_client, key_prefix)
    assert isinstance(sink, PipedriveSink)
    sink.ensure_fields()  # 15 fields: five pages of three
    assert len(sink.field_keys("", fresh=True)) == len(JOURNEY_FIELDS)
    first = event()
    sink.deliver(first, JOURNEY, sink.render_note(first, JOURNEY))
    for _ in range(4):  # newer notes push the first one to the third page
        later = event()
        sink.deliver(later, JOURNEY, sink.render_note(later, JOURNEY))
    assert sink.already_delivered(first) is True
    assert sink.already_delivered(event()) is False
    note_reads = [path for method, path in crm.requests if method == "GET" and "/notes?" in path]
    assert {m.group(1) for p in note_reads if (m := re.search(r"start=(\d+)", p))} >= {
        "0",
        "2",
        "4",
    }
