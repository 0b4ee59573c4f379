"""Privacy and access (worker/privacy.py, worker/store.py, worker/web.py), in-process on the
real Redis: the status API's bearer token, erasure of every kind of stored record followed by
a scan of every key, retention with short settings, and secrets listed for rotation."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from harness import TEST_API_TOKEN, bearer, dump_keys, send_event, web_settings

from config import ConfigError, Settings, load_settings
from config.settings import split_secrets
from worker.events import Event
from worker.integrations import SINKS
from worker.journey import ActiveVisitor, HotVisitor, JourneyContext
from worker.privacy import erase, expire_personal_data
from worker.realtime import claim, hot_key
from worker.signature import SignatureCheck, SignatureError, matches_any
from worker.sink import AlertSink
from worker.store import EventStore, SinkRecord
from worker.web import create_app

OLD_SECRET = "whsec_" + base64.b64encode(b"the secret being rotated out....").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"the secret being rotated in.....").decode()
# Every alert sink keeps its own realtime dedupe key per visitor.
ALERT_SINKS = [s.name for s in SINKS if issubclass(s, AlertSink)]
UNKNOWN_SECRET = "whsec_" + base64.b64encode(b"a secret nobody configured......").decode()


def make_settings(prefix: str, queue: str, **overrides: Any) -> Settings:
    """No API_TOKEN unless a test sets it: the tests here are about that token."""
    return web_settings(prefix, queue, **{"api_token": None, **overrides})


@pytest.fixture
def store(redis_client: redis.Redis, isolation: tuple[str, str]) -> EventStore:
    return EventStore(redis_client, isolation[0], retention_seconds=600)


def new_id(kind: str = "evt") -> str:
    return f"{kind}_{uuid.uuid4().hex[:12]}"


# The status API's token ---------------------------------------------------------------------


def _app(isolation: tuple[str, str], **overrides: Any) -> TestClient:
    return TestClient(create_app(make_settings(*isolation, **overrides)))


def _accepted(client: TestClient) -> str:
    event_id = new_id()
    payload = {"type": "signup", "datafast_visitor_id": str(uuid.uuid4())}
    assert send_event(client, payload, event_id=event_id).status_code == 202
    return event_id


def test_status_without_api_token_set_is_401_and_says_how_to_set_it(
    isolation: tuple[str, str],
) -> None:
    with _app(isolation) as client:
        event_id = _accepted(client)
        for headers in ({}, bearer()):
            response = client.get(f"/v1/events/{event_id}", headers=headers)
            assert response.status_code == 401
            message = response.json()["error"]["message"]
            assert "API_TOKEN is not set" in message and "Authorization: Bearer" in message
        response = client.delete(f"/v1/visitors/{uuid.uuid4()}")
        assert response.status_code == 401


def test_status_with_no_wrong_and_right_token(isolation: tuple[str, str]) -> None:
    with _app(isolation, api_token=TEST_API_TOKEN) as client:
        event_id = _accepted(client)
        missing = client.get(f"/v1/events/{event_id}")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = client.get(f"/v1/events/{event_id}", headers=bearer(TEST_API_TOKEN + "x"))
        assert wrong.status_code == 401
        assert "wrong bearer token" in wrong.json()["error"]["message"]
        assert TEST_API_TOKEN not in wrong.text
        basic = client.get(f"/v1/events/{event_id}", headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401
        right = client.get(f"/v1/events/{event_id}", headers=bearer())
        assert right.status_code == 200
        assert right.json()["data"]["state"] == "queued"
        assert "x-visitor-enrich-access" not in right.headers
        # The sender's webhook and the probes need no token.
        assert client.get("/healthz").status_code == 200


def test_api_token_may_list_two_tokens_for_rotation(isolation: tuple[str, str]) -> None:
    with _app(isolation, api_token="old-token-123,new-token-456") as client:
        event_id = _accepted(client)
        for token, status in (("old-token-123", 200), ("new-token-456", 200), ("other", 401)):
            response = client.get(f"/v1/events/{event_id}", headers=bearer(token))
            assert response.status_code == status, token


def test_sandbox_leaves_the_status_api_open_and_says_so(isolation: tuple[str, str]) -> None:
    # Sandbox mode refuses a real provider key (it answers DataFast itself).
    sandbox = {"sandbox": True, "datafast_api_key": None}
    with _app(isolation, **sandbox) as client:
        event_id = _accepted(client)
        response = client.get(f"/v1/events/{event_id}")
        assert response.status_code == 200
        assert "SANDBOX=true" in response.headers["x-visitor-enrich-access"]
    # A token set wins over sandbox mode.
    with _app(isolation, **sandbox, api_token=TEST_API_TOKEN) as client:
        assert client.get(f"/v1/events/{event_id}").status_code == 401


def test_bearer_matches_each_token_and_nothing_else() -> None:
    tokens = load_settings(_env_file=None, api_token=" a-1 , b-2 ,").api_token
    listed = split_secrets(tokens)
    assert [t.get_secret_value() for t in listed] == ["a-1", "b-2"]
    assert matches_any("a-1", listed) and matches_any("b-2", listed)
    for given in ("a-", "a-1 ", "", None, "a-1,b-2"):
        assert not matches_any(given, listed)
    assert not matches_any("a-1", [])


def test_openapi_documents_the_bearer_token(isolation: tuple[str, str]) -> None:
    schema = create_app(make_settings(*isolation)).openapi()
    schemes = schema["components"]["securitySchemes"]
    ((name, scheme),) = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = schema["paths"]
    for path, method in (("/v1/events/{event_id}", "get"), ("/v1/visitors/{visitor_id}", "delete")):
        assert paths[path][method]["security"] == [{name: []}]
        assert "401" in paths[path][method]["responses"]
    assert "security" not in paths["/v1/events"]["post"]
    assert "security" not in paths["/healthz"]["get"]


# Secrets listed for rotation ------------------------------------------------------------------


def test_signature_check_accepts_old_and_new_secret_but_not_another() -> None:
    from harness import sign

    check = SignatureCheck([OLD_SECRET, NEW_SECRET])
    body = b'{"type":"signup"}'
    for secret in (OLD_SECRET, NEW_SECRET):
        check.verify(body, sign(body, msg_id="evt_1", secret=secret))
    with pytest.raises(SignatureError):
        check.verify(body, sign(body, msg_id="evt_1", secret=UNKNOWN_SECRET))
    with pytest.raises(ValueError):
        SignatureCheck([])


def test_webhook_secret_lists_several_and_each_is_scrubbed() -> None:
    settings = load_settings(_env_file=None, webhook_secret=f"{OLD_SECRET}, {NEW_SECRET}")
    listed = [s.get_secret_value() for s in settings.webhook_secrets]
    assert listed == [OLD_SECRET, NEW_SECRET]
    values = settings.secret_values()
    assert OLD_SECRET in values and NEW_SECRET in values
    assert OLD_SECRET not in repr(settings) and NEW_SECRET not in str(settings.webhook_secrets)


def test_a_bad_secret_in_the_list_is_named_by_position_not_value() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(_env_file=None, webhook_secret=f"{OLD_SECRET},not-a-whsec-value")
    message = str(raised.value)
    assert "WEBHOOK_SECRET" in message and "secret 2" in message
    assert "not-a-whsec-value" not in message and OLD_SECRET not in message
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_settings(_env_file=None, webhook_secret=" , ")


def test_events_signed_with_either_secret_pass_during_a_rotation(
    isolation: tuple[str, str],
) -> None:
    with _app(isolation, webhook_secret=f"{OLD_SECRET},{NEW_SECRET}") as client:
        payload = {"type": "signup", "datafast_visitor_id": str(uuid.uuid4())}
        for secret, status in ((OLD_SECRET, 202), (NEW_SECRET, 202), (UNKNOWN_SECRET, 401)):
            response = send_event(client, payload, event_id=new_id(), secret=secret)
            assert response.status_code == status, response.text


def test_rocketchat_token_may_list_the_old_and_the_new(isolation: tuple[str, str]) -> None:
    with _app(isolation, rocketchat_webhook_token="rc-old,rc-new") as client:
        for token, status in (("rc-old", 200), ("rc-new", 200), ("rc-other", 401)):
            payload = {
                "type": "LivechatSessionStart",
                "_id": new_id("room"),
                "visitor": {"_id": new_id("lv"), "token": "t"},
            }
            response = client.post(
                "/v1/webhooks/rocketchat",
                json=payload,
                headers={"X-RocketChat-Livechat-Token": token},
            )
            assert response.status_code == status, token


def test_privacy_settings_defaults_and_the_retention_schedule() -> None:
    from worker.app import create_celery

    settings = load_settings(_env_file=None)
    assert settings.api_token is None and settings.sandbox is False
    assert settings.journey_retention_seconds == 7 * 24 * 3600
    assert settings.dead_letter_retention_seconds == 7 * 24 * 3600
    tick = create_celery(settings).conf.beat_schedule["expire-personal-data"]
    assert tick["task"] == "visitor_enrich.expire_personal_data" and tick["schedule"] == 300
    short = load_settings(_env_file=None, journey_retention_seconds=2)
    assert create_celery(short).conf.beat_schedule["expire-personal-data"]["schedule"] == 1
    with pytest.raises(ConfigError, match="JOURNEY_RETENTION_SECONDS"):
        load_settings(_env_file=None, journey_retention_seconds=0)


# Erasure ------------------------------------------------------------------------------------


class Subject:
    """A visitor with an email, and every kind of record the service keeps about them."""

    def __init__(self) -> None:
        self.visitor = str(uuid.uuid4())
        self.email = f"Person-{uuid.uuid4().hex[:8]}@Example.com"
        self.livechat = new_id("lv")

    def secrets(self) -> list[str]:
        return [self.visitor, self.email, self.livechat]


def _journey(visitor: str) -> JourneyContext:
    return JourneyContext.model_validate(
        {"provider": "DataFast", "visitor_id": visitor, "current_url": f"https://x.io/?v={visitor}"}
    )


def store_everything(store: EventStore, who: Subject) -> dict[str, str]:
    """Records of every kind about ``who``; returns the event ids by what they are."""
    ids = {kind: new_id(kind) for kind in ("signup", "ticket", "queued", "livechat", "dead")}
    signup = Event(id=ids["signup"], type="signup", visitor_id=who.visitor, email=who.email)
    ticket = Event(id=ids["ticket"], type="support_ticket", visitor_id=who.visitor, ticket_id="7")
    # Accepted, its task not taken up yet: in no index, only in the inflight set.
    queued = Event(id=ids["queued"], type="signup", email=who.email.upper())
    # Names only the livechat visitor; the DataFast id is found later by a lookup.
    livechat = Event(id=ids["livechat"], type="livechat", livechat_visitor_id=who.livechat)
    dead = Event(id=ids["dead"], type="signup", visitor_id=who.visitor, email=who.email)
    for event in (signup, ticket, queued, livechat, dead):
        assert store.accept(event)
    for event in (signup, ticket, livechat, dead):
        store.index_subjects(event)  # what enrich_event does when it takes an event up
        store.set_state(event.id, "enriching")
        store.add_step(event.id, "fetching", f"DataFast for {who.visitor}")
    store.replace_event(livechat.model_copy(update={"visitor_id": who.visitor}))
    for event in (signup, ticket, livechat, dead):
        store.save_context(event.id, _journey(who.visitor))
    store.plan_sinks(signup.id, {"hubspot": SinkRecord()}, {"slack": f"score low for {who.email}"})
    store.save_sink(
        signup.id, "hubspot", SinkRecord(state="delivered", external_id="note-123", attempts=1)
    )
    store.plan_sinks(ticket.id, {"zendesk": SinkRecord()}, {})
    store.save_sink(ticket.id, "zendesk", SinkRecord(state="delivered", external_id="c-456"))
    store.plan_sinks(dead.id, {"hubspot": SinkRecord()}, {})
    store.save_sink(
        dead.id, "hubspot", SinkRecord(state="dead", reason=f"409 for {who.email}", attempts=3)
    )
    store.add_dead_letter(dead.id, "hubspot", f"409 for {who.email}", 3)
    store.add_dead_letter(dead.id, None, f"404 no visitor {who.visitor}", 1)
    store.plan_sinks(livechat.id, {"rocketchat": SinkRecord()}, {})
    store.save_sink(livechat.id, "rocketchat", SinkRecord(state="failed", reason=who.visitor))
    for event in (signup, ticket, livechat, dead):
        store.refresh_state(event.id)
    # The realtime alert dedupe of this visitor.
    hot = HotVisitor(ActiveVisitor(visitor_id=who.visitor), ("hot",), who.visitor)
    for sink in ALERT_SINKS:
        assert claim(store.redis, store.prefix, sink, hot, 600)
    return ids


def _found(dump: str, who: Subject) -> list[str]:
    """Which of ``who``'s identifiers ``dump`` holds, in any case."""
    return [s for s in who.secrets() if s.lower() in dump.lower()]


