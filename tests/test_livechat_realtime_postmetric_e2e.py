"""End to end for livechat, realtime alerts and PostMetric, with real processes on the real
Redis: uvicorn web, a Celery worker, two Celery beat processes (started "by mistake"),
against local fakes speaking the seed formats (DataFast visitors and realtime map,
PostMetric, Rocket.Chat: ``tests/seed_fakes.py``; Slack and Zendesk: ``tests/fakes.py``).

1. a livechat event naming only the chat visitor: visitor.info -> DataFast -> one room message;
2. Rocket.Chat's own webhook for a visitor without the custom field: one short "no journey"
   message, the event's reason says why;
3. realtime alerts every second from two beats: one Slack alert per hot visitor across many
   polls, none for a cold one, one map request per period, a 404 map logged and survived;
4. SOURCE=postmetric: one Zendesk comment with the PostMetric journey and an estimated score.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fakes import FakeUpstream
from harness import REDIS_URL, TEST_SECRET, Service, cleanup_redis, new_prefix, new_queue, wait_for
from seed_fakes import (
    RC_TOKEN,
    RC_USER_ID,
    RC_WEBHOOK_TOKEN,
    SeedFake,
    postmetric_seed_001,
    rc_visitor_seed_004,
    rc_webhook_payload,
    realtime_visitor,
)

pytestmark = pytest.mark.e2e

POLL_SECONDS = 1.0


@pytest.fixture(scope="module")
def module_redis(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def seed() -> Iterator[SeedFake]:
    with SeedFake() as server:
        server.map_status = 404  # "Website not found" until the realtime test sets visitors
        yield server


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def _base_env(prefix: str, queue: str) -> dict[str, str]:
    return {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "WEBHOOK_SECRET": TEST_SECRET,
        "MAX_RETRIES": "2",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "1",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def livechat_svc(
    seed: SeedFake,
    shared: FakeUpstream,
    module_redis: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Service, list[Path]]]:
    """DataFast + Rocket.Chat + Slack, realtime every second, and two beats."""
    prefix, queue = new_prefix(), new_queue()
    env = {
        **_base_env(prefix, queue),
        **{k: v for k, v in seed.env().items() if not k.startswith("POSTMETRIC")},
        "SLACK_WEBHOOK_URL": shared.base_url("slack"),
        "SLACK_RATE_LIMIT": "20",
        "REALTIME_POLL_SECONDS": str(POLL_SECONDS),
        "HOT_VISITOR_COOLDOWN": "3600",
    }
    log_dir = tmp_path_factory.mktemp("livechat-e2e")
    with Service(env, log_dir, redis_client=module_redis) as svc:
        names = [f"beat{i}" for i in range(2)]
        for name in names:
            svc.start_beat(name)
        yield svc, [log_dir / f"{name}.log" for name in names]
    cleanup_redis(module_redis, prefix, queue)


@pytest.fixture(scope="module")
def postmetric_svc(
    seed: SeedFake,
    shared: FakeUpstream,
    module_redis: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    prefix, queue = new_prefix(), new_queue()
    env = {
        **_base_env(prefix, queue),
        "SOURCE": "postmetric",
        "POSTMETRIC_API_KEY": seed.env()["POSTMETRIC_API_KEY"],
        "POSTMETRIC_BASE_URL": seed.env()["POSTMETRIC_BASE_URL"],
        **{k: v for k, v in shared.env().items() if k.startswith("ZENDESK")},
    }
    with Service(env, tmp_path_factory.mktemp("postmetric-e2e"), redis_client=module_redis) as svc:
        yield svc
    cleanup_redis(module_redis, prefix, queue)


def _profile(visitor_id: str) -> dict[str, Any]:
    return {
        "visitorId": visitor_id,
        "identity": {"country": "France", "city": "Paris", "params": {"utm_source": "hn"}},
        "activity": {
            "visitCount": 4,
            "pageViewCount": 9,
            "visitedPages": [
                {"url": "https://example.com/pricing", "timestamp": "2026-11-22T09:58:00Z"}
            ],
        },
        "prediction": {"score": 64, "conversionRate": 0.02, "expectedValue": 12, "confidence": 0.7},
    }


# 1. and 2. Livechat ------------------------------------------------------------------------


def test_livechat_event_with_only_the_chat_visitor(
    livechat_svc: tuple[Service, list[Path]], seed: SeedFake
) -> None:
    svc, _ = livechat_svc
    datafast_id, chat_visitor, room = str(uuid.uuid4()), f"lv-{uuid.uuid4().hex[:8]}", "room-e1"
    seed.datafast_visitors[datafast_id] = _profile(datafast_id)
    seed.rc_visitors[chat_visitor] = rc_visitor_seed_004(
        chat_visitor, {"datafast_visitor_id": datafast_id}
    )
    seed.add_room(room)
    event_id = f"evt_{uuid.uuid4().hex[:10]}"
    body = {"type": "livechat", "livechat_visitor_id": chat_visitor, "room_id": room, "name": "Ada"}
    assert svc.send_event(body, event_id=event_id).status_code == 202

    status = svc.wait_for_state(event_id)
    assert status["state"] == "delivered", json.dumps(status, indent=1)
    assert status["visitorId"] == datafast_id
    assert status["sinks"]["rocketchat"]["state"] == "delivered"
    (message,) = seed.room_messages(room)
    assert "Visitor journey from DataFast for Ada" in message["msg"]
    assert "64/100" in message["msg"] and f"visitor-enrich:{event_id}" in message["msg"]
    lookups = [r for r in seed.seen("rocketchat") if r.query.get("visitorId") == chat_visitor]
    assert len(lookups) == 1
    assert lookups[0].headers["x-auth-token"] == RC_TOKEN
    assert lookups[0].headers["x-user-id"] == RC_USER_ID
    assert len(seed.seen("datafast", f"/api/v1/visitors/{datafast_id}")) == 1


def test_livechat_webhook_visitor_without_the_field(
    livechat_svc: tuple[Service, list[Path]], seed: SeedFake
) -> None:
    svc, _ = livechat_svc
    assert svc.http is not None
    chat_visitor, room = f"lv-{uuid.uuid4().hex[:8]}", f"room-{uuid.uuid4().hex[:8]}"
    seed.rc_visitors[chat_visitor] = rc_visitor_seed_004(chat_visitor, {"plan": "free"})
    seed.add_room(room)
    payload = rc_webhook_payload(room, chat_visitor)
    headers = {"X-RocketChat-Livechat-Token": RC_WEBHOOK_TOKEN}
    wrong = svc.http.post(
        "/v1/webhooks/rocketchat", json=payload, headers={"X-RocketChat-Livechat-Token": "no"}
    )
    assert wrong.status_code == 401
    first = svc.http.post("/v1/webhooks/rocketchat", json=payload, headers=headers)
    assert first.status_code == 200 and first.json()["data"]["state"] == "queued"
    retry = svc.http.post("/v1/webhooks/rocketchat", json=payload, headers=headers)
    assert retry.status_code == 200 and retry.json()["data"]["state"] == "duplicate"

    status = svc.wait_for_state(f"rc:{room}")
    assert status["state"] == "delivered", json.dumps(status, indent=1)
    assert status["reason"] == "no datafast_visitor_id on livechat visitor"
    (message,) = seed.room_messages(room)
    assert "No visitor journey found" in message["msg"]
    assert "no datafast_visitor_id on livechat visitor" in message["msg"]
    assert len(message["msg"]) < 300


# 3. Realtime -------------------------------------------------------------------------------


def test_realtime_alerts_once_per_hot_visitor_with_two_beats(
    livechat_svc: tuple[Service, list[Path]], seed: SeedFake, shared: FakeUpstream
) -> None:
    svc, beat_logs = livechat_svc
    # Until now the map answered 404: each poll logged it and the beats kept going.
    wait_for(
        lambda: svc.log("worker0").count("Website not found") >= 2,
        timeout=10,
        message="two logged 404 polls",
    )
    hot_score, hot_path, cold = (
        f"{name}-{uuid.uuid4().hex[:6]}" for name in ("score", "path", "cold")
    )
    seed.set_realtime(
        [
            realtime_visitor(hot_score, score=92, profile={"name": "Grace", "plan": "team"}),
            realtime_visitor(hot_path, url="https://example.com/pricing?plan=pro"),
            realtime_visitor(cold, url="/blog", score=15),
        ]
    )
    seed.map_status = 200
    started, first_map = time.monotonic(), len(seed.seen("datafast", "/api/v1/analytics"))
    wait_for(lambda: len(shared.slack_messages()) >= 2, timeout=10, message="two Slack alerts")
    time.sleep(4 * POLL_SECONDS)  # several more polls: the cooldown holds
    elapsed = time.monotonic() - started
    polls = len(seed.seen("datafast", "/api/v1/analytics")) - first_map

    assert len(shared.slack_messages(hot_score)) == 1
    assert len(shared.slack_messages(hot_path)) == 1
    assert shared.slack_messages(cold) == []
    assert len(shared.slack_messages()) == 2
    alert = shared.slack_messages(hot_score)[0]
    for words in ("Grace", "Berlin", "92/100", "desktop · Firefox"):
        assert words in json.dumps(alert, ensure_ascii=False)
    # One beat holds the scheduler lock and sends the polls; the other waits to take over.
    assert sum("Sending due task poll-realtime" in log.read_text() for log in beat_logs) == 1
    assert 3 <= polls <= elapsed / POLL_SECONDS + 2, (polls, elapsed)


# 4. PostMetric -----------------------------------------------------------------------------


def test_postmetric_to_zendesk(
    postmetric_svc: Service, seed: SeedFake, shared: FakeUpstream
) -> None:
    seed.postmetric_visitors["visitor_123"] = postmetric_seed_001()
    ticket = str(900_000 + uuid.uuid4().int % 99_999)
    shared.add_ticket(ticket, "Where is my invoice?")
    event_id = f"evt_{uuid.uuid4().hex[:10]}"
    body = {"type": "support_ticket", "visitorId": "visitor_123", "ticket_id": ticket}
    assert postmetric_svc.send_event(body, event_id=event_id).status_code == 202

    status = postmetric_svc.wait_for_state(event_id)
    assert status["state"] == "delivered", json.dumps(status, indent=1)
    comments = [c for c in shared.zendesk_comments(ticket) if not c["public"]]
    assert len(comments) == 1
    note = comments[0]["html_body"]
    for words in (
        "Visitor journey from PostMetric",
        "visitor_123",
        "https://google.com",
        "/ (Homepage)",
        "(estimate)",
        f"visitor-enrich:{event_id}",
    ):
        assert words in note, words
