"""Privacy and access end to end, with the real web and worker processes (and beat, for
retention) on the real Redis, against local fakes of DataFast, Rocket.Chat (tests/seed_fakes)
and HubSpot and Zendesk (tests/fakes.py):

1. the status API without, with a wrong and with the right token;
2. WEBHOOK_SECRET listing the old and the new secret during a rotation;
3. one visitor's signup (HubSpot note), ticket (Zendesk comment), livechat event whose visitor id
   is found by a Rocket.Chat lookup (room message) and a failed signup (dead letter), erased by
   ``DELETE /v1/visitors/{id}`` and ``visitor-enrich erase --email``, then a scan of every key;
4. JOURNEY_RETENTION_SECONDS=2 with beat: the journey goes, the state and step names stay.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fakes import FakeUpstream
from harness import (
    BIN,
    REDIS_URL,
    ROOT,
    Service,
    bearer,
    cleanup_redis,
    dump_keys,
    new_prefix,
    new_queue,
    wait_for,
)
from seed_fakes import SeedFake, rc_visitor_seed_004

from worker.integrations.hubspot import HUBSPOT_PROPERTIES

pytestmark = pytest.mark.e2e

OLD_SECRET = "whsec_" + base64.b64encode(b"e2e secret being rotated out....").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"e2e secret being rotated in.....").decode()
UNKNOWN_SECRET = "whsec_" + base64.b64encode(b"e2e secret nobody configured....").decode()


@pytest.fixture(scope="module")
def seed() -> Iterator[SeedFake]:
    with SeedFake() as server:
        yield server


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.define_contact_properties([str(p["name"]) for p in HUBSPOT_PROPERTIES])
        yield server


def _env(seed: SeedFake, shared: FakeUpstream, prefix: str, queue: str) -> dict[str, str]:
    outside = {k: v for k, v in shared.env().items() if k.startswith(("HUBSPOT", "ZENDESK"))}
    return {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "WEBHOOK_SECRET": f"{OLD_SECRET},{NEW_SECRET}",
        **{k: v for k, v in seed.env().items() if not k.startswith("POSTMETRIC")},
        **outside,
        "MAX_RETRIES": "1",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "1",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def svc(
    seed: SeedFake,
    shared: FakeUpstream,
    module_redis: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    prefix, queue = new_prefix(), new_queue()
    log_dir = tmp_path_factory.mktemp("privacy")
    try:
        with Service(_env(seed, shared, prefix, queue), log_dir, redis_client=module_redis) as s:
            yield s
    finally:
        cleanup_redis(module_redis, prefix, queue)


class Person:
    """One visitor's identifiers, unique to the test."""

    def __init__(self, seed: SeedFake) -> None:
        self.visitor = str(uuid.uuid4())
        self.email = f"erase-me-{uuid.uuid4().hex[:8]}@example.com"
        self.name = f"Name{uuid.uuid4().hex[:8]}"
        self.chat_visitor = f"lv-{uuid.uuid4().hex[:10]}"
        seed.datafast_visitors[self.visitor] = {
            "visitorId": self.visitor,
            "identity": {"country": "France", "city": "Paris"},
            "activity": {
                "visitCount": 3,
                "visitedPages": [
                    {
                        "url": f"https://example.com/p?v={self.visitor}",
                        "timestamp": "2026-11-22T09:58:00Z",
                    }
                ],
            },
            "prediction": {"score": 20},
        }
        seed.rc_visitors[self.chat_visitor] = rc_visitor_seed_004(
            self.chat_visitor, {"datafast_visitor_id": self.visitor}
        )

    def found_in(self, text: str) -> list[str]:
        ids = (self.visitor, self.email, self.name, self.chat_visitor)
        return [i for i in ids if i.lower() in text.lower()]