@pytest.mark.parametrize("order", [("visitor", "email"), ("email", "visitor")])
def test_erasure_leaves_no_trace_in_any_key(
    store: EventStore, redis_client: redis.Redis, order: tuple[str, str]
) -> None:
    who, bystander = Subject(), Subject()
    ids = store_everything(store, who)
    others = store_everything(store, bystander)
    assert set(_found(dump_keys(redis_client, store.prefix), who)) == set(who.secrets())
    # By visitor: every event but the queued one (it names only the email). By email: the
    # events that named it (the ticket names only the visitor).
    erased_by = {"visitor": set(ids) - {"queued"}, "email": {"signup", "queued", "dead"}}
    notes_by = {"visitor": {"note-123", "c-456"}, "email": {"note-123"}}

    first, second = order
    value = who.visitor if first == "visitor" else who.email.upper()  # any case matches
    report = erase(store, first, value)  # type: ignore[arg-type]
    assert report.events == len(erased_by[first])
    assert {ext for _, ext in report.notes} == notes_by[first]
    assert ("hubspot", "note-123") in report.notes
    dump = dump_keys(redis_client, store.prefix)
    gone = [who.visitor, who.livechat] if first == "visitor" else [who.email]
    assert [s for s in gone if s.lower() in dump.lower()] == [], dump
    for kind in ids:
        assert (store.describe(ids[kind]) is None) == (kind in erased_by[first]), kind

    erase(store, second, who.email if second == "email" else who.visitor)  # type: ignore[arg-type]
    dump = dump_keys(redis_client, store.prefix)
    assert _found(dump, who) == [], dump
    assert all(store.describe(i) is None for i in ids.values())
    # The bystander is untouched.
    assert set(_found(dump, bystander)) == set(bystander.secrets())
    assert all(store.describe(i) is not None for i in others.values())
    # A sender's retry of an erased event is still a duplicate, and queues nothing.
    queue = new_id("q")
    retry = Event(id=ids["signup"], type="signup", visitor_id=who.visitor, email=who.email)
    assert store.accept(retry, queue, "message") is False
    assert redis_client.llen(queue) == 0
    assert store.describe(ids["signup"]) is None
    # The tombstone is the hash of the id, for the event's remaining dedupe window.
    assert ids["signup"] not in dump
    assert 0 < redis_client.ttl(store.tombstone_key(ids["signup"])) <= 600
    for sink in ALERT_SINKS:
        assert not redis_client.exists(hot_key(store.prefix, sink, who.visitor))
        assert redis_client.exists(hot_key(store.prefix, sink, bystander.visitor))
    # An audit line per erasure, with counts only.
    lines = store.audit_lines()
    assert [line["by"] for line in lines] == [second, first]
    assert all(line["action"] == "erase" for line in lines)
    assert lines[1]["events"] == len(erased_by[first])
    assert not _found(str(lines), who)


