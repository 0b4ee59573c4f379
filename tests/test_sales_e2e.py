"""The sales tools end to end, through the real web process and Celery worker processes, with
the variables pointing at the fakes as the README says: each vendor's own signed webhook in,
notes and alerts out.

One service start for the group (``sales``): a Stripe ``checkout.session.completed`` signed by
Stripe's scheme gives one note in each CRM (HubSpot, Attio, Pipedrive, Salesforce) and the
journey fields on the person in each, one alert in each channel (Slack, Discord, Teams,
Telegram) naming the amount and the first touch, and one signed outbound webhook (verified
with ``standardwebhooks``); a HubSpot
``contact.creation`` batch of three gives three notes on those very contacts; a Clerk
``user.created`` a note on the contact by email; every replayed webhook is a duplicate and
nothing is posted twice; a bad signature is 401 and queues nothing.

A second start kills the only worker with SIGKILL while every CRM (HubSpot, Attio, Pipedrive,
Salesforce, all played by ``FaultyUpstreamWithCrms``) holds its note call, having made the
note at once; each sink's status says ``posting``. Another worker finds one note on the person
in each CRM: each CRM sink looks for the event's marker before it posts again ("found in the
sink after a restart"). Slack, posted beside them, cannot be asked: one repeat at most. Like
tests/test_faults.py it uses Redis database 9 with a 10 s visibility timeout.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from channel_fakes import ChannelFake
from crm_fakes import CrmFake
from fakes import FakeUpstream, full_profile
from faults_support import FaultService, FaultyUpstreamWithCrms
from harness import (
    REDIS_URL,
    Service,
    cleanup_redis,
    new_prefix,
    new_queue,
    wait_for,
)
from sales_support import (
    CLERK_SECRET,
    HUBSPOT_APP_SECRET,
    OUTBOUND_SECRET,
    STRIPE_SECRET,
    clerk_user_created,
    dumps,
    hubspot_creation_batch,
    hubspot_headers,
    stripe_checkout_completed,
    stripe_headers,
    svix_headers,
)
from standardwebhooks.webhooks import Webhook

from worker.integrations.hubspot import HUBSPOT_PROPERTIES

pytestmark = pytest.mark.e2e

FIRST_TOUCH = "hn-launch-week / social / black-friday"  # full_profile()'s first touch
KILL_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/9"  # as tests/test_faults.py, see its docstring


def sales_env(fake: FakeUpstream, **overrides: str) -> dict[str, str]:
    """The service pointed at the fakes, with every sales variable set (README "Stripe" ...)."""
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": new_prefix(),
        "CELERY_QUEUE": new_queue(),
        **fake.env(),
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "CLERK_WEBHOOK_SECRET": CLERK_SECRET,
        "HUBSPOT_APP_SECRET": HUBSPOT_APP_SECRET,
        "OUTBOUND_WEBHOOK_URL": fake.base_url("webhook"),
        "OUTBOUND_WEBHOOK_SECRET": OUTBOUND_SECRET,
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "1",
    }
    env.update(overrides)
    return env


def prepare(fake: FakeUpstream) -> str:
    """A visitor with a journey, and the portal's custom contact properties."""
    fake.define_contact_properties(
        ["datafast_visitor_id", *(p["name"] for p in HUBSPOT_PROPERTIES)]
    )
    return fake.add_visitor(full_profile(score=90))


def post_stripe(http: httpx.Client, payload: dict[str, Any]) -> httpx.Response:
    body = dumps(payload)
    return http.post("/v1/webhooks/stripe", content=body, headers=stripe_headers(body))


def post_hubspot(svc: Service, batch: list[dict[str, Any]]) -> httpx.Response:
    assert svc.http is not None
    body = dumps(batch)
    # What HubSpot signs: the full URL it calls (here the service's own address).
    headers = hubspot_headers(f"{svc.url}/v1/webhooks/hubspot", body)
    return svc.http.post("/v1/webhooks/hubspot", content=body, headers=headers)


def notes_on(fake: FakeUpstream, contact_id: str) -> list[dict[str, Any]]:
    return [
        n
        for n in fake.hubspot_notes()
        if any(a["to"]["id"] == contact_id for a in n.get("associations", []))
    ]


def deliveries_for(fake: FakeUpstream, event_id: str) -> list[Any]:
    return [d for d in fake.webhook_deliveries() if d.headers.get("webhook-id") == event_id]


# One service for the group ----------------------------------------------------------------


@dataclass
class Sales:
    svc: Service
    fake: FakeUpstream
    crm: CrmFake
    channels: ChannelFake
    visitor: str


