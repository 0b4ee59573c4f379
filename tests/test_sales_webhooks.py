"""The sales tools' webhooks in: Stripe, Clerk and HubSpot. Their signatures against the
vendors' own algorithms, the payload mapping, the HubSpot contact lookup and note target, and
the web endpoints (TestClient: 401, 202, 200 duplicate, 200 ignored, 422)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fakes import DATAFAST_KEY, FakeUpstream, full_profile
from fastapi.testclient import TestClient
from harness import TEST_SECRET, queue_length
from sales_support import (
    CLERK_SECRET,
    HUBSPOT_APP_SECRET,
    STRIPE_SECRET,
    clerk_user_created,
    dumps,
    hubspot_creation_batch,
    hubspot_headers,
    stripe_checkout_completed,
    stripe_headers,
    stripe_payment_intent_succeeded,
    svix_headers,
)
from stripe import SignatureVerificationError, WebhookSignature

from config import ConfigError, Settings, load_settings
from worker.errors import RateLimited
from worker.events import Event, EventRejected
from worker.inbound import Ignored, WebhookRequest
from worker.integrations.clerk import ClerkWebhook, parse_clerk_event
from worker.integrations.datafast import VisitorProfile, to_journey
from worker.integrations.hubspot import (
    HUBSPOT_PROPERTIES,
    HubSpotSink,
    HubSpotWebhook,
    parse_hubspot_webhook,
    verify_hubspot_v3,
)
from worker.integrations.stripe import (
    major_units,
    parse_stripe_event,
    verify_stripe_signature,
)
from worker.runtime import Runtime, build_runtime
from worker.signature import SignatureError
from worker.tasks import fetch_context
from worker.web import create_app

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stripe_webhook_secret": STRIPE_SECRET,
        "clerk_webhook_secret": CLERK_SECRET,
        "hubspot_app_secret": HUBSPOT_APP_SECRET,
    }
    values.update(overrides)
    return load_settings(_env_file=None, **values)


def request(body: bytes, headers: dict[str, str], url: str = "/v1/webhooks/x") -> WebhookRequest:
    return WebhookRequest(
        method="POST", url=url, body=body, headers={k.lower(): v for k, v in headers.items()}
    )


# Stripe: the signature, held to the stripe library's verdict -----------------------------


def _stripe_verdict(body: bytes, header: str, secret: str) -> bool:
    try:
        WebhookSignature.verify_header(body, header, secret, tolerance=300)
    except SignatureVerificationError:
        return False
    return True


def _our_verdict(body: bytes, header: str, secrets: list[str]) -> bool:
    try:
        verify_stripe_signature(body, header, secrets)
    except SignatureError:
        return False
    return True


def test_stripe_signature_agrees_with_the_stripe_library() -> None:
    body = dumps(stripe_checkout_completed(VISITOR))
    now = int(time.time())
    good = stripe_headers(body, at=now)["Stripe-Signature"]
    signature = good.split("v1=")[1]
    other = "whsec_another_secret_value_000000"
    cases = {
        "signed now": (body, good),
        "another secret": (body, stripe_headers(body, other, at=now)["Stripe-Signature"]),
        "body changed": (body.replace(b"4900", b"4901"), good),
        "301 s old": (body, stripe_headers(body, at=now - 301)["Stripe-Signature"]),
        "299 s old": (body, stripe_headers(body, at=now - 299)["Stripe-Signature"]),
        "v0 only": (body, f"t={now},v0={signature}"),
        "a wrong v1 then the right one": (body, f"t={now},v1={'0' * 64},v1={signature}"),
        "no timestamp": (body, f"v1={signature}"),
        "garbage": (body, "nonsense"),
    }
    verdicts = {
        name: (_our_verdict(b, h, [STRIPE_SECRET]), _stripe_verdict(b, h, STRIPE_SECRET))
        for name, (b, h) in cases.items()
    }
    assert all(ours == theirs for ours, theirs in verdicts.values()), verdicts
    accepted = {name for name, (ours, _) in verdicts.items() if ours}
    assert accepted == {"signed now", "299 s old", "a wrong v1 then the right one"}


def test_stripe_signature_any_rotated_secret_and_no_far_future() -> None:
    body = dumps(stripe_checkout_completed(VISITOR))
    header = stripe_headers(body)["Stripe-Signature"]
    assert _our_verdict(body, header, ["whsec_old_one", STRIPE_SECRET])
    assert not _our_verdict(body, header, ["whsec_old_one"])
    future = stripe_headers(body, at=int(time.time()) + 3600)["Stripe-Signature"]
    assert not _our_verdict(body, future, [STRIPE_SECRET])


# Stripe: the mapping ------------------------------------------------------------------------


def test_checkout_session_completed_is_a_payment_event() -> None:
    payload = stripe_checkout_completed(VISITOR, event_id="evt_1Abc", amount_total=129900)
    event = parse_stripe_event(payload, make_settings())
    assert event.id == "stripe:evt_1Abc"
    assert event.type == "payment" and event.inbound == "stripe"
    assert event.visitor_id == VISITOR
    assert event.email == "buyer@example.com" and event.name == "Grace Hopper"
    assert event.payment is not None
    assert (event.payment.amount, event.payment.currency) == (1299.0, "EUR")
    assert event.payment.description == "Pro plan"
    assert event.missing_reason is None
    assert event.external["stripe_customer_id"].startswith("cus_")


def test_a_delayed_payment_counts_when_it_succeeds() -> None:
    completed = stripe_checkout_completed(VISITOR)
    completed["data"]["object"]["payment_status"] = "unpaid"
    with pytest.raises(Ignored, match="async_payment_succeeded"):
        parse_stripe_event(completed, make_settings())
    succeeded = {**completed, "id": "evt_later", "type": "checkout.session.async_payment_succeeded"}
    succeeded["data"] = {"object": {**completed["data"]["object"], "payment_status": "paid"}}
    event = parse_stripe_event(succeeded, make_settings())
    assert event.id == "stripe:evt_later" and event.visitor_id == VISITOR
    assert event.payment is not None and event.payment.amount == 49.0


def test_checkout_without_the_visitor_id_says_how_to_set_it() -> None:
    payload = stripe_checkout_completed(None, description=None, mode="subscription")
    event = parse_stripe_event(payload, make_settings())
    assert event.visitor_id is None
    assert event.missing_reason is not None
    assert "metadata.datafast_visitor_id" in event.missing_reason
    assert "stripe.checkout.sessions.create" in event.missing_reason
    assert event.payment is not None and event.payment.description is not None
    assert "subscription" in event.payment.description


def test_checkout_metadata_key_is_configurable_and_ids_must_be_uuids() -> None:
    payload = stripe_checkout_completed(VISITOR, metadata_key="df_vid")
    assert parse_stripe_event(payload, make_settings()).visitor_id is None
    settings = make_settings(stripe_visitor_metadata_key="df_vid")
    assert parse_stripe_event(payload, settings).visitor_id == VISITOR
    bad = stripe_checkout_completed("not-a-uuid")
    event = parse_stripe_event(bad, make_settings())
    assert event.visitor_id is None and "not a UUID" in (event.missing_reason or "")
    assert parse_stripe_event(bad, make_settings(), require_uuid=False).visitor_id == "not-a-uuid"


def test_payment_intent_only_with_the_visitor_id_and_zero_decimal_currencies() -> None:
    event = parse_stripe_event(stripe_payment_intent_succeeded(VISITOR), make_settings())
    assert event.payment is not None
    assert (event.payment.amount, event.payment.currency) == (120000.0, "JPY")
    assert event.email == "ops@example.jp" and event.payment.description == "Annual licence"
    with pytest.raises(Ignored, match=r"metadata\.datafast_visitor_id"):
        parse_stripe_event(stripe_payment_intent_succeeded(None), make_settings())
    assert major_units(1999, "usd") == 19.99
    assert major_units(5000, "kwd") == 5.0
    assert major_units("12", "usd") is None


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        ({"type": "invoice.paid", "id": "evt_1"}, Ignored, "invoice.paid"),
        ({"type": "checkout.session.completed", "id": "evt_1"}, EventRejected, "data.object"),
        ({"type": "checkout.session.completed", "data": {"object": {}}}, EventRejected, "id:"),
        ([1, 2], EventRejected, "body"),
    ],
)
def test_stripe_unhandled_or_malformed(payload: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        parse_stripe_event(payload, make_settings())


# Clerk ---------------------------------------------------------------------------------------


def test_clerk_svix_signature_good_wrong_stale_and_rotated() -> None:
    adapter = ClerkWebhook(make_settings())
    body = dumps(clerk_user_created(unsafe={"datafast_visitor_id": VISITOR}))
    adapter.verify(request(body, svix_headers(body)))
    other = "whsec_" + "b3RoZXItc2VjcmV0LXZhbHVlLTAwMDAwMDAwMA=="
    with pytest.raises(SignatureError):
        adapter.verify(request(body, svix_headers(body, secret=other)))
    stale = datetime.now(UTC) - timedelta(minutes=6)
    with pytest.raises(SignatureError, match="too old"):
        adapter.verify(request(body, svix_headers(body, at=stale)))
    with pytest.raises(SignatureError):
        adapter.verify(request(body + b" ", svix_headers(body)))
    with pytest.raises(SignatureError):
        adapter.verify(request(body, {}))
    rotated = ClerkWebhook(make_settings(clerk_webhook_secret=f"{other}, {CLERK_SECRET}"))
    rotated.verify(request(body, svix_headers(body)))
    rotated.verify(request(body, svix_headers(body, secret=other)))


def test_clerk_secret_must_be_whsec_base64() -> None:
    with pytest.raises(ConfigError, match="CLERK_WEBHOOK_SECRET"):
        make_settings(clerk_webhook_secret="not-a-svix-secret")


def test_clerk_user_created_is_a_signup_with_the_primary_email() -> None:
    payload = clerk_user_created(
        public={"datafast_visitor_id": VISITOR},
        unsafe={"datafast_visitor_id": str(uuid.uuid4())},
    )
    event = parse_clerk_event(payload, "msg_2abc", make_settings())
    assert event.id == "clerk:msg_2abc"
    assert event.type == "signup" and event.inbound == "clerk"
    assert event.email == "ada@example.com" and event.name == "Ada Lovelace"
    assert event.visitor_id == VISITOR  # public_metadata (backend-written) first
    assert event.user_id == payload["data"]["id"]
    unsafe_only = clerk_user_created(unsafe={"vid": VISITOR})
    settings = make_settings(clerk_visitor_metadata_key="vid")
    assert parse_clerk_event(unsafe_only, "m", settings).visitor_id == VISITOR


def test_clerk_without_the_visitor_id_or_other_types() -> None:
    event = parse_clerk_event(clerk_user_created(), "m1", make_settings())
    assert event.visitor_id is None
    assert "unsafeMetadata" in (event.missing_reason or "")
    updated = {**clerk_user_created(), "type": "user.updated"}
    with pytest.raises(Ignored, match=r"user\.updated"):
        parse_clerk_event(updated, "m2", make_settings())
    with pytest.raises(EventRejected, match="data"):
        parse_clerk_event({"type": "user.created"}, "m3", make_settings())


# HubSpot: the v3 signature and the batch ------------------------------------------------


def test_hubspot_v3_signature_over_the_url_the_sender_called() -> None:
    body = dumps(hubspot_creation_batch(["101"]))
    path = "/v1/webhooks/hubspot?website=shop"
    public = f"https://crm-hooks.example.com{path}"
    proxied = {"host": "10.0.0.5:8000", "x-forwarded-host": "crm-hooks.example.com",
               "x-forwarded-proto": "https"}  # fmt: skip
    signed = hubspot_headers(public, body)
    verify_hubspot_v3(request(body, {**signed, **proxied}, path), [HUBSPOT_APP_SECRET])
    direct = {"host": "crm-hooks.example.com"}
    verify_hubspot_v3(request(body, {**signed, **direct}, path), ["old", HUBSPOT_APP_SECRET])
    # HubSpot decodes some characters of the URI before it signs.
    encoded = "/v1/webhooks/hubspot?website=a%3Ab"
    decoded_sig = hubspot_headers(
        "https://crm-hooks.example.com/v1/webhooks/hubspot?website=a:b", body
    )
    verify_hubspot_v3(request(body, {**decoded_sig, **direct}, encoded), [HUBSPOT_APP_SECRET])
    failures = {
        "other host": {**signed, "host": "evil.example.com"},
        "other secret": {**hubspot_headers(public, body, secret="nope"), **direct},
        "stale": {
            **hubspot_headers(public, body, at_ms=int(time.time() * 1000) - 301_000),
            **direct,
        },
        "no signature": direct,
        "stale, in seconds": {
            **hubspot_headers(public, body, at_ms=int(time.time()) - 301),
            **direct,
        },
    }
    # A timestamp in seconds (HubSpot's unit is not documented) within five minutes passes.
    in_seconds = hubspot_headers(public, body, at_ms=int(time.time()))
    verify_hubspot_v3(request(body, {**in_seconds, **direct}, path), [HUBSPOT_APP_SECRET])
    refused = []
    for name, headers in failures.items():
        try:
            verify_hubspot_v3(request(body, headers, path), [HUBSPOT_APP_SECRET])
        except SignatureError:
            refused.append(name)
    assert refused == list(failures)


def test_hubspot_batch_is_one_signup_per_created_contact() -> None:
    batch = hubspot_creation_batch(["101", "102", "103"], first_event_id=500)
    batch.insert(1, {**batch[0], "eventId": 9, "subscriptionType": "contact.propertyChange"})
    events = parse_hubspot_webhook(batch)
    assert [e.id for e in events] == ["hubspot:500", "hubspot:501", "hubspot:502"]
    assert [e.external["contact_id"] for e in events] == ["101", "102", "103"]
    assert {(e.type, e.inbound, e.lookup) for e in events} == {("signup", "hubspot", "hubspot")}
    new_platform = {**batch[0], "subscriptionType": "object.creation", "objectTypeId": "0-1"}
    assert len(parse_hubspot_webhook([new_platform])) == 1
    with pytest.raises(Ignored):
        parse_hubspot_webhook([batch[1]])
    broken = [batch[0], {**batch[2], "objectId": None}]
    with pytest.raises(EventRejected, match=r"\[1\]\.objectId"):
        parse_hubspot_webhook(broken)


# HubSpot: the lookup and the note on the contact that triggered it ---------------------


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def runtime(fake: FakeUpstream, key_prefix: str) -> Iterator[Runtime]:
    env = {k.lower(): v for k, v in fake.env().items() if not k.startswith(("ZENDESK", "SLACK"))}
    rt = build_runtime(make_settings(redis_key_prefix=key_prefix, **env))
    yield rt
    rt.redis.close()


def _contact_event(contact_id: str) -> Event:
    return parse_hubspot_webhook(hubspot_creation_batch([contact_id]))[0]


def test_lookup_reads_the_contact_and_the_note_goes_on_it(
    fake: FakeUpstream, runtime: Runtime
) -> None:
    fake.add_visitor(full_profile(VISITOR))
    fake.define_contact_properties(
        ["datafast_visitor_id", *(p["name"] for p in HUBSPOT_PROPERTIES)]
    )
    # Another contact with the same email exists: the note must not go there.
    twin = fake.add_contact("lin@example.com")
    contact = fake.add_contact(
        "lin@example.com", firstname="Lin", lastname="Wu", datafast_visitor_id=VISITOR
    )
    event = _contact_event(contact)
    context = fetch_context(runtime, event)
    assert context.found and context.visitor_id == VISITOR
    read = fake.requests_to("hubspot", method="GET", route=f"/crm/v3/objects/contacts/{contact}")
    assert "datafast_visitor_id" in read[0].query["properties"]
    sink = runtime.sinks["hubspot"]
    assert isinstance(sink, HubSpotSink)
    completed = event.model_copy(update={"email": "lin@example.com", "lookup": None})
    assert sink.skip_reason(event, context) is None  # no email needed: the contact is known
    result = sink.deliver(completed, context, sink.render_note(completed, context))
    assert result.detail == f"note on contact {contact}"
    (note,) = fake.hubspot_notes()
    assert note["associations"][0]["to"]["id"] == contact
    assert fake.requests_to("hubspot", route="/crm/v3/objects/contacts/search") == []
    assert (
        fake.requests_to("hubspot", method="PATCH", route=f"/crm/v3/objects/contacts/{twin}") == []
    )
    assert sink.already_delivered(completed) is True


def test_lookup_without_the_property_or_the_contact(fake: FakeUpstream, runtime: Runtime) -> None:
    contact = fake.add_contact("nofield@example.com", firstname="No")
    sink = runtime.sinks["hubspot"]
    completion = sink.complete_event(_contact_event(contact))
    assert completion.event.email == "nofield@example.com"
    assert completion.missing is not None and "datafast_visitor_id" in completion.missing
    gone = sink.complete_event(_contact_event("999999"))
    assert gone.missing is not None and "no contact 999999" in gone.missing


def test_lookup_waits_on_a_hubspot_429(fake: FakeUpstream, runtime: Runtime) -> None:
    contact = fake.add_contact("busy@example.com", datafast_visitor_id=VISITOR)
    fake.fail("hubspot", 429, headers={"Retry-After": "2"}, method="GET")
    sink = runtime.sinks["hubspot"]
    with pytest.raises(RateLimited) as limited:
        sink.complete_event(_contact_event(contact))
    assert limited.value.retry_after == 2
    # The shared limiter holds the next call (of any worker) until HubSpot's Retry-After.
    assert sink.complete_event(_contact_event(contact)).missing is None
    first, second = fake.requests_to("hubspot", method="GET")
    assert second.mono - first.mono >= 1.9


# The web endpoints ---------------------------------------------------------------------------


@pytest.fixture
def web(isolation: tuple[str, str], redis_server: str) -> Iterator[TestClient]:
    prefix, queue = isolation
    settings = make_settings(
        redis_url=redis_server,
        redis_key_prefix=prefix,
        celery_queue=queue,
        webhook_secret=TEST_SECRET,
        datafast_api_key=DATAFAST_KEY,
    )
    with TestClient(create_app(settings), base_url="https://hooks.example.com") as client:
        yield client


def _signed(system: str, body: bytes) -> dict[str, str]:
    if system == "stripe":
        return stripe_headers(body)
    if system == "clerk":
        return svix_headers(body)
    return hubspot_headers(f"https://hooks.example.com/v1/webhooks/{system}", body)


def _payload(system: str) -> Any:
    if system == "stripe":
        return stripe_checkout_completed(VISITOR)
    if system == "clerk":
        return clerk_user_created(unsafe={"datafast_visitor_id": VISITOR})
    return hubspot_creation_batch(["201", "202"])


@pytest.mark.parametrize("system", ["stripe", "clerk", "hubspot"])
def test_webhook_signed_queued_then_duplicate_and_bad_signature_401(
    system: str, web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    body = dumps(_payload(system))
    headers = _signed(system, body)
    url = f"/v1/webhooks/{system}"
    tampered = web.post(url, content=body.replace(b"a", b"b", 1), headers=headers)
    assert tampered.status_code == 401, tampered.text
    assert web.post(url, content=body).status_code == 401
    assert queue_length(redis_client, isolation[1]) == 0
    first = web.post(url, content=body, headers=headers)
    assert first.status_code == 202, first.text
    queued = queue_length(redis_client, isolation[1])
    assert queued == (2 if system == "hubspot" else 1)
    again = web.post(
        url, content=body, headers=_signed(system, body) if system != "clerk" else headers
    )
    assert again.status_code == 200, again.text
    data = again.json()["data"]
    states = [e["state"] for e in data["events"]] if "events" in data else [data["state"]]
    assert set(states) == {"duplicate"}
    assert queue_length(redis_client, isolation[1]) == queued


def test_webhook_ignored_types_are_200_and_queue_nothing(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    body = dumps({"id": "evt_x", "type": "customer.created", "data": {"object": {}}})
    response = web.post("/v1/webhooks/stripe", content=body, headers=stripe_headers(body))
    assert response.status_code == 200 and response.json()["data"]["state"] == "ignored"
    clerk = dumps({**clerk_user_created(), "type": "session.created"})
    response = web.post("/v1/webhooks/clerk", content=clerk, headers=svix_headers(clerk))
    assert response.json()["data"]["state"] == "ignored"
    assert queue_length(redis_client, isolation[1]) == 0
    bad = dumps({"id": "evt_y", "type": "checkout.session.completed"})
    response = web.post("/v1/webhooks/stripe", content=bad, headers=stripe_headers(bad))
    assert response.status_code == 422 and "data.object" in response.json()["error"]["message"]


def test_unconfigured_webhooks_refuse_everything(
    isolation: tuple[str, str], redis_server: str
) -> None:
    prefix, queue = isolation
    settings = load_settings(
        _env_file=None, redis_url=redis_server, redis_key_prefix=prefix, celery_queue=queue
    )
    with TestClient(create_app(settings)) as client:
        body = dumps(_payload("stripe"))
        response = client.post("/v1/webhooks/stripe", content=body, headers=stripe_headers(body))
    assert response.status_code == 401
    assert HubSpotWebhook.configured(settings) is False


def test_payment_note_names_what_was_bought_and_the_first_touch() -> None:
    from worker.integrations.slack import render_slack_alert
    from worker.templates import render_html, render_markdown, render_text

    event = parse_stripe_event(stripe_checkout_completed(VISITOR), make_settings())
    context = to_journey(VisitorProfile.model_validate(full_profile(VISITOR, utm_source="hn")))
    for render in (render_html, render_markdown, render_text):
        note = render(event, context)
        assert "49.00 EUR" in note and "Pro plan" in note, render.__name__
        assert "Came from" in note and "hn / social / black-friday" in note, render.__name__
    alert = render_slack_alert(event, context)
    assert alert["blocks"][0]["text"]["text"].startswith("New payment: Grace Hopper")
    assert (
        "Bought Pro plan for 49.00 EUR, first came from hn / social / black-friday" in alert["text"]
    )
