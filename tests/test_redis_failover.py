"""Redis high availability end to end: the web process, two Celery workers and a beat (started
as the README says) with REDIS_URL naming three Sentinels of a master and its replica, all
started by the test on loopback (tests/sentinel_support.py). A failover happens while events
come in; every event answered 202 (or "duplicate" after a 503) is delivered, and each gets
exactly one note (Zendesk comment or HubSpot note). The sender behaves as a webhook sender
does: it sends an event again after a 503 or a dropped connection."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fakes import FakeUpstream, full_profile
from harness import TEST_SECRET, Service, new_prefix, new_queue, send_event, wait_for
from sentinel_support import SentinelTopology

from worker.integrations.hubspot import HUBSPOT_PROPERTIES

pytestmark = pytest.mark.e2e

_tickets = itertools.count(random.randint(10_000, 90_000) * 10)


@dataclass
class Sent:
    """One event as its sender saw it: every answer, in order."""

    event_id: str
    payload: dict[str, Any]
    first_at: float
    ticket: str | None = None
    email: str | None = None
    answers: list[int | str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        """Answered 202, or 200 "duplicate" for an id the service had taken (after a 503)."""
        return bool(self.answers) and self.answers[-1] in (200, 202)


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[SentinelTopology]:
    with SentinelTopology(tmp_path / "redis") as topology:
        yield topology


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.define_contact_properties([str(p["name"]) for p in HUBSPOT_PROPERTIES])
        yield server


def _send_until_answered(http: httpx.Client, sent: Sent, give_up_at: float) -> None:
    """Send (and after 503 or a dropped connection send again) until 2xx or ``give_up_at``."""
    while time.monotonic() < give_up_at:
        try:
            code: int | str = send_event(
                http, sent.payload, event_id=sent.event_id, secret=TEST_SECRET
            ).status_code
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        sent.answers.append(code)
        if code in (200, 202):
            return
        time.sleep(0.2)


def _events_of(client: redis.Redis, prefix: str, ids: list[str]) -> dict[str, str | None]:
    pipe = client.pipeline()
    for event_id in ids:
        pipe.hget(f"{prefix}event:{event_id}", "state")
    return {e: (s.decode() if s else None) for e, s in zip(ids, pipe.execute(), strict=True)}


@pytest.mark.parametrize("fault", ["sentinel-failover", "master-killed"])
def test_a_failover_under_load_loses_no_accepted_event_and_posts_no_note_twice(
    fault: str, topo: SentinelTopology, fake: FakeUpstream, tmp_path: Path
) -> None:
    """``SENTINEL FAILOVER`` (the old master lives on until the Sentinels turn it into a
    replica: what it takes meanwhile is lost), or the master killed with SIGKILL (what it
    had not replicated is lost) and started again empty."""
    visitor = fake.add_visitor(full_profile(score=20))
    prefix, queue = new_prefix(), new_queue()
    env = {
        "REDIS_URL": topo.url,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "WEBHOOK_SECRET": TEST_SECRET,
        **fake.env(),
        "MAX_RETRIES": "8",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "1",
        "HTTP_CONNECT_TIMEOUT": "1",
        "HTTP_READ_TIMEOUT": "2",
        # A task taken from the old master and lost with it comes back soon.
        "BROKER_VISIBILITY_TIMEOUT": "10",
        "STUCK_EVENT_SECONDS": "30",
        "DATAFAST_RATE_LIMIT": "1000",
        "ZENDESK_RATE_LIMIT": "1000",
        "HUBSPOT_RATE_LIMIT": "1000",
        "LOG_LEVEL": "INFO",
    }
    master_client = lambda: topo.client(topo.master_port())  # noqa: E731 - it moves
    old_master = topo.master_port()
    sent: list[Sent] = []
    stop = threading.Event()
    with Service(env, tmp_path / "logs", workers=2, redis_client=master_client()) as svc:
        svc.start_beat("beat")
        # Beat reads its schedule at start (an unreachable Redis then ends it, failover or not).
        wait_for(
            lambda: master_client().exists(f"{prefix}redbeat::lock"),
            30,
            message="beat to take its lock",
        )

        def sender() -> None:
            with httpx.Client(base_url=svc.url, timeout=10) as http:
                for n in itertools.count():
                    if stop.is_set():
                        return
                    event_id = f"evt_{uuid.uuid4().hex[:16]}"
                    if n % 4 == 3:  # a signup: a HubSpot note
                        email = f"lead-{uuid.uuid4().hex[:10]}@example.com"
                        payload = {"type": "signup", "datafast_visitor_id": visitor, "email": email}
                        item = Sent(event_id, payload, time.monotonic(), email=email)
                    else:  # a support ticket: a Zendesk comment
                        ticket = str(next(_tickets))
                        fake.add_ticket(ticket)
                        payload = {
                            "type": "support_ticket",
                            "datafast_visitor_id": visitor,
                            "ticket_id": ticket,
                        }
                        item = Sent(event_id, payload, time.monotonic(), ticket=ticket)
                    sent.append(item)
                    _send_until_answered(http, item, time.monotonic() + 120)
                    time.sleep(0.05)

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            time.sleep(3.0)
            failover_at = time.monotonic()
            new_master = topo.failover() if fault == "sentinel-failover" else topo.kill_master()
            settled_at = time.monotonic()
            time.sleep(4.0)
        finally:
            stop.set()
            thread.join(timeout=150)
        accepted = [s for s in sent if s.accepted]
        ids = [s.event_id for s in accepted]
        deadline = time.monotonic() + 90
        while True:
            states = _events_of(master_client(), prefix, ids)
            pending = {e: s for e, s in states.items() if s != "delivered"}
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        logs = svc.logs()
        crashed = [i for i, proc in enumerate(svc.worker_procs) if proc.poll() is not None]
        beat_alive = svc.beats["beat"].poll() is None

    answers = Counter(code for s in sent for code in s.answers)
    print(
        f"\n{len(sent)} events, {len(accepted)} accepted; answers {dict(answers)}; "
        f"failover took {settled_at - failover_at:.1f}s"
    )
    assert new_master != old_master
    assert set(answers) <= {200, 202, 503}, answers  # never another 5xx, never a timeout
    assert len(accepted) == len(sent), [s for s in sent if not s.accepted]
    # The service went on taking events once the new master was in place.
    assert any(s.first_at > settled_at and s.answers == [202] for s in sent)
    assert pending == {}, f"accepted but not delivered: {pending}\n{logs[-8000:]}"
    comments = {
        s.event_id: len([c for c in fake.zendesk_comments(s.ticket) if not c["public"]])
        for s in accepted
        if s.ticket
    }
    notes = {
        s.event_id: len(fake.hubspot_notes(contains=f"visitor-enrich:{s.event_id}"))
        for s in accepted
        if s.email
    }
    wrong = {e: n for e, n in (comments | notes).items() if n != 1}
    assert wrong == {}, f"notes per event (should be 1): {wrong}\n{logs[-8000:]}"
    assert beat_alive, logs[-8000:]
    # Every process reconnected by itself (worker/broker.py's Sentinel channel: no worker
    # ends on the lost connection).
    assert crashed == [], logs[-8000:]
    assert "Unrecoverable error" not in logs, logs[logs.index("Unrecoverable error") :][:6000]