@pytest.fixture(scope="module")
def sales(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sales]:
    client = redis.Redis.from_url(REDIS_URL)
    with FakeUpstream() as fake, CrmFake() as crm, ChannelFake() as channels:
        visitor = prepare(fake)
        crm.define_journey_fields()  # as if attio-setup, pipedrive-setup, salesforce-setup ran
        # Every CRM and alert channel too: a payment reaches each of them.
        env = sales_env(fake, **crm.env(), **channels.env())
        try:
            with Service(env, tmp_path_factory.mktemp("sales"), workers=2) as svc:
                yield Sales(svc, fake, crm, channels, visitor)
        finally:
            cleanup_redis(client, env["REDIS_KEY_PREFIX"], env["CELERY_QUEUE"])
            client.close()


def test_stripe_checkout_gives_one_note_one_alert_and_one_signed_webhook(sales: Sales) -> None:
    svc, fake = sales.svc, sales.fake
    assert svc.http is not None
    payload = stripe_checkout_completed(sales.visitor, email="grace@example.com")
    event_id = f"stripe:{payload['id']}"
    first = post_stripe(svc.http, payload)
    assert first.status_code == 202, first.text
    status = svc.wait_for_state(event_id, {"delivered"}, timeout=30)
    states = {s: r["state"] for s, r in status["sinks"].items()}
    assert states.pop("zendesk") == "skipped"  # no ticket
    assert states == dict.fromkeys(
        ("hubspot", "attio", "pipedrive", "salesforce", "slack", "discord", "teams",
         "telegram", "webhook"),
        "delivered",
    )  # fmt: skip
    contact = fake.hubspot_contact("grace@example.com")
    assert contact is not None
    (note,) = notes_on(fake, contact["id"])
    body = note["properties"]["hs_note_body"]
    assert "Payment of 49.00 EUR by Grace Hopper" in body
    assert "Pro plan" in body and FIRST_TOUCH in body
    (alert,) = fake.slack_messages(contains=event_id)
    assert f"Bought Pro plan for 49.00 EUR, first came from {FIRST_TOUCH}" in alert["text"]
    # The other CRMs' notes and the other channels' alerts say the same.
    marker = f"visitor-enrich:{event_id}"
    for system in ("attio", "pipedrive", "sf"):
        (crm_note,) = sales.crm.notes_with(system, marker)
        assert "49.00 EUR" in str(crm_note) and FIRST_TOUCH in str(crm_note), system
    # And their persons carry the journey fields, each under its own CRM's name.
    email = "grace@example.com"
    attio, pipedrive = sales.crm.attio_person(email), sales.crm.pipedrive_person(email)
    salesforce = sales.crm.sf_person(email)
    assert attio["ve_first_touch"] == pipedrive["VE First touch"] == FIRST_TOUCH
    assert salesforce["VE_First_Touch__c"] == FIRST_TOUCH
    assert attio["ve_visitor_id"] == salesforce["VE_Visitor_Id__c"] == sales.visitor
    assert attio["ve_lead_score"] == pipedrive["VE Lead score"] == 90
    for sink in ("attio", "pipedrive", "salesforce"):
        assert "journey fields set" in status["sinks"][sink]["reason"], status["sinks"][sink]
    for channel in ("discord", "teams", "telegram"):
        (message,) = sales.channels.messages(channel, contains=marker)
        text = json.dumps(message)
        assert "49.00 EUR" in text and "Pro plan" in text and FIRST_TOUCH in text, channel
    (delivery,) = deliveries_for(fake, event_id)
    verified = Webhook(OUTBOUND_SECRET).verify(delivery.body.decode(), delivery.headers)
    assert verified["event"]["payment"]["amount"] == 49.0
    assert verified["journey"]["visitor_id"] == sales.visitor

    # Stripe retries (the same event, signed anew): a duplicate, nothing posted again.
    again = post_stripe(svc.http, payload)
    assert again.status_code == 200 and again.json()["data"]["state"] == "duplicate"
    time.sleep(1.5)
    assert len(notes_on(fake, contact["id"])) == 1
    assert len(fake.slack_messages(contains=event_id)) == 1
    assert len(deliveries_for(fake, event_id)) == 1
    assert [len(sales.crm.notes_with(s, marker)) for s in ("attio", "pipedrive", "sf")] == [1] * 3
    assert [
        len(sales.channels.messages(c, contains=marker)) for c in ("discord", "teams", "telegram")
    ] == [1] * 3