def test_erasure_waits_for_a_task_busy_with_the_event_and_erases_what_it_writes(
    store: EventStore, redis_client: redis.Redis
) -> None:
    who = Subject()
    event = Event(id=new_id(), type="signup", visitor_id=who.visitor, email=who.email)
    assert store.accept(event)
    store.index_subjects(event)
    store.set_state(event.id, "enriching")
    store.plan_sinks(event.id, {"hubspot": SinkRecord()}, {})
    claim = store.claim_sink(event.id, "hubspot", 30)  # a worker is posting the note now
    assert claim is not None

    def finish_delivery() -> None:
        # What the worker writes once the sink answered, after the erasure.
        time.sleep(0.5)
        with store.batch() as batch:
            batch.save_context(event.id, _journey(who.visitor))
            batch.save_sink(event.id, "hubspot", SinkRecord(state="delivered", external_id="n-9"))
            batch.add_step(event.id, "sink_delivered", f"note for {who.email}")
            batch.release_sink(claim)

    worker = threading.Thread(target=finish_delivery)
    worker.start()
    started = time.monotonic()
    report = erase(store, "visitor", who.visitor, busy_wait=2)
    worker.join()
    assert time.monotonic() - started >= 2
    assert report.events == 1 and report.notes == [("hubspot", "n-9")]
    assert _found(dump_keys(redis_client, store.prefix), who) == []
    assert store.describe(event.id) is None