def cli(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    """``visitor-enrich`` with the service's environment."""
    return subprocess.run(
        [str(BIN / "visitor-enrich"), *args],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _send(svc: Service, body: dict[str, Any], *, secret: str = NEW_SECRET) -> str:
    event_id = f"evt_{uuid.uuid4().hex[:12]}"
    response = svc.send_event(body, event_id=event_id, secret=secret)
    assert response.status_code == 202, response.text
    return event_id


# 1. and 2. ---------------------------------------------------------------------------------


def test_status_api_without_wrong_and_right_token(svc: Service, seed: SeedFake) -> None:
    assert svc.http is not None
    who = Person(seed)
    event_id = _send(svc, {"type": "signup", "datafast_visitor_id": who.visitor})
    path = f"/v1/events/{event_id}"
    without = svc.http.get(path)
    assert without.status_code == 401 and without.json()["status"] == "error"
    wrong = svc.http.get(path, headers=bearer("not-the-token"))
    assert wrong.status_code == 401
    assert svc.api_token not in wrong.text and who.visitor not in wrong.text
    right = svc.http.get(path, headers=bearer(svc.api_token))
    assert right.status_code == 200 and right.json()["data"]["visitorId"] == who.visitor
    assert svc.http.delete(f"/v1/visitors/{who.visitor}").status_code == 401
    assert svc.api_token not in svc.logs()


def test_old_and_new_secret_pass_during_a_rotation_and_another_does_not(
    svc: Service, seed: SeedFake
) -> None:
    who = Person(seed)
    body = {"type": "signup", "datafast_visitor_id": who.visitor}
    for secret in (OLD_SECRET, NEW_SECRET):
        svc.wait_for_state(_send(svc, body, secret=secret))
    response = svc.send_event(body, event_id=f"evt_{uuid.uuid4().hex}", secret=UNKNOWN_SECRET)
    assert response.status_code == 401
    logs = svc.logs()
    assert OLD_SECRET not in logs and NEW_SECRET not in logs


# 3. Erasure --------------------------------------------------------------------------------


def test_erasure_removes_every_trace_and_lists_the_notes(
    svc: Service, seed: SeedFake, shared: FakeUpstream, module_redis: redis.Redis
) -> None:
    assert svc.http is not None
    who = Person(seed)
    ticket = str(uuid.uuid4().int % 10**8)
    shared.add_ticket(ticket)
    room = f"room-{uuid.uuid4().hex[:8]}"
    seed.add_room(room)
    signup = _send(
        svc,
        {
            "type": "signup",
            "datafast_visitor_id": who.visitor,
            "email": who.email,
            "name": who.name,
        },
    )
    ticket_event = _send(
        svc, {"type": "support_ticket", "datafast_visitor_id": who.visitor, "ticket_id": ticket}
    )
    livechat = _send(
        svc, {"type": "livechat", "livechat_visitor_id": who.chat_visitor, "room_id": room}
    )
    # HubSpot refuses this one's note for good: a failed sink and a dead letter.
    failing = f"evt_{uuid.uuid4().hex[:12]}"
    shared.fail("hubspot", 400, match=failing, times=None)
    body = {"type": "signup", "datafast_visitor_id": who.visitor, "email": who.email}
    assert svc.send_event(body, event_id=failing, secret=NEW_SECRET).status_code == 202

    for event_id in (signup, ticket_event, livechat, failing):
        svc.wait_for_state(event_id)
    assert svc.status(livechat)["visitorId"] == who.visitor  # found by the Rocket.Chat lookup
    assert svc.status(failing)["sinks"]["hubspot"]["state"] == "failed"
    before = dump_keys(module_redis, svc.prefix)
    assert set(who.found_in(before)) == {who.visitor, who.email, who.name, who.chat_visitor}
    external = {
        (name, sink["external_id"])
        for event_id in (signup, ticket_event, livechat)
        for name, sink in svc.status(event_id)["sinks"].items()
        if sink["external_id"]
    }
    assert {name for name, _ in external} == {"hubspot", "zendesk", "rocketchat"}

    response = svc.http.delete(f"/v1/visitors/{who.visitor}", headers=bearer(svc.api_token))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["erasedEvents"] == 4
    assert {(n["system"], n["externalId"]) for n in data["notes"]} == external

    # The email may name events the visitor id does not: the CLI erases by email.
    result = cli(svc, "erase", "--email", who.email.upper())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("erased 0 events")

    after = dump_keys(module_redis, svc.prefix)
    assert who.found_in(after) == [], after
    for event_id in (signup, ticket_event, livechat, failing):
        assert svc.status(event_id) is None
    # The sender's retry is still a duplicate: nothing is fetched or posted again.
    retry = svc.send_event(body, event_id=failing, secret=NEW_SECRET)
    assert retry.status_code == 200 and retry.json()["data"]["state"] == "duplicate"
    audit = [line for line in module_redis.lrange(f"{svc.prefix}audit", 0, -1)]
    assert len(audit) == 2 and who.found_in(repr(audit)) == []
    assert "erasure done" in svc.log("web")


def test_cli_erase_lists_the_notes(svc: Service, seed: SeedFake, shared: FakeUpstream) -> None:
    who = Person(seed)
    ticket = str(uuid.uuid4().int % 10**8)
    shared.add_ticket(ticket)
    event_id = _send(
        svc, {"type": "support_ticket", "datafast_visitor_id": who.visitor, "ticket_id": ticket}
    )
    status = svc.wait_for_state(event_id, {"delivered"})
    comment_id = status["sinks"]["zendesk"]["external_id"]
    result = cli(svc, "erase", "--visitor", who.visitor)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "erased 1 event",
        "notes posted to outside systems (remove them there):",
        f"  zendesk\t{comment_id}",
    ]
    assert svc.status(event_id) is None
    assert cli(svc, "erase").returncode == 2


# 4. Retention ------------------------------------------------------------------------------


def test_retention_removes_the_journey_and_keeps_the_state(
    seed: SeedFake,
    shared: FakeUpstream,
    module_redis: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    prefix, queue = new_prefix(), new_queue()
    env = {**_env(seed, shared, prefix, queue), "JOURNEY_RETENTION_SECONDS": "2"}
    log_dir: Path = tmp_path_factory.mktemp("privacy-retention")
    who = Person(seed)
    ticket = str(uuid.uuid4().int % 10**8)
    shared.add_ticket(ticket)
    try:
        with Service(env, log_dir, redis_client=module_redis) as svc:
            svc.start_beat("beat")  # stopped with the service
            event_id = _send(
                svc,
                {
                    "type": "support_ticket",
                    "datafast_visitor_id": who.visitor,
                    "email": who.email,
                    "ticket_id": ticket,
                },
            )
            delivered = svc.wait_for_state(event_id, {"delivered"})
            assert delivered["visitorId"] == who.visitor
            names = [s["step"] for s in delivered["steps"]]
            scrubbed = wait_for(
                lambda: (s := svc.status(event_id)) and "retention" in s and s,
                timeout=20,
                message="retention to remove the journey",
            )
        assert scrubbed["state"] == "delivered" and scrubbed["type"] == "support_ticket"
        assert scrubbed["visitorId"] is None
        assert [s["step"] for s in scrubbed["steps"]] == names
        assert scrubbed["sinks"]["zendesk"]["state"] == "delivered"
        assert scrubbed["sinks"]["zendesk"]["external_id"]
        assert who.found_in(dump_keys(module_redis, prefix)) == []
        # The dedupe window is longer: a retry is still a duplicate.
        assert module_redis.exists(f"{prefix}event:{event_id}")
    finally:
        cleanup_redis(module_redis, prefix, queue)