def test_stripe_checkout_without_the_visitor_id_still_notes_the_payment(sales: Sales) -> None:
    svc, fake = sales.svc, sales.fake
    assert svc.http is not None
    payload = stripe_checkout_completed(None, email="anon@example.com", amount_total=1500)
    assert post_stripe(svc.http, payload).status_code == 202
    svc.wait_for_state(f"stripe:{payload['id']}", {"delivered"}, timeout=30)
    contact = fake.hubspot_contact("anon@example.com")
    assert contact is not None
    (note,) = notes_on(fake, contact["id"])
    body = note["properties"]["hs_note_body"]
    assert "No visitor journey found" in body and "metadata.datafast_visitor_id" in body
    assert "15.00 EUR" in body


def test_hubspot_batch_of_three_gives_three_notes_on_those_contacts(sales: Sales) -> None:
    svc, fake = sales.svc, sales.fake
    contacts = [
        fake.add_contact(f"lead{i}-{uuid.uuid4().hex[:6]}@example.com",
                         datafast_visitor_id=sales.visitor)
        for i in range(3)
    ]  # fmt: skip
    before = len(fake.contacts)
    batch = hubspot_creation_batch(contacts)
    response = post_hubspot(svc, batch)
    assert response.status_code == 202, response.text
    ids = [e["eventId"] for e in response.json()["data"]["events"]]
    assert ids == [f"hubspot:{item['eventId']}" for item in batch]
    for event_id in ids:
        svc.wait_for_state(event_id, {"delivered"}, timeout=30)
    for contact_id, event_id in zip(contacts, ids, strict=True):
        (note,) = notes_on(fake, contact_id)
        email = fake.contacts[contact_id]["properties"]["email"]
        assert FIRST_TOUCH in note["properties"]["hs_note_body"]
        assert email in note["properties"]["hs_note_body"]  # read from the contact
        (alert,) = fake.slack_messages(contains=event_id)  # a hot lead (score 90)
        assert email in alert["text"]
    assert len(fake.contacts) == before  # the notes went on them, no contact was created

    # HubSpot retries the batch: every entry a duplicate, no second note.
    again = post_hubspot(svc, batch)
    assert again.status_code == 200
    assert {e["state"] for e in again.json()["data"]["events"]} == {"duplicate"}
    time.sleep(1.5)
    assert [len(notes_on(fake, c)) for c in contacts] == [1, 1, 1]


def test_clerk_user_created_gives_a_note_and_a_resend_is_a_duplicate(sales: Sales) -> None:
    svc, fake = sales.svc, sales.fake
    assert svc.http is not None
    email = f"ada-{uuid.uuid4().hex[:6]}@example.com"
    body = dumps(clerk_user_created(unsafe={"datafast_visitor_id": sales.visitor}, email=email))
    headers = svix_headers(body)
    first = svc.http.post("/v1/webhooks/clerk", content=body, headers=headers)
    assert first.status_code == 202, first.text
    event_id = first.json()["data"]["eventId"]
    assert event_id == f"clerk:{headers['svix-id']}"
    svc.wait_for_state(event_id, {"delivered"}, timeout=30)
    contact = fake.hubspot_contact(email)
    assert contact is not None and len(notes_on(fake, contact["id"])) == 1
    resend = svc.http.post("/v1/webhooks/clerk", content=body, headers=svix_headers(
        body, msg_id=headers["svix-id"]))  # fmt: skip
    assert resend.status_code == 200 and resend.json()["data"]["state"] == "duplicate"
    time.sleep(1.0)
    assert len(notes_on(fake, contact["id"])) == 1


def test_bad_signatures_are_401_and_queue_nothing(sales: Sales) -> None:
    svc = sales.svc
    assert svc.http is not None
    payload = stripe_checkout_completed(sales.visitor)
    body = dumps(payload)
    forged = stripe_headers(body, secret="whsec_not_the_secret")
    assert svc.http.post("/v1/webhooks/stripe", content=body, headers=forged).status_code == 401
    clerk = dumps(clerk_user_created())
    bad = {**svix_headers(clerk), "svix-signature": "v1,AAAA"}
    assert svc.http.post("/v1/webhooks/clerk", content=clerk, headers=bad).status_code == 401
    batch = dumps(hubspot_creation_batch(["1"]))
    wrong = hubspot_headers(f"{svc.url}/v1/webhooks/hubspot", batch, secret="nope")
    assert svc.http.post("/v1/webhooks/hubspot", content=batch, headers=wrong).status_code == 401
    assert svc.status(f"stripe:{payload['id']}") is None


