"""The clients built from a Sentinel REDIS_URL, on a master, a replica and three Sentinels of the
test's own (tests/sentinel_support.py): a 202 means the replica holds the event, a replica that
does not acknowledge in time gives 503, and the retry is answered "duplicate" only once the
event is replicated; a delivery's "posting" record is confirmed the same way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from harness import TEST_SECRET, new_prefix, new_queue, send_event
from sentinel_support import SentinelTopology
from test_delivery import RecordingSink

from config.settings import Settings, load_settings
from worker.errors import NotReplicated
from worker.events import Event
from worker.journey import JourneyContext
from worker.runtime import build_runtime
from worker.store import SinkRecord
from worker.tasks import deliver
from worker.web import create_app

VID = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
# Short, so that the paused replica costs the test little; long enough for a loaded machine.
TIMEOUT_MS = 400


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    with SentinelTopology(tmp_path_factory.mktemp("sentinel")) as topology:
        yield topology


@pytest.fixture
def settings(topo: SentinelTopology) -> Settings:
    return load_settings(
        _env_file=None,
        redis_url=topo.url,
        redis_key_prefix=new_prefix(),
        celery_queue=new_queue(),
        webhook_secret=TEST_SECRET,
        datafast_api_key="df_test_key",
        redis_replica_timeout_ms=TIMEOUT_MS,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post(client: TestClient, event_id: str) -> Any:
    return send_event(
        client, {"type": "signup", "datafast_visitor_id": VID, "email": "a@b.co"}, event_id=event_id
    )


def test_a_202_means_the_replica_holds_the_event_and_its_task(
    topo: SentinelTopology, settings: Settings, client: TestClient
) -> None:
    replica = topo.client(topo.replica_port())
    event_id = f"evt_{uuid.uuid4().hex[:12]}"
    response = post(client, event_id)
    assert response.status_code == 202, response.text
    # Read at once from the replica: WAIT returned only after it acknowledged the writes.
    assert replica.hget(f"{settings.redis_key_prefix}event:{event_id}", "state") == b"queued"
    assert replica.llen(settings.celery_queue) == 1


def test_no_replica_acknowledgement_is_503_and_the_retry_is_a_duplicate_once_replicated(
    topo: SentinelTopology, settings: Settings, client: TestClient
) -> None:
    master = topo.client(topo.master_port())
    event_key = f"{settings.redis_key_prefix}event:evt_unacked"
    with topo.paused(topo.replica_port()):
        first = post(client, "evt_unacked")
        assert first.status_code == 503, first.text
        assert first.json()["error"]["message"] == "the queue is unavailable; retry later"
        # Recorded and queued on the master all the same (the script ran before the WAIT)...
        assert master.hget(event_key, "state") == b"queued"
        assert master.llen(settings.celery_queue) == 1
        # ...and a retry before the replica has it is not told "duplicate": it is not safe yet.
        # Also not by another web process, whose connections wrote nothing yet (the fence
        # makes its WAIT cover the first process's writes).
        with TestClient(create_app(settings)) as other_process:
            again = post(other_process, "evt_unacked")
        assert again.status_code == 503, again.text
        assert post(client, "evt_unacked").status_code == 503
    retry = post(client, "evt_unacked")
    assert retry.status_code == 200, retry.text
    assert retry.json()["data"] == {"eventId": "evt_unacked", "state": "duplicate"}
    replica = topo.client(topo.replica_port())
    assert replica.hget(event_key, "state") == b"queued"
    # One task for the three requests, on the master and on the replica.
    assert master.llen(settings.celery_queue) == 1
    assert replica.llen(settings.celery_queue) == 1


def test_without_required_replicas_there_is_no_wait(
    topo: SentinelTopology, settings: Settings
) -> None:
    unwaited = settings.model_copy(update={"redis_min_replicas": 0})
    with TestClient(create_app(unwaited)) as client, topo.paused(topo.replica_port()):
        assert post(client, "evt_nowait").status_code == 202


def test_a_delivery_is_confirmed_only_when_the_replica_has_its_record(
    topo: SentinelTopology, settings: Settings
) -> None:
    runtime = build_runtime(settings)
    runtime.store.redis.set(f"{settings.redis_key_prefix}probe", "1")
    runtime.confirm_replicated()
    with topo.paused(topo.replica_port()), pytest.raises(NotReplicated) as caught:
        runtime.confirm_replicated()
    assert str(caught.value) == (
        f"redis: 0 of 1 replicas acknowledged the write within {TIMEOUT_MS} ms"
    )
    # A NotReplicated is a Throttled: the delivery waits and retries, using no attempt.
    assert caught.value.retry_after == 1.0


def test_a_delivery_posts_nothing_until_the_replica_holds_its_posting_record(
    topo: SentinelTopology, settings: Settings
) -> None:
    runtime = build_runtime(settings)
    sink = RecordingSink(settings, runtime.limiter)
    runtime.sinks = {"recording": sink}
    event = Event(id="evt_held", type="support_ticket", ticket_id="1", visitor_id=VID)
    assert runtime.store.accept(event)
    context = JourneyContext(provider="DataFast", visitor_id=VID)
    runtime.store.save_context(event.id, context)
    runtime.store.plan_sinks(event.id, {"recording": SinkRecord()}, {})
    with topo.paused(topo.replica_port()):
        # Waiting for the replica, as for a rate limit: nothing posted, no attempt used.
        assert deliver(runtime, event, context, "recording") == 1.0
        assert sink.posted == []
        record = runtime.store.sink_record(event.id, "recording")
        assert record is not None and (record.state, record.attempts) == ("pending", 0)
    assert deliver(runtime, event, context, "recording") is None
    assert sink.posted == [event.marker]


def test_plain_redis_clients_and_sentinel_clients_reach_the_same_master(
    topo: SentinelTopology, settings: Settings
) -> None:
    runtime = build_runtime(settings)
    runtime.redis.set(f"{settings.redis_key_prefix}where", "here")
    direct = topo.client(topo.master_port())
    assert direct.get(f"{settings.redis_key_prefix}where") == b"here"


def test_a_hash_left_by_a_task_on_a_new_master_is_not_taken_for_the_event(
    topo: SentinelTopology, settings: Settings, client: TestClient
) -> None:
    """A worker's writes that reached the new master after a failover, for an event that was
    only on the old one (its sender got 503), leave an event hash without the event: the
    sender's retry must be accepted and queued, not answered "duplicate"."""
    runtime = build_runtime(settings)
    key = f"{settings.redis_key_prefix}event:evt_phantom"
    runtime.redis.hset(key, mapping={"state": "failed", "reason": "stale"})
    runtime.store.save_sink("evt_phantom", "zendesk", SinkRecord(state="delivered", attempts=1))
    response = post(client, "evt_phantom")
    assert response.status_code == 202, response.text
    assert runtime.redis.hget(key, "state") == b"queued"
    assert runtime.redis.hget(key, "reason") is None
    assert runtime.redis.llen(settings.celery_queue) == 1
    # What was posted stays recorded, so the new task does not post it again.
    record = runtime.store.sink_record("evt_phantom", "zendesk")
    assert record is not None and record.state == "delivered"
    # An accepted event whose personal data retention removed (no 'event' field) is still one.
    assert runtime.store.scrub_event("evt_phantom")
    assert runtime.redis.hget(key, "event") is None
    again = post(client, "evt_phantom")
    assert again.status_code == 200, again.text
    assert runtime.redis.llen(settings.celery_queue) == 1


def test_the_cli_finds_redis_through_the_sentinels(topo: SentinelTopology) -> None:
    from worker.cli import _redis_answers

    assert _redis_answers(topo.url)
    unknown_master = topo.url.replace("/mymaster/", "/othermaster/")
    assert not _redis_answers(unknown_master)