def test_erasure_by_visitor_removes_the_realtime_dedupe_and_its_legacy_key(
    store: EventStore, redis_client: redis.Redis
) -> None:
    who = Subject()
    redis_client.set(hot_key(store.prefix, "slack", who.visitor), "1", ex=600)
    # Written before the keys were hashed (per sink, and before alerts had several sinks).
    redis_client.set(f"{store.prefix}hot:slack:{who.visitor}", "1", ex=600)
    redis_client.set(f"{store.prefix}hot:{who.visitor}", "1", ex=600)
    report = erase(store, "visitor", who.visitor)
    assert report.events == 0 and report.notes == []
    assert _found(dump_keys(redis_client, store.prefix), who) == []
    assert not redis_client.exists(hot_key(store.prefix, "slack", who.visitor))


def test_scan_finds_events_no_index_names(store: EventStore, redis_client: redis.Redis) -> None:
    who = Subject()
    event = Event(id=new_id(), type="signup", visitor_id=who.visitor, email=who.email)
    assert store.accept(event)
    store.set_state(event.id, "delivered")  # final, as an older version left it: not indexed
    assert erase(store, "visitor", who.visitor).events == 0
    assert erase(store, "visitor", who.visitor, scan=True).events == 1
    assert _found(dump_keys(redis_client, store.prefix), who) == []