def test_no_sales_secret_in_the_logs(sales: Sales) -> None:
    # After the tests above: every webhook verified, refused and delivered is in these logs.
    logs = sales.svc.logs()
    assert "webhook" in logs  # the logs are there
    for secret in (STRIPE_SECRET, CLERK_SECRET, HUBSPOT_APP_SECRET, OUTBOUND_SECRET):
        assert secret not in logs
        assert secret.removeprefix("whsec_") not in logs


# kill -9 between the CRM note call and its record ---------------------------------------

# Each CRM sink's note call, as the fake sees it (the fake's services are named as the sinks).
NOTE_CALLS = {
    "hubspot": "/hubspot/crm/v3/objects/notes",
    "attio": "/attio/v2/notes",
    "pipedrive": "/pipedrive/api/v1/notes",
    "salesforce": "/salesforce/services/data/v60.0/sobjects/Note",
}
# How late each CRM answers its note: long enough for the four calls to be held at once on a
# busy machine, shorter than HTTP_READ_TIMEOUT (10 s) so that none times out before the kill.
NOTE_HOLD_SECONDS = 8.0


def crm_notes_on(fake: FaultyUpstreamWithCrms, email: str) -> dict[str, int]:
    """How many notes each CRM holds on its person with ``email``."""
    crm = fake.crm
    contact = fake.hubspot_contact(email)
    attio, pipedrive = crm.attio_people.get(email), crm.pipedrive_people.get(email)
    salesforce = {i for i, r in crm.sf_records.items() if r.get("Email") == email}
    return {
        "hubspot": len(notes_on(fake, contact["id"])) if contact else 0,
        "attio": sum(n["parent_record_id"] == attio for n in crm.notes["attio"]),
        "pipedrive": sum(n["person_id"] == pipedrive for n in crm.notes["pipedrive"]),
        "salesforce": sum(n["ParentId"] in salesforce for n in crm.notes["sf"]),
    }


def test_kill9_between_each_crm_note_and_its_record_leaves_one_note(
    redis_server: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(KILL_REDIS_URL)
    email = "killed@example.com"
    with FaultyUpstreamWithCrms() as fake:
        visitor = prepare(fake)
        env = sales_env(
            fake,
            REDIS_URL=KILL_REDIS_URL,
            BROKER_VISIBILITY_TIMEOUT="10",
            HTTP_READ_TIMEOUT="10",
            OUTBOUND_WEBHOOK_URL="",
            OUTBOUND_WEBHOOK_SECRET="",
        )
        # Each CRM creates the note at once and answers late (``match``: the path, then the body).
        for sink, path in NOTE_CALLS.items():
            fake.delay(sink, NOTE_HOLD_SECONDS, method="POST", match=f"{path}\n")

        def all_held() -> bool:
            held = {h.path for h in fake.in_flight() if h.method == "POST"}
            return held >= set(NOTE_CALLS.values())

        try:
            with FaultService(env, tmp_path, workers=1, redis_client=client) as svc:
                assert svc.http is not None
                payload = stripe_checkout_completed(visitor, email=email)
                event_id = f"stripe:{payload['id']}"
                assert post_stripe(svc.http, payload).status_code == 202
                wait_for(all_held, 20, message="the four note calls held by the fake")
                (worker,) = svc.alive_workers()
                svc.kill_worker(worker.pid)
                at_kill = {s: r["state"] for s, r in (svc.status(event_id) or {})["sinks"].items()}
                assert {s: at_kill[s] for s in NOTE_CALLS} == dict.fromkeys(NOTE_CALLS, "posting")
                svc.spawn_worker()
                final = svc.wait_for_state(event_id, {"delivered"}, timeout=90)
                time.sleep(1.0)
        finally:
            cleanup_redis(client, env["REDIS_KEY_PREFIX"], env["CELERY_QUEUE"])
            client.close()
    # Every sink the payment reached is accounted for below (Zendesk: no ticket).
    assert set(final["sinks"]) == {*NOTE_CALLS, "slack", "zendesk"}
    notes = crm_notes_on(fake, email)
    assert notes == dict.fromkeys(NOTE_CALLS, 1), notes
    for sink, path in NOTE_CALLS.items():
        assert final["sinks"][sink]["reason"] == "found in the sink after a restart", sink
        posts = [r for r in fake.requests if r.method == "POST" and r.path == path]
        assert len(posts) == 1, sink  # the new worker looked for the note instead of posting
    # Slack cannot be asked: an alert recorded before the kill is never posted again; one
    # posted and not yet recorded may repeat once, as documented.
    slack = len(fake.slack_messages(contains=event_id))
    assert (slack == 1) if at_kill["slack"] == "delivered" else (1 <= slack <= 2), at_kill
