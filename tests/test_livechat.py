"""Rocket.Chat livechat: the webhook payload mapping, the visitor.info lookup, the room sink,
the worker's lookup hook in ``fetch_context`` and the web endpoint (TestClient)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from harness import TEST_API_TOKEN, TEST_SECRET, bearer, queue_length
from seed_fakes import (
    DATAFAST_KEY,
    RC_TOKEN,
    RC_USER_ID,
    RC_WEBHOOK_TOKEN,
    SEED_VISITOR,
    SeedFake,
    rc_visitor_seed_004,
    rc_webhook_payload,
)

from config import Settings, load_settings
from worker.errors import AuthFailed, Rejected, VisitorNotFound
from worker.events import Event, EventRejected
from worker.integrations import SINKS
from worker.integrations.rocketchat import (
    RocketChatSink,
    message_id,
    parse_rocketchat_webhook,
    resolve_visitor_id,
    rocketchat_client,
    visitor_field,
)
from worker.runtime import Runtime, build_runtime
from worker.tasks import fetch_context
from worker.web import create_app

LIVECHAT_VISITOR = "642fc15452492a08c3a756de"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"rocketchat_webhook_token": RC_WEBHOOK_TOKEN}
    values.update(overrides)
    return load_settings(_env_file=None, **values)


# The webhook payload -----------------------------------------------------------------------


def test_session_start_with_custom_field() -> None:
    payload = rc_webhook_payload(
        "room-1", LIVECHAT_VISITOR, custom_fields={"datafast_visitor_id": SEED_VISITOR, "n": 3}
    )
    event = parse_rocketchat_webhook(payload, make_settings())
    assert event.id == "rc:room-1"
    assert event.type == "livechat"
    assert event.visitor_id == SEED_VISITOR
    assert event.livechat_visitor_id == LIVECHAT_VISITOR
    assert event.room_id == "room-1"
    assert (event.name, event.email) == ("Ada Lovelace", "ada@example.com")
    assert event.livechat_custom_fields == {"datafast_visitor_id": SEED_VISITOR, "n": "3"}
    assert event.occurred_at is not None


def test_session_start_without_custom_field_names_the_chat_visitor() -> None:
    event = parse_rocketchat_webhook(
        rc_webhook_payload("room-2", LIVECHAT_VISITOR), make_settings()
    )
    assert event.visitor_id is None
    assert event.livechat_visitor_id == LIVECHAT_VISITOR


def test_every_webhook_of_a_room_is_the_same_event() -> None:
    settings = make_settings()
    ids = {
        parse_rocketchat_webhook(
            rc_webhook_payload("room-3", LIVECHAT_VISITOR, kind=k), settings
        ).id
        for k in ("LivechatSessionStart", "Message", "LivechatSessionTaken", "LivechatSession")
    }
    assert ids == {"rc:room-3"}


def test_configured_field_name_and_room_fields() -> None:
    settings = make_settings(rocketchat_visitor_field="df_id")
    payload = rc_webhook_payload("room-4", LIVECHAT_VISITOR)
    payload["customFields"] = {"df_id": SEED_VISITOR}
    assert parse_rocketchat_webhook(payload, settings).visitor_id == SEED_VISITOR


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        ([], 422, "JSON object"),
        ({"type": "LivechatSessionStart", "visitor": {"_id": "v"}}, 422, "_id"),
        ({"type": "LivechatSessionStart", "_id": "r"}, 422, "visitor"),
        (
            {"type": "LivechatSessionStart", "_id": "r", "visitor": {"name": "x"}},
            422,
            "visitor._id",
        ),
        (
            {"type": "LivechatOfflineMessage", "visitor": {"name": "x"}, "message": "hi"},
            422,
            "offline",
        ),
    ],
)
def test_bad_payloads_are_refused(payload: Any, status: int, words: str) -> None:
    with pytest.raises(EventRejected) as caught:
        parse_rocketchat_webhook(payload, make_settings())
    assert caught.value.status_code == status
    assert words in caught.value.message


def test_custom_field_must_be_a_uuid_only_when_the_source_says_so() -> None:
    payload = rc_webhook_payload(
        "room-5", LIVECHAT_VISITOR, custom_fields={"datafast_visitor_id": "not-a-uuid"}
    )
    with pytest.raises(EventRejected) as caught:
        parse_rocketchat_webhook(payload, make_settings())
    assert caught.value.status_code == 400
    postmetric = make_settings(
        source="postmetric", postmetric_api_key="pm_x", postmetric_base_url="http://pm.invalid"
    )
    event = parse_rocketchat_webhook(payload, postmetric, require_uuid=False)
    assert event.visitor_id == "not-a-uuid"


def test_bad_email_is_dropped_not_fatal() -> None:
    payload = rc_webhook_payload("room-6", LIVECHAT_VISITOR)
    payload["visitor"]["email"] = [{"address": "not an email"}]
    assert parse_rocketchat_webhook(payload, make_settings()).email is None


# visitor.info parsing ----------------------------------------------------------------------


def test_visitor_field_from_livechat_data_or_custom_fields() -> None:
    field = "datafast_visitor_id"
    assert visitor_field(rc_visitor_seed_004(livechat_data={field: SEED_VISITOR}), field) == (
        SEED_VISITOR
    )
    assert visitor_field(rc_visitor_seed_004(), field) is None
    assert visitor_field(rc_visitor_seed_004(livechat_data={field: "  "}), field) is None
    listed = rc_visitor_seed_004()
    listed["customFields"] = [{"_id": field, "value": SEED_VISITOR}]
    assert visitor_field(listed, field) == SEED_VISITOR


# Against the fake Rocket.Chat --------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[SeedFake]:
    with SeedFake() as server:
        server.rc_visitors["with-field"] = rc_visitor_seed_004(
            "with-field", {"datafast_visitor_id": SEED_VISITOR}
        )
        server.rc_visitors["without-field"] = rc_visitor_seed_004("without-field", {"x": "y"})
        server.add_room("room-a")
        yield server


@pytest.fixture
def runtime(fake: SeedFake, key_prefix: str) -> Iterator[Runtime]:
    settings = load_settings(
        _env_file=None,
        redis_url="redis://127.0.0.1:6379/0",
        redis_key_prefix=key_prefix,
        **{k.lower(): v for k, v in fake.env().items() if not k.startswith("POSTMETRIC")},
    )
    rt = build_runtime(settings)
    yield rt
    rt.redis.close()


def test_resolver_reads_livechat_data(fake: SeedFake, runtime: Runtime) -> None:
    client = rocketchat_client(runtime.settings, runtime.limiter)
    assert resolve_visitor_id(client, runtime.settings, "with-field") == SEED_VISITOR
    assert resolve_visitor_id(client, runtime.settings, "without-field") is None
    request = fake.seen("rocketchat", "/api/v1/livechat/visitor.info")[0]
    assert request.headers["x-auth-token"] == RC_TOKEN
    assert request.headers["x-user-id"] == RC_USER_ID
    assert request.query == {"visitorId": "with-field"}
    with pytest.raises(VisitorNotFound):
        resolve_visitor_id(client, runtime.settings, "nobody")


def test_resolver_errors_are_clear(fake: SeedFake, runtime: Runtime) -> None:
    bad = runtime.settings.model_copy(update={"rocketchat_auth_token": None})
    client = rocketchat_client(bad, runtime.limiter)
    with pytest.raises(AuthFailed) as caught:
        resolve_visitor_id(client, bad, "with-field")
    assert "You must be logged in to do this." in str(caught.value)
    client = rocketchat_client(runtime.settings, runtime.limiter)
    with pytest.raises(Rejected) as rejected:
        resolve_visitor_id(client, runtime.settings, "")
    assert "invalid-params" in str(rejected.value)


def test_fetch_context_resolves_and_stores_the_event(fake: SeedFake, runtime: Runtime) -> None:
    fake.datafast_visitors[SEED_VISITOR] = {"visitorId": SEED_VISITOR, "prediction": None}
    event = Event(id="lc-1", type="livechat", livechat_visitor_id="with-field", room_id="room-a")
    assert runtime.store.accept(event)
    ctx = fetch_context(runtime, event)
    assert ctx.found and ctx.visitor_id == SEED_VISITOR
    assert ctx.prediction is not None and ctx.prediction.estimated
    stored = runtime.store.load_event("lc-1")
    assert stored is not None and stored.visitor_id == SEED_VISITOR


def test_fetch_context_without_the_field(fake: SeedFake, runtime: Runtime) -> None:
    event = Event(id="lc-2", type="livechat", livechat_visitor_id="without-field", room_id="room-a")
    ctx = fetch_context(runtime, event)
    assert not ctx.found
    assert ctx.missing_reason == "no datafast_visitor_id on livechat visitor"
    assert not fake.seen("datafast")


def test_sink_posts_once_with_a_stable_id(fake: SeedFake, runtime: Runtime) -> None:
    sink = runtime.sinks["rocketchat"]
    assert isinstance(sink, RocketChatSink) and RocketChatSink in SINKS
    event = Event(id="lc-3", type="livechat", room_id="room-a", livechat_visitor_id="x")
    ctx = fetch_context(runtime, event)  # no journey: a short note
    assert sink.skip_reason(event, ctx) is None
    assert sink.already_delivered(event) is False
    result = sink.deliver(event, ctx, sink.render_note(event, ctx))
    assert result.external_id == message_id(event)
    assert sink.already_delivered(event) is True
    # A second attempt (a worker died before recording) finds it and does not post again.
    again = sink.deliver(event, ctx, sink.render_note(event, ctx))
    assert "already there" in (again.detail or "")
    (message,) = fake.room_messages("room-a")
    assert event.marker in message["msg"]
    assert "No visitor journey found" in message["msg"]
    body = fake.seen("rocketchat", "/api/v1/chat.sendMessage")[0].json
    assert body["message"]["rid"] == "room-a" and body["message"]["_id"] == message_id(event)


def test_sink_skips_without_room_and_maps_errors(fake: SeedFake, runtime: Runtime) -> None:
    sink = runtime.sinks["rocketchat"]
    event = Event(id="lc-4", type="livechat", visitor_id=SEED_VISITOR)
    ctx = fetch_context(runtime, event)
    assert sink.skip_reason(event, ctx) == "no room_id on the event"
    unknown_room = Event(id="lc-5", type="livechat", room_id="room-zzz", visitor_id="x")
    with pytest.raises(Rejected) as caught:
        sink.deliver(unknown_room, ctx, sink.render_note(unknown_room, ctx))
    assert "error-not-allowed" in str(caught.value) and not caught.value.retryable
    bad = runtime.settings.model_copy(update={"rocketchat_user_id": "someone-else"})
    with pytest.raises(AuthFailed) as auth:
        in_room = event.model_copy(update={"room_id": "room-a"})
        RocketChatSink(bad, runtime.limiter).deliver(in_room, ctx, sink.render_note(in_room, ctx))
    assert "You must be logged in to do this." in str(auth.value)
    assert "visitor-enrich" in sink.check()


def test_success_false_in_a_200_is_an_error(fake: SeedFake, runtime: Runtime) -> None:
    from worker.http import UpstreamResponse
    from worker.integrations.rocketchat import rocketchat_json

    response = UpstreamResponse(
        "rocketchat", 200, __import__("httpx").Headers(), b'{"success":false,"error":"nope"}'
    )
    with pytest.raises(Rejected, match="nope"):
        rocketchat_json(response)


# The web endpoint --------------------------------------------------------------------------


@pytest.fixture
def web(isolation: tuple[str, str], redis_server: str) -> Iterator[TestClient]:
    prefix, queue = isolation
    settings = load_settings(
        _env_file=None,
        redis_url=redis_server,
        redis_key_prefix=prefix,
        celery_queue=queue,
        webhook_secret=TEST_SECRET,
        datafast_api_key=DATAFAST_KEY,
        rocketchat_webhook_token=RC_WEBHOOK_TOKEN,
        api_token=TEST_API_TOKEN,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _post(client: TestClient, payload: Any, token: str | None) -> Any:
    headers = {"X-RocketChat-Livechat-Token": token} if token is not None else {}
    return client.post("/v1/webhooks/rocketchat", json=payload, headers=headers)


def test_webhook_wrong_or_missing_token_is_401(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    payload = rc_webhook_payload("room-w1", LIVECHAT_VISITOR)
    for token in ("wrong", None, ""):
        response = _post(web, payload, token)
        assert response.status_code == 401
        assert response.json()["status"] == "error"
    assert queue_length(redis_client, isolation[1]) == 0


def test_webhook_right_token_is_exactly_200_also_for_a_duplicate(
    web: TestClient, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    payload = rc_webhook_payload(
        "room-w2", LIVECHAT_VISITOR, custom_fields={"datafast_visitor_id": SEED_VISITOR}
    )
    first = _post(web, payload, RC_WEBHOOK_TOKEN)
    assert first.status_code == 200
    assert first.json()["data"] == {"eventId": "rc:room-w2", "state": "queued"}
    message = copy.deepcopy(payload)
    message["type"] = "Message"
    second = _post(web, message, RC_WEBHOOK_TOKEN)
    assert second.status_code == 200
    assert second.json()["data"]["state"] == "duplicate"
    assert queue_length(redis_client, isolation[1]) == 1
    status = web.get("/v1/events/rc:room-w2", headers=bearer()).json()["data"]
    assert status["type"] == "livechat" and status["visitorId"] == SEED_VISITOR


def test_webhook_bad_payload_is_422(web: TestClient) -> None:
    response = _post(web, {"type": "LivechatSessionStart"}, RC_WEBHOOK_TOKEN)
    assert response.status_code == 422