def test_erase_over_http_needs_the_token_and_lists_the_notes(
    isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    store = EventStore(redis_client, isolation[0], retention_seconds=600)
    who = Subject()
    ids = store_everything(store, who)
    with _app(isolation, api_token=TEST_API_TOKEN) as client:
        assert client.delete(f"/v1/visitors/{who.visitor}").status_code == 401
        assert store.describe(ids["signup"]) is not None
        response = client.delete(f"/v1/visitors/{who.visitor}", headers=bearer())
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["erasedEvents"] == 4
        assert {"system": "hubspot", "externalId": "note-123"} in data["notes"]
        assert {"system": "zendesk", "externalId": "c-456"} in data["notes"]
        assert client.get(f"/v1/events/{ids['signup']}", headers=bearer()).status_code == 404
    # The queued event holds only the email: erase that too, then nothing is left.
    erase(store, "email", who.email)
    assert _found(dump_keys(redis_client, isolation[0]), who) == []


# Retention ----------------------------------------------------------------------------------


def test_retention_removes_the_journey_and_keeps_the_state(
    store: EventStore, redis_client: redis.Redis
) -> None:
    who = Subject()
    ids = store_everything(store, who)
    assert expire_personal_data(store, journey_seconds=60, dead_letter_seconds=60).scrubbed == 0
    time.sleep(1.1)
    report = expire_personal_data(store, journey_seconds=1, dead_letter_seconds=3600)
    assert report.scrubbed == len(ids) and report.dead_letters_dropped == 0

    status = store.describe(ids["signup"])
    assert status is not None
    assert status["state"] == "delivered" and status["type"] == "signup"
    assert status["visitorId"] is None and status["source"]["journeyFound"] is None
    assert [s["step"] for s in status["steps"]] == ["accepted", "fetching", "delivered"]
    assert all("detail" not in s for s in status["steps"][1:])
    assert status["sinks"]["hubspot"]["state"] == "delivered"
    assert status["sinks"]["hubspot"]["external_id"] == "note-123"
    assert status["sinks"]["slack"]["reason"] is None
    assert status["retention"] == "personal data removed"
    # An event still in flight when its journey expires can no longer finish: it says so.
    queued = store.describe(ids["queued"])
    assert queued is not None and queued["state"] == "failed"
    assert ids["queued"] not in store.stuck_events(0)

    # Only the dead letters hold the inbound event now (what a replay needs).
    letters = {letter.id: letter for letter in store.dead_letters()}
    assert letters[f"{ids['dead']}:hubspot"].event is not None
    dump = dump_keys(redis_client, store.prefix)
    outside_letters = dump.replace(dump_keys_of_dead(redis_client, store.prefix), "")
    assert _found(outside_letters, who) == [], outside_letters
    # A second run finds nothing left to do.
    assert expire_personal_data(store, 1, 3600).scrubbed == 0

    # Dead letters go on their own clock.
    assert expire_personal_data(store, 1, dead_letter_seconds=1).dead_letters_dropped == 2
    assert store.dead_letters() == []
    assert _found(dump_keys(redis_client, store.prefix), who) == []


def dump_keys_of_dead(client: redis.Redis, prefix: str) -> str:
    return next(line for line in dump_keys(client, prefix).splitlines() if ":dead'" in line)


def test_erasure_reaches_the_dead_letters_retention_kept(
    store: EventStore, redis_client: redis.Redis
) -> None:
    who = Subject()
    store_everything(store, who)
    time.sleep(1.1)
    expire_personal_data(store, journey_seconds=1, dead_letter_seconds=3600)
    # The index entries went with the personal data; the letters still name the visitor.
    assert erase(store, "visitor", who.visitor, scan=True).events >= 1
    assert _found(dump_keys(redis_client, store.prefix), who) == []


def test_replay_after_retention_puts_the_event_back_and_fetches_the_journey_again(
    isolation: tuple[str, str], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import tasks
    from worker.replay import replay
    from worker.runtime import build_runtime

    rt = build_runtime(make_settings(*isolation))
    who = Subject()
    ids = store_everything(rt.store, who)
    time.sleep(1.1)
    expire_personal_data(rt.store, journey_seconds=1, dead_letter_seconds=3600)
    assert rt.store.load_event(ids["dead"]) is None
    queued: list[tuple[str, ...]] = []
    for task in (tasks.enrich_event, tasks.deliver_to_sink):
        monkeypatch.setattr(task, "apply_async", lambda args, queue: queued.append(tuple(args)))

    letter = rt.store.dead_letter(f"{ids['dead']}:hubspot")
    assert letter is not None and letter.event is not None
    assert replay(rt, letter).endswith("queued")
    # The event is back (with its personal data, so retention will remove it again), its
    # journey is to be fetched again, and the sink is retried by enrich_event.
    restored = rt.store.load_event(ids["dead"])
    assert restored is not None and restored.email == who.email
    assert ids["dead"] in rt.store.journeys_older_than(0)
    assert ids["dead"] in rt.store.indexed_events("email", who.email)
    assert queued == [(ids["dead"],)]
    assert rt.store.sink_record(ids["dead"], "hubspot").state == "posting"  # type: ignore[union-attr]
    # A letter whose event is gone altogether is dropped.
    rt.store.redis.delete(f"{rt.store.prefix}event:{ids['dead']}")
    source_letter = rt.store.dead_letter(ids["dead"])
    assert source_letter is not None
    assert replay(rt, source_letter).endswith("event expired, dropped")
