"""Beat keeps its schedule and its single-runner lock in Redis (celery-redbeat, worker/beat.py).

- the Celery configuration: the scheduler, its keys under ``REDIS_KEY_PREFIX``, the lock
  timeout and loop interval from ``BEAT_LOCK_TIMEOUT``;
- the scheduler alone against the real Redis: a beat whose lock was taken from it stops
  scheduling and waits for the lock instead of exiting; one that cannot reach Redis tries
  again later;
- end to end: three beats started with the Procfile's command from one folder, with the real
  web and worker processes, DataFast's realtime map and Slack faked by local servers. One beat
  schedules; ``kill -9`` on it, and a standby takes over within the lock timeout; no beat exits
  by itself, the realtime poll and the stuck-event sweep keep their periods, each hot visitor
  is alerted once, and the folder stays empty.
"""

from __future__ import annotations

import itertools
import logging
import re
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from fakes import FakeUpstream
from harness import REDIS_URL, Service, free_port, wait_for
from seed_fakes import SeedFake, realtime_visitor

from config import ConfigError, load_settings
from worker.app import create_celery
from worker.beat import Scheduler

POLL_SECONDS = 1.0
LOCK_TIMEOUT = 5  # BEAT_LOCK_TIMEOUT: the lock is renewed, or tried for, every second
STUCK_EVENT_SECONDS = 30  # the smallest allowed: the sweep runs every 15 s
SWEEP_PERIOD = STUCK_EVENT_SECONDS / 2
# A standby takes the lock at most a loop interval (a fifth) after it expires; the rest is room
# for a loaded machine.
TAKEOVER = LOCK_TIMEOUT * 1.2
SLACK = 4.0
SENT = "Scheduler: Sending due task"


def _app(prefix: str, **overrides: Any) -> Celery:
    return create_celery(
        load_settings(_env_file=None, redis_url=REDIS_URL, redis_key_prefix=prefix, **overrides)
    )


# Configuration -----------------------------------------------------------------------------


def test_scheduler_keys_and_lock_follow_the_settings() -> None:
    app = _app("deploy-a:", beat_lock_timeout=30)
    assert app.conf.beat_scheduler == "worker.beat:Scheduler"
    assert app.conf.redbeat_redis_url == REDIS_URL
    scheduler = Scheduler(app=app, lazy=True)
    assert app.redbeat_conf.key_prefix == "deploy-a:redbeat:"
    assert app.redbeat_conf.schedule_key == "deploy-a:redbeat::schedule"
    assert scheduler.lock_key == "deploy-a:redbeat::lock"
    assert (scheduler.lock_timeout, scheduler.max_interval) == (30, 6)

    default = Scheduler(app=_app("deploy-b:"), lazy=True)
    assert (default.lock_key, default.lock_timeout) == ("deploy-b:redbeat::lock", 60)
    with pytest.raises(ConfigError, match="BEAT_LOCK_TIMEOUT"):
        load_settings(_env_file=None, beat_lock_timeout=2)


# The scheduler against the real Redis -------------------------------------------------------


@pytest.fixture
def scheduler(redis_client: redis.Redis, key_prefix: str) -> Iterator[Scheduler]:
    instance = Scheduler(app=_app(key_prefix, beat_lock_timeout=5))
    yield instance
    instance.close()


