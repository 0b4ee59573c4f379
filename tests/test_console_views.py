"""The console's pure helpers and the health reads, without a browser."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import redis

from config import load_settings
from worker import heartbeat
from worker.console import views
from worker.health import RedisHealth, record_error, task_event_id
from worker.intake import ENRICH_EVENT_TASK, task_message
from worker.notes import FRAME_MAX_PX, FRAME_MIN_PX, RenderedNote, frame_height_px
from worker.runtime import build_runtime
from worker.store import SinkRecord


def _summary(event_id: str, **event: object) -> dict[str, object]:
    return {
        "id": event_id,
        "event": {"type": "signup", **event},
        "state": "delivered",
        "reason": None,
        "created_at": "2026-12-01T10:00:00.000Z",
        "sinks": {"hubspot": SinkRecord(state="delivered")},
    }


def test_filters_match_state_type_sink_inbound_and_part_of_an_email_or_visitor() -> None:
    rows = [
        _summary("a", email="Ada@Example.com", visitor_id="v-111"),
        _summary("b", type="livechat", livechat_visitor_id="lc1", visitor_id="v-222"),
    ]
    assert [r.id for r in views.filter_rows(rows, views.EventFilter(), 10)] == ["a", "b"]
    assert [r.id for r in views.filter_rows(rows, views.EventFilter(who="ada@"), 10)] == ["a"]
    assert [r.id for r in views.filter_rows(rows, views.EventFilter(who="v-222"), 10)] == ["b"]
    assert [r.id for r in views.filter_rows(rows, views.EventFilter(inbound="rocketchat"), 9)] == [
        "b"
    ]
    assert views.filter_rows(rows, views.EventFilter(sink="zendesk"), 10) == []
    assert views.filter_rows(rows, views.EventFilter(state="dead"), 10) == []
    assert len(views.filter_rows(rows, views.EventFilter(type="signup"), 10)) == 1
    assert len(views.filter_rows(rows, views.EventFilter(), 1)) == 1


def test_ages_read_as_a_person_would() -> None:
    now = datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
    assert views.since("2026-12-01T10:00:00.000Z", now) == 300
    assert views.age(30) == "30s ago" and views.age(300) == "5 min ago"
    assert views.age(7200) == "2 h ago" and views.age(None) == "-"
    assert views.since("not a time", now) is None


def test_the_oldest_waiting_task_names_its_event() -> None:
    message = task_message(ENRICH_EVENT_TASK, ["evt_123"], "q")
    assert task_event_id(message) == ("evt_123", ENRICH_EVENT_TASK)


def test_health_reads_queue_errors_rate_use_and_workers(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    queue = f"{key_prefix}queue"
    settings = load_settings(sandbox=True, redis_key_prefix=key_prefix, celery_queue=queue)
    rt = build_runtime(settings)
    try:
        redis_client.lpush(queue, task_message(ENRICH_EVENT_TASK, ["evt_old"], queue))
        redis_client.lpush(queue, task_message(ENRICH_EVENT_TASK, ["evt_new"], queue))
        record_error(redis_client, key_prefix, "console", "503 down")
        assert rt.source is not None
        rt.source.fetch_journey(str(uuid.uuid4()))  # one grant of DataFast's rate
        heartbeat.beat(redis_client, key_prefix, "host:1")
        heartbeat.beat(redis_client, key_prefix, "host:2", now=time.time() - 120)
        health = RedisHealth(rt).read()
        assert health.redis_up and health.queue_depth == 2
        assert health.oldest_waiting is not None and health.oldest_waiting.event_id == "evt_old"
        systems = {s.name: s for s in health.systems}
        assert systems["datafast"].used_last_minute == 1
        assert systems["datafast"].limit_per_minute == 300
        assert systems["console"].last_error == "503 down"
        assert not systems["console"].circuit_open
        assert [name for name, _ in health.workers] == ["host:1"]
    finally:
        redis_client.delete(queue)


def test_an_html_note_frame_is_as_tall_as_its_note_within_bounds() -> None:
    short = "<p>Visitor journey</p>"
    longer = short + "".join(f"<li>https://example.com/page-{i}</li>" for i in range(12))
    huge = "<p>" + "x " * 20_000 + "</p>"
    assert frame_height_px(short) == FRAME_MIN_PX
    assert FRAME_MIN_PX < frame_height_px(longer) < FRAME_MAX_PX
    assert frame_height_px(longer + longer) > frame_height_px(longer)
    assert frame_height_px(huge) == FRAME_MAX_PX  # a very long note scrolls in its frame
    html = RenderedNote(sink="zendesk", title="Zendesk", kind="html", body=longer)
    text = RenderedNote(sink="slack", title="Slack", kind="text", body=longer)
    assert html.frame_px == frame_height_px(longer)
    assert text.frame_px == 0
