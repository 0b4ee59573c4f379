"""Crisp: plugin-hook signatures over re-serialized JSON, website-hook keys, the mapping of
``session:set_data`` / ``message:send`` onto one event per conversation, the meta lookup, the
note, the exactly-once listing, errors and 420/429, and the endpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fake_crisp import (
    CRISP_HOOK_SECRET,
    CRISP_WEBSITE_ID,
    CRISP_WEBSITE_KEY,
    PAGE,
    FakeCrisp,
    compact,
    message_hook,
    new_session_id,
    plugin_hook_headers,
    set_data_hook,
)
from fastapi.testclient import TestClient
from harness import queue_length
from helpdesk_fakes import HelpdeskFake, helpdesk_runtime, helpdesk_web

from config import load_settings
from worker.errors import RateLimited, Rejected
from worker.events import Event, EventRejected
from worker.inbound import Ignored, WebhookRequest
from worker.integrations.crisp import CrispSink, CrispWebhook, js_json, parse_crisp_hook
from worker.journey import JourneyContext
from worker.runtime import Runtime
from worker.signature import SignatureError

VISITOR = "8d0c2a4e-1f3b-4c5d-9e6f-7a8b9c0d1e2f"
HOOK_ENV = {
    "CRISP_WEBHOOK_KEY": f"{CRISP_HOOK_SECRET},{CRISP_WEBSITE_KEY}",
    "CRISP_WEBSITE_ID": CRISP_WEBSITE_ID,
}


def settings(**overrides: Any) -> Any:
    values = {k.lower(): v for k, v in HOOK_ENV.items()}
    return load_settings(_env_file=None, **{**values, **overrides})


# Mapping ----------------------------------------------------------------------------------


def test_set_data_with_the_field_is_the_conversations_event() -> None:
    session = new_session_id()
    event = parse_crisp_hook(
        set_data_hook(session, {"datafast_visitor_id": VISITOR, "plan": "pro"}), settings()
    )
    assert event.id == f"crisp:{session}"
    assert (event.type, event.inbound, event.ticket_id, event.visitor_id) == (
        "livechat",
        "crisp",
        session,
        VISITOR,
    )
    assert event.lookup is None and event.occurred_at is not None


def test_visitor_message_takes_the_same_id_and_reads_the_meta_in_the_worker() -> None:
    session = new_session_id()
    event = parse_crisp_hook(message_hook(session), settings())
    assert event.id == f"crisp:{session}"
    assert event.visitor_id is None and event.lookup == "crisp" and event.name == "visitor493603"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (message_hook("session_x", sender="operator"), "not a message from the visitor"),
        (set_data_hook("session_x", {"plan": "pro"}), "session data without datafast_visitor_id"),
        ({**set_data_hook("session_x", {}), "event": "session:set_email"}, "is not handled"),
        ({**message_hook("session_x"), "website_id": "other-website"}, "not CRISP_WEBSITE_ID"),
    ],
)
def test_other_hooks_are_ignored(payload: dict[str, Any], why: str) -> None:
    with pytest.raises(Ignored, match=why):
        parse_crisp_hook(payload, settings())


def test_unmappable_hooks_name_the_field() -> None:
    no_session = message_hook("session_x")
    del no_session["data"]["session_id"]
    with pytest.raises(EventRejected, match=r"^data\.session_id:"):
        parse_crisp_hook(no_session, settings())
    with pytest.raises(EventRejected) as caught:
        parse_crisp_hook(set_data_hook("session_x", {"datafast_visitor_id": "nope"}), settings())
    assert caught.value.status_code == 400 and caught.value.message.startswith(
        "data.data.datafast_visitor_id:"
    )


# Signatures -------------------------------------------------------------------------------


def _request(
    body: bytes, headers: dict[str, str], query: dict[str, str] | None = None
) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        url="/v1/webhooks/crisp",
        body=body,
        headers={k.lower(): v for k, v in headers.items()},
        query=query or {},
    )


def test_js_json_matches_json_stringify() -> None:
    # Expected strings are what node's JSON.stringify prints for the parsed values.
    parsed = json.loads(
        '{"b": 1.0, "a": [1e-7, 2.50, 1e21, 123456789012345678], "é": "a/\\u2028\\n"}'
    )
    assert js_json(parsed) == '{"b":1,"a":[1e-7,2.5,1e+21,123456789012345680],"é":"a/\u2028\\n"}'


def test_plugin_hook_signed_over_re_serialized_json() -> None:
    adapter = CrispWebhook(settings())
    payload = message_hook(new_session_id())
    headers = plugin_hook_headers(payload)
    adapter.verify(_request(compact(payload), headers))
    # The same JSON sent pretty-printed: the library signs JSON.stringify of the parsed body.
    adapter.verify(_request(json.dumps(payload, indent=2).encode(), headers))
    tampered = {**payload, "event": "session:set_data"}
    with pytest.raises(SignatureError, match="bad X-Crisp-Signature"):
        adapter.verify(_request(compact(tampered), headers))
    wrong = plugin_hook_headers(payload, secret="another-secret")
    with pytest.raises(SignatureError):
        adapter.verify(_request(compact(payload), wrong))


def test_plugin_hook_timestamp_tolerance() -> None:
    payload = message_hook(new_session_id())
    stale = plugin_hook_headers(payload, timestamp=int((time.time() - 7200) * 1000))
    with pytest.raises(SignatureError, match="too old or too new"):
        CrispWebhook(settings()).verify(_request(compact(payload), stale))
    CrispWebhook(settings(crisp_timestamp_tolerance=0)).verify(_request(compact(payload), stale))
    no_stamp = {
        k: v for k, v in plugin_hook_headers(payload).items() if k != "X-Crisp-Request-Timestamp"
    }
    with pytest.raises(SignatureError, match="Timestamp missing"):
        CrispWebhook(settings()).verify(_request(compact(payload), no_stamp))


def test_website_hook_key_in_the_url(
    server: HelpdeskFake,
) -> None:
    adapter = CrispWebhook(settings())
    body = compact(message_hook(new_session_id()))
    adapter.verify(_request(body, {}, {"key": CRISP_WEBSITE_KEY}))
    for query in ({}, {"key": ""}, {"key": "guess"}):
        with pytest.raises(SignatureError, match=r"\?key="):
            adapter.verify(_request(body, {}, query))


# Against the fake Crisp -------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[HelpdeskFake]:
    with HelpdeskFake(FakeCrisp()) as helpdesks:
        yield helpdesks


@pytest.fixture
def fake(server: HelpdeskFake) -> FakeCrisp:
    found: FakeCrisp = server.system(FakeCrisp.name)
    return found


@pytest.fixture
def runtime(server: HelpdeskFake, key_prefix: str) -> Iterator[Runtime]:
    with helpdesk_runtime(server, key_prefix) as rt:
        yield rt


def _sink(rt: Runtime) -> CrispSink:
    sink = rt.sinks["crisp"]
    assert isinstance(sink, CrispSink)
    return sink


def test_note_in_the_conversation_and_found_again(
    server: HelpdeskFake, fake: FakeCrisp, runtime: Runtime
) -> None:
    session = new_session_id()
    fake.add_conversation(session, messages=3)
    sink = _sink(runtime)
    event = Event(id=f"crisp:{session}", type="livechat", ticket_id=session, inbound="crisp")
    ctx = JourneyContext.not_found("DataFast", "", "no visitor id")
    assert sink.skip_reason(event, ctx) is None
    assert sink.already_delivered(event) is False
    result = sink.deliver(event, ctx, sink.render_note(event, ctx))
    (note,) = fake.notes(session)
    assert result.external_id == str(note["fingerprint"])
    assert note["from"] == "operator" and event.marker in note["content"]
    # Visitor messages after the note push it off the newest page: the check pages back.
    for i in range(PAGE + 2):
        fake.conversations[session]["messages"].append(
            {
                "type": "text",
                "from": "user",
                "content": f"later {i}",
                "timestamp": note["timestamp"] + 1 + i,
            }
        )
    assert sink.already_delivered(event) is True
    listing = server.requests_to(fake.name, method="GET", contains="/messages")
    assert any("timestamp_before" in r.query for r in listing)
    post = server.requests_to(fake.name, method="POST")[0]
    assert post.json == {
        "type": "note",
        "from": "operator",
        "origin": "chat",
        "content": note["content"],
    }
    assert post.headers["x-crisp-tier"] == "plugin"


def test_sink_takes_only_the_crisp_hooks_events(runtime: Runtime) -> None:
    sink = _sink(runtime)
    ctx = JourneyContext.not_found("DataFast", "", "x")
    # A POST /v1/events ticket id is another helpdesk's: never a Crisp conversation.
    api = Event(id="a", type="support_ticket", ticket_id="session_123")
    assert "did not come from the Crisp webhook" in (sink.skip_reason(api, ctx) or "")
    other = Event(id="b", type="livechat", ticket_id="session_1", inbound="rocketchat")
    assert "rocketchat" in (sink.skip_reason(other, ctx) or "")
    no_session = Event(id="c", type="livechat", inbound="crisp")
    assert "session id" in (sink.skip_reason(no_session, ctx) or "")


def test_lookup_reads_the_session_data(fake: FakeCrisp, runtime: Runtime) -> None:
    with_id, without = new_session_id(), new_session_id()
    fake.add_conversation(with_id, {"datafast_visitor_id": VISITOR})
    fake.add_conversation(without, {"plan": "pro"})
    sink = _sink(runtime)
    done = sink.complete_event(Event(id="a", type="livechat", ticket_id=with_id, lookup="crisp"))
    assert done.missing is None and done.event.visitor_id == VISITOR
    assert done.event.email == "ada@example.com"
    missing = sink.complete_event(Event(id="b", type="livechat", ticket_id=without, lookup="crisp"))
    assert missing.missing is not None and '$crisp.push(["set", "session:data"' in missing.missing
    gone = sink.complete_event(
        Event(id="c", type="livechat", ticket_id="session_gone", lookup="crisp")
    )
    assert gone.missing == "Crisp has no conversation session_gone"


@pytest.mark.parametrize("status", [429, 420])
def test_rate_limited_answers_pause_every_worker(
    server: HelpdeskFake, fake: FakeCrisp, runtime: Runtime, status: int
) -> None:
    session = new_session_id()
    fake.add_conversation(session)
    sink = _sink(runtime)
    event = Event(id="e", type="livechat", ticket_id=session, inbound="crisp")
    ctx = JourneyContext.not_found("DataFast", "", "x")
    server.fail(fake.name, status, headers=fake.rate_limit_headers(status), method="POST")
    with pytest.raises(RateLimited, match="rate_limited"):
        sink.deliver(event, ctx, sink.render_note(event, ctx))
    assert runtime.limiter.paused_for("crisp") > 0
    assert fake.notes(session) == []


def test_crisp_error_envelope_and_check(fake: FakeCrisp, runtime: Runtime) -> None:
    sink = _sink(runtime)
    event = Event(id="e", type="livechat", ticket_id="session_unknown", inbound="crisp")
    ctx = JourneyContext.not_found("DataFast", "", "x")
    with pytest.raises(Rejected, match="404 session_not_found"):
        sink.deliver(event, ctx, sink.render_note(event, ctx))
    assert CRISP_WEBSITE_ID in sink.check()
    website_tier = runtime.settings.model_copy(update={"crisp_token_tier": "website"})
    with pytest.raises(Rejected, match="not_allowed"):
        CrispSink(website_tier, runtime.limiter).check()


# The endpoint ------------------------------------------------------------------------------


@pytest.fixture
def web(server: HelpdeskFake, isolation: tuple[str, str]) -> Iterator[TestClient]:
    with helpdesk_web(server, isolation) as client:
        yield client


def test_endpoint_one_event_per_conversation(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    queue = isolation[1]
    session = new_session_id()
    data_hook = set_data_hook(session, {"datafast_visitor_id": VISITOR})
    bad = web.post(
        "/v1/webhooks/crisp",
        content=compact(data_hook),
        headers=plugin_hook_headers(data_hook, secret="x"),
    )
    assert bad.status_code == 401 and queue_length(redis_client, queue) == 0
    first = web.post(
        "/v1/webhooks/crisp", content=compact(data_hook), headers=plugin_hook_headers(data_hook)
    )
    assert first.status_code == 200 and first.json()["data"] == {
        "eventId": f"crisp:{session}",
        "state": "queued",
    }
    message = message_hook(session)
    later = web.post(f"/v1/webhooks/crisp?key={CRISP_WEBSITE_KEY}", json=message)
    assert later.status_code == 200 and later.json()["data"]["state"] == "duplicate"
    operator = web.post(
        "/v1/webhooks/crisp",
        content=compact(m := message_hook(session, sender="operator")),
        headers=plugin_hook_headers(m),
    )
    assert operator.status_code == 200 and operator.json()["data"]["state"] == "ignored"
    assert queue_length(redis_client, queue) == 1
