"""Redis restarted 20 times under inbound load, and nothing restarts the service's processes.

The web process, two Celery workers (threads pool) and beat run against a redis-server of the
test's own (``PrivateRedis``, AOF on; never the shared Redis), while a sender posts support
tickets all along. Redis is shut down and started again 20 times. Asserted:

- no process exits or stops: each reconnects by itself (kombu's Redis channel used to fail
  on a connection Celery had collected, see worker/broker.py);
- every event answered 202 is delivered within 30 s of Redis's last return, including those
  whose task was running or being taken off the queue at a shutdown (worker/lease.py), with
  exactly one Zendesk comment each;
- every other answer is a 503, and that event goes through when sent again.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from fakes import full_profile
from faults_support import (
    WEBHOOK_SECRET,
    FaultService,
    FaultyUpstream,
    PrivateRedis,
    TicketSender,
    wait_states,
)
from harness import new_prefix, new_queue, wait_for

pytestmark = pytest.mark.e2e

RESTARTS = 20
UP_SECONDS = 1.5  # Redis answers this long between two shutdowns
DOWN_SECONDS = 0.5
DELIVERY_BOUND = 30.0  # seconds after Redis's last return

_tickets = itertools.count(random.randint(10_000, 90_000) * 10)


def test_twenty_redis_restarts_under_load_no_process_exits_nothing_lost(tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path / "redis").start()
    client = private.client()
    try:
        with FaultyUpstream() as fake:
            visitor = fake.add_visitor(full_profile())

            def new_ticket() -> str:
                ticket = str(next(_tickets))
                fake.add_ticket(ticket)
                return ticket

            env = {
                "REDIS_URL": private.url,
                "REDIS_KEY_PREFIX": new_prefix(),
                "CELERY_QUEUE": new_queue(),
                "WEBHOOK_SECRET": WEBHOOK_SECRET,
                **fake.env(),
                "MAX_RETRIES": "5",
                "RETRY_BACKOFF_BASE": "0.2",
                "RETRY_BACKOFF_MAX": "1",
                "HTTP_CONNECT_TIMEOUT": "1",
                "HTTP_READ_TIMEOUT": "2",
                "DATAFAST_RATE_LIMIT": "1000",
                "ZENDESK_RATE_LIMIT": "1000",
                "LOG_LEVEL": "INFO",
            }
            log_dir = tmp_path / "logs"
            with FaultService(env, log_dir, workers=2, redis_client=client) as svc:
                # Beat as the Procfile runs it (schedule and lock in Redis, celery-redbeat).
                beat_proc = svc.start_beat("beat")
                wait_for(
                    lambda: "beat: Starting" in svc.log("beat") or beat_proc.poll() is not None,
                    30,
                    message="celery beat to start",
                )
                load = TicketSender(svc, fake, visitor, new_ticket, pause=0.03).start()
                started = time.monotonic()
                try:
                    for _ in range(RESTARTS):
                        time.sleep(UP_SECONDS)
                        private.shutdown()
                        time.sleep(DOWN_SECONDS)
                        private.start()
                    up_at = time.monotonic()
                    time.sleep(UP_SECONDS)
                finally:
                    load.stop()
                sent = load.sent
                restarts_took = time.monotonic() - started

                accepted, refused = load.accepted, load.refused
                states = wait_states(
                    client,
                    svc.prefix,
                    [s.event_id for s in accepted],
                    {"delivered"},
                    max(0.0, up_at + DELIVERY_BOUND - time.monotonic()),
                    check=False,
                )
                delivered_after = time.monotonic() - up_at
                exited = {
                    name: proc.returncode
                    for name, proc in [
                        ("web", svc.web),
                        *((f"worker{i}", p) for i, p in enumerate(svc.worker_procs)),
                        ("beat", beat_proc),
                    ]
                    if proc is not None and proc.poll() is not None
                }
                resent = [
                    svc.send_event(s.payload, event_id=s.event_id).status_code for s in refused
                ]
                resent_states = wait_states(
                    client, svc.prefix, [s.event_id for s in refused], {"delivered"}, 60
                )
                worker_logs = [svc.log(f"worker{i}") for i in range(2)]
                logs = svc.logs()
            comments = {s.event_id: len(fake.zendesk_comments(s.ticket)) for s in sent}
    finally:
        client.close()
        private.stop()

    codes = Counter(s.code for s in sent)
    print(
        f"\n{RESTARTS} restarts in {restarts_took:.0f}s; answers {dict(codes)}; "
        f"all accepted delivered {delivered_after:.1f}s after Redis's last return"
    )
    assert exited == {}, f"processes exited: {exited}\n{logs[-8000:]}"
    assert set(codes) <= {202, 503}, codes
    assert codes[503] > 0, "no restart was hit"
    assert len(accepted) > 100
    stuck = {e: s for e, s in states.items() if s != "delivered"}
    assert stuck == {}, f"not delivered within {DELIVERY_BOUND:g}s: {stuck}\n{logs[-8000:]}"
    assert set(resent) <= {202}, Counter(resent)
    assert set(resent_states.values()) <= {"delivered"}, resent_states
    wrong = {e: n for e, n in comments.items() if n != 1}
    assert wrong == {}, f"comments per event (should be 1): {wrong}"
    for log in worker_logs:
        assert log.count(" Connected to ") >= 2, log[-4000:]
        # A worker can stop after such an error without its process exiting.
        assert "Unrecoverable error" not in log, log[log.index("Unrecoverable error") :][:6000]