def test_a_beat_that_loses_its_lock_waits_for_it_instead_of_exiting(
    scheduler: Scheduler,
    redis_client: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock_key = f"{key_prefix}redbeat::lock"
    # The schedule is in Redis, under the prefix; nothing is due yet.
    assert redis_client.exists(f"{key_prefix}redbeat:requeue-stuck-events")
    assert scheduler.tick() > 0
    assert scheduler.lock is not None and scheduler.lock.owned()
    assert 4000 < redis_client.pttl(lock_key) <= 5000

    # It stalled past the lock timeout and another beat took the lock: this tick sends nothing.
    redis_client.set(lock_key, "another-beat", px=1500)
    with caplog.at_level(logging.WARNING, logger="worker.beat"):
        assert scheduler.tick() == 0
    assert scheduler.lock is None
    assert "lost the scheduler lock" in caplog.text
    assert redis_client.get(lock_key) == b"another-beat"

    # The next tick waits, as a standby does, and takes the lock once the other's expires.
    waited = time.monotonic()
    assert scheduler.tick() > 0
    assert time.monotonic() - waited >= 0.5
    assert scheduler.lock is not None and scheduler.lock.owned()

    scheduler.close()  # a stopped beat hands the lock on at once
    assert not redis_client.exists(lock_key)


def test_a_beat_that_cannot_reach_redis_tries_again(caplog: pytest.LogCaptureFixture) -> None:
    app = create_celery(
        load_settings(
            _env_file=None, redis_url=f"redis://127.0.0.1:{free_port()}/0", beat_lock_timeout=5
        )
    )
    scheduler = Scheduler(app=app, lazy=True)
    with caplog.at_level(logging.WARNING, logger="worker.beat"):
        assert scheduler.tick() == 1.0  # a loop interval later
    assert scheduler.lock is None
    assert "Redis did not answer" in caplog.text


# Three beats, one killed --------------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SWEEP_RAN = r"Task visitor_enrich\.requeue_stuck_events\[\S+\] succeeded"


def _times(log: str, pattern: str) -> list[float]:
    """Wall-clock seconds of the log lines in which ``pattern`` is found."""
    stamps = []
    for line in log.splitlines():
        match = _STAMP.match(line)
        if match and re.search(pattern, line):
            stamps.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return stamps


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _holder(svc: Service, names: list[str]) -> str | None:
    """The one beat among ``names`` that took the scheduler lock (redbeat logs it)."""
    holders = [n for n in names if "beat: Acquired lock" in svc.log(n)]
    assert len(holders) <= 1, {n: svc.log(n)[-2000:] for n in holders}
    return holders[0] if holders else None


@pytest.mark.e2e
def test_three_beats_one_scheduler_and_a_standby_takes_over_after_kill_9(
    tmp_path: Path, isolation: tuple[str, str], redis_client: redis.Redis
) -> None:
    prefix, queue = isolation
    folder = tmp_path / "project"
    folder.mkdir()
    tag = uuid.uuid4().hex[:6]
    hot_score, hot_path, cold, late = (f"{n}-{tag}" for n in ("score", "path", "cold", "late"))
    visitors = [
        realtime_visitor(hot_score, score=95),
        realtime_visitor(hot_path, url="/checkout"),
        realtime_visitor(cold, url="/blog", score=5),
    ]
    with SeedFake() as datafast, FakeUpstream() as slack:
        datafast.set_realtime(visitors)
        env = {
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "CELERY_QUEUE": queue,
            **{k: v for k, v in datafast.env().items() if k.startswith("DATAFAST")},
            "SLACK_WEBHOOK_URL": slack.base_url("slack"),
            "SLACK_RATE_LIMIT": "20",
            "REALTIME_POLL_SECONDS": str(POLL_SECONDS),
            "HOT_VISITOR_COOLDOWN": "3600",
            "STUCK_EVENT_SECONDS": str(STUCK_EVENT_SECONDS),
            "BEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
            "LOG_LEVEL": "INFO",
        }
        with Service(env, tmp_path / "logs", redis_client=redis_client) as svc:
            names = ["beat0", "beat1", "beat2"]
            for name in names:
                svc.start_beat(name, cwd=folder)
            active = wait_for(lambda: _holder(svc, names), 30, 0.1, "a beat to take the lock")
            wait_for(lambda: len(slack.slack_messages()) >= 2, 20, message="the first alerts")
            time.sleep(3 * POLL_SECONDS)

            killed_at = time.time()
            svc.beats[active].send_signal(signal.SIGKILL)
            svc.beats[active].wait(timeout=10)
            standbys = [n for n in names if n != active]
            successor = wait_for(
                lambda: _holder(svc, standbys), TAKEOVER + 20, 0.1, "a standby to take over"
            )
            took_over_at = _times(svc.log(successor), "beat: Acquired lock")[0]
            # A visitor who becomes hot after the takeover is alerted by the new scheduler.
            datafast.set_realtime([*visitors, realtime_visitor(late, url="/pricing")])
            wait_for(lambda: slack.slack_messages(late), 20, message="the late visitor's alert")

            def two_sweeps_one_after_the_kill() -> bool:
                ran = _times(svc.log("worker0"), SWEEP_RAN)
                return len(ran) >= 2 and ran[-1] > killed_at

            wait_for(
                two_sweeps_one_after_the_kill,
                2 * SWEEP_PERIOD + TAKEOVER + 20,
                0.2,
                "two stuck-event sweeps, one after the kill",
            )
            time.sleep(2 * POLL_SECONDS)
            ended_at = time.time()

            # No beat exited by itself; only the killed one is gone.
            for name in standbys:
                assert svc.beats[name].poll() is None, svc.log(name)[-3000:]
            assert svc.beats[active].returncode == -signal.SIGKILL
            sends = {n: _times(svc.log(n), re.escape(f"{SENT} poll-realtime")) for n in names}
            sweep_sends = {
                n: _times(svc.log(n), re.escape(f"{SENT} requeue-stuck-events")) for n in names
            }
            worker_log = svc.log("worker0")
            logs = svc.logs()

    # One scheduler at a time: the killed beat sent until its death, its successor only after
    # taking the lock, the third beat never.
    third = next(n for n in standbys if n != successor)
    assert sends[third] == [] and sweep_sends[third] == [], logs[-6000:]
    assert sends[active] and max(sends[active]) <= killed_at
    assert sends[successor] and min(sends[successor]) >= took_over_at - 0.01
    assert took_over_at - killed_at <= TAKEOVER + SLACK, (killed_at, took_over_at)
    for name in (active, successor):
        assert all(gap >= POLL_SECONDS * 0.8 for gap in _gaps(sends[name])), sends[name]

    # The realtime poll ran every period, with one gap no longer than the takeover.
    polls = [s.mono for s in datafast.seen("datafast", "/api/v1/analytics/realtime/map")]
    gaps = _gaps(polls)
    assert max(gaps) <= TAKEOVER + POLL_SECONDS + SLACK, gaps
    assert len(polls) >= (ended_at - killed_at - TAKEOVER) / POLL_SECONDS / 2, gaps

    # The sweep ran at its period across the takeover: the successor continued the dead beat's
    # schedule (kept in Redis) instead of starting the period again when it took over.
    ran = _times(worker_log, SWEEP_RAN)
    sent = sorted(sweep_sends[active] + sweep_sends[successor])
    assert len(ran) >= 2 and len(sent) == len(ran), (ran, sent)
    for gap in _gaps(sent):
        assert SWEEP_PERIOD - 1 <= gap <= SWEEP_PERIOD + TAKEOVER + SLACK, sent
    first_after_kill = min(t for t in sent if t > killed_at)
    assert first_after_kill < took_over_at + SWEEP_PERIOD - 1, (sent, took_over_at)

    # Each hot visitor alerted once, across every poll of every scheduler.
    for visitor in (hot_score, hot_path, late):
        assert len(slack.slack_messages(visitor)) == 1, visitor
    assert slack.slack_messages(cold) == []
    assert len(slack.slack_messages()) == 3

    # Nothing written in the folder the beats ran from; their state is in Redis, under the
    # prefix (the isolation fixture deletes it).
    assert sorted(p.name for p in folder.iterdir()) == []
    assert redis_client.exists(f"{prefix}redbeat::schedule", f"{prefix}redbeat::statics") == 2
