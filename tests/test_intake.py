"""The web process's intake (worker/intake.py) on the real Redis: the task message it writes is
the one Celery's apply_async writes, concurrent events share round trips without losing or
doubling any, and a Redis failure reaches every waiting request."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest
import redis
from harness import REDIS_URL

from worker.events import Event
from worker.intake import ENRICH_EVENT_TASK, EventIntake, TaskMessageTemplate, task_message
from worker.store import EventStore

VID = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
# What differs between any two messages: ids, and which process sent it.
PER_MESSAGE = {
    "headers": {"id", "root_id", "origin"},
    "properties": {"correlation_id", "delivery_tag", "reply_to"},
}


def _event(event_id: str) -> Event:
    return Event(id=event_id, type="signup", visitor_id=VID, email="ada@example.com")


def _without_per_message_fields(message: dict[str, Any]) -> dict[str, Any]:
    return {
        part: (
            {k: v for k, v in value.items() if k not in PER_MESSAGE[part]}
            if part in PER_MESSAGE
            else value
        )
        for part, value in message.items()
        if part != "body"  # compared decoded: only its JSON must be the same, not its spacing
    }


def test_task_message_is_what_apply_async_writes(
    redis_client: redis.Redis, isolation: tuple[str, str]
) -> None:
    from worker.tasks import enrich_event

    _, queue = isolation
    assert enrich_event.name == ENRICH_EVENT_TASK
    enrich_event.apply_async(("evt_1",), queue=queue)
    celery_message = json.loads(redis_client.lpop(queue))
    ours = json.loads(task_message(ENRICH_EVENT_TASK, ("evt_1",), queue))

    assert _without_per_message_fields(ours) == _without_per_message_fields(celery_message)
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(celery_message["body"])
    )
    assert set(ours["headers"]) == set(celery_message["headers"])
    assert set(ours["properties"]) == set(celery_message["properties"])
    # Each message has its own task id (also the root and correlation id) and delivery tag.
    other = json.loads(task_message(ENRICH_EVENT_TASK, ("evt_1",), queue))
    assert ours["headers"]["id"] == ours["headers"]["root_id"]
    assert ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert other["headers"]["id"] != ours["headers"]["id"]
    assert other["properties"]["delivery_tag"] != ours["properties"]["delivery_tag"]


@pytest.mark.parametrize(
    "event_id",
    ["evt_1", 'a "quoted" \\ id', "caf\u00e9 \u2028 \U0001f600", "{0} {braces} }{", "x" * 200],
)
@pytest.mark.parametrize("queue", ["visitor-enrich", 'q "odd" {0}'])
def test_the_template_writes_what_the_full_render_writes(event_id: str, queue: str) -> None:
    template = TaskMessageTemplate(ENRICH_EVENT_TASK, queue)
    ours = json.loads(template.render(event_id))
    full = json.loads(task_message(ENRICH_EVENT_TASK, (event_id,), queue))
    assert json.loads(base64.b64decode(ours["body"])) == [
        [event_id],
        {},
        json.loads(base64.b64decode(full["body"]))[2],
    ]
    assert ours["headers"]["argsrepr"] == repr((event_id,))
    assert ours["headers"]["id"] == ours["headers"]["root_id"]
    assert ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["headers"]["id"] != ours["properties"]["delivery_tag"]
    for message in (ours, full):
        for part, names in {**PER_MESSAGE, "": {"body"}}.items():
            for name in names:
                (message[part] if part else message).pop(name)
    assert ours == full
    other = json.loads(template.render(event_id))
    assert other["headers"]["id"] != json.loads(template.render(event_id))["headers"]["id"]


def test_message_ids_are_version_4_uuids_and_differ() -> None:
    ids = [
        json.loads(task_message(ENRICH_EVENT_TASK, ("e",), "q"))["headers"]["id"]
        for _ in range(2000)
    ]
    assert len(set(ids)) == len(ids)
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def _intake(prefix: str, queue: str, url: str = REDIS_URL, **options: Any) -> EventIntake:
    store = EventStore(redis.Redis.from_url(url), prefix, retention_seconds=600)
    return EventIntake(store, url, ENRICH_EVENT_TASK, queue, **options)


def _queued_ids(redis_client: redis.Redis, queue: str) -> list[str]:
    ids = []
    for raw in redis_client.lrange(queue, 0, -1):
        args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
        ids.append(args[0])
    return ids


def test_concurrent_events_share_round_trips_and_each_is_queued_once(
    redis_client: redis.Redis, isolation: tuple[str, str]
) -> None:
    prefix, queue = isolation
    intake = _intake(prefix, queue)
    calls: list[int] = []

    async def run() -> list[bool]:
        # Count the script calls: each is one round trip to Redis.
        state = intake._loop_state()
        script = state.script

        async def counted(*, keys: list[str], args: list[Any]) -> Any:
            # Three shared keys, then an event's hash and its tombstone key per event.
            calls.append((len(keys) - 3) // 2)
            return await script(keys=keys, args=args)

        state.script = counted
        # 300 requests at once, every tenth a repeat of an earlier id (a sender's retry).
        ids = [f"evt_{n if n % 10 else n - 5}" for n in range(1, 301)]
        results = await asyncio.gather(*(intake.accept(_event(i)) for i in ids))
        await intake.aclose()
        return list(results)

    results = asyncio.run(run())
    assert results.count(True) == 270 and results.count(False) == 30
    queued = _queued_ids(redis_client, queue)
    assert sorted(queued) == sorted({f"evt_{n if n % 10 else n - 5}" for n in range(1, 301)})
    assert sum(calls) == 300
    assert len(calls) < 10, calls  # batched, at most max_batch (256) events a call
    assert max(calls) <= 256
    for event_id in queued[:5]:
        fields = redis_client.hgetall(f"{prefix}event:{event_id}")
        assert fields[b"state"] == b"queued"
        assert Event.model_validate_json(fields[b"event"]).id == event_id
        # No steps list yet: "accepted" is the event's creation, shown first by describe.
        assert not redis_client.exists(f"{prefix}event:{event_id}:steps")
        described = EventStore(redis_client, prefix, 600).describe(event_id)
        assert described is not None
        assert described["steps"] == [
            {"at": fields[b"created_at"].decode(), "step": "accepted", "detail": "signup"}
        ]
        assert redis_client.ttl(f"{prefix}event:{event_id}") > 0
    assert redis_client.zcard(f"{prefix}inflight") == 270


@pytest.mark.parametrize("max_in_flight", [1, 2, 3])
def test_script_calls_in_flight_are_capped(
    redis_client: redis.Redis, isolation: tuple[str, str], max_in_flight: int
) -> None:
    """While calls are under way, further events wait for a free call (and share it)."""
    prefix, queue = isolation
    intake = _intake(prefix, queue, max_in_flight=max_in_flight)
    in_flight, most, sizes = 0, 0, []

    async def run() -> list[bool]:
        nonlocal in_flight, most
        state = intake._loop_state()
        script = state.script

        async def slow(*, keys: list[str], args: list[Any]) -> Any:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            sizes.append((len(keys) - 3) // 2)
            try:
                await asyncio.sleep(0.02)  # a slow Redis: events keep arriving meanwhile
                return await script(keys=keys, args=args)
            finally:
                in_flight -= 1

        state.script = slow

        async def send(n: int) -> bool:
            await asyncio.sleep(n * 0.001)
            return await intake.accept(_event(f"evt_{n}"))

        results = await asyncio.gather(*(send(n) for n in range(200)))
        await intake.aclose()
        return list(results)

    assert asyncio.run(run()) == [True] * 200
    assert most == max_in_flight
    assert sum(sizes) == 200 and max(sizes) > 1
    assert sorted(_queued_ids(redis_client, queue)) == sorted(f"evt_{n}" for n in range(200))


def test_an_event_stored_with_its_accepted_step_shows_it_once(
    redis_client: redis.Redis, isolation: tuple[str, str]
) -> None:
    """Events accepted before the script stopped writing the step keep theirs, shown once."""
    prefix, _ = isolation
    store = EventStore(redis_client, prefix, retention_seconds=600)
    assert store.accept(_event("evt_old")) is True
    old_step = {"at": "2026-11-30T10:00:00.000Z", "step": "accepted", "detail": "signup"}
    redis_client.rpush(f"{prefix}event:evt_old:steps", json.dumps(old_step))
    store.add_step("evt_old", "fetching", "DataFast")
    described = store.describe("evt_old")
    assert described is not None
    assert [s["step"] for s in described["steps"]] == ["accepted", "fetching"]
    assert described["steps"][0] == old_step


def test_redis_gone_fails_every_waiting_request(isolation: tuple[str, str]) -> None:
    prefix, queue = isolation
    intake = _intake(prefix, queue, url="redis://127.0.0.1:1/0")

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(intake.accept(_event(f"evt_{n}")) for n in range(20)), return_exceptions=True
        )

    results = asyncio.run(asyncio.wait_for(run(), timeout=10))
    assert len(results) == 20
    assert all(isinstance(r, redis.ConnectionError) for r in results), results


def test_a_new_event_loop_gets_its_own_connection(
    redis_client: redis.Redis, isolation: tuple[str, str]
) -> None:
    """A server has one loop; a test client starts one per request. Both must work."""
    prefix, queue = isolation
    intake = _intake(prefix, queue)
    assert asyncio.run(intake.accept(_event("evt_a"))) is True
    assert asyncio.run(intake.accept(_event("evt_b"))) is True
    assert asyncio.run(intake.accept(_event("evt_a"))) is False
    assert sorted(_queued_ids(redis_client, queue)) == ["evt_a", "evt_b"]


@pytest.mark.parametrize("message", ["", "x"])
def test_store_accept_records_and_queues_only_a_given_message(
    redis_client: redis.Redis, isolation: tuple[str, str], message: str
) -> None:
    prefix, queue = isolation
    store = EventStore(redis_client, prefix, retention_seconds=600)
    assert store.accept(_event("evt_s"), queue, message) is True
    assert store.accept(_event("evt_s"), queue, message) is False
    assert redis_client.llen(queue) == (1 if message else 0)
    stored = store.load_event("evt_s")
    assert stored is not None and stored.visitor_id == VID


def test_an_event_recorded_without_its_task_is_queued_by_the_retry(
    redis_client: redis.Redis, isolation: tuple[str, str]
) -> None:
    """Recorded earlier without a task (by a version that published separately and failed):
    the sender's retry queues it once instead of being told "duplicate"."""
    prefix, queue = isolation
    intake = _intake(prefix, queue)
    assert intake.store.accept(_event("evt_orphan")) is True
    assert redis_client.llen(queue) == 0
    assert asyncio.run(intake.accept(_event("evt_orphan"))) is True
    assert asyncio.run(intake.accept(_event("evt_orphan"))) is False
    assert _queued_ids(redis_client, queue) == ["evt_orphan"]


def test_the_web_processs_redis_client_packs_commands_as_redis_py_does() -> None:
    import redis.asyncio

    from worker.runtime import HiredisPackingConnection, async_redis_client

    client = async_redis_client(REDIS_URL)
    assert client.connection_pool.connection_class is HiredisPackingConnection
    args = ("EVALSHA", "f" * 40, 2, "k:1", "k:2", 1795447386.2471237, 0.1, 7, b"\x00\xff", "ü")
    ours = b"".join(HiredisPackingConnection().pack_command(*args))
    theirs = b"".join(redis.asyncio.Connection().pack_command(*args))
    assert ours == theirs
    assert HiredisPackingConnection().pack_command("SCRIPT LOAD", "return 1") == [
        b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n$8\r\nreturn 1\r\n"
    ]
