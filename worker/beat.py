"""Beat's scheduler: celery-redbeat, which keeps the schedule and a single-runner lock in Redis.

``worker/app.py`` makes it the ``beat_scheduler``, so every ``celery -A worker.app beat`` (the
Procfile, docker compose, ``visitor-enrich serve``) uses it and no schedule file is written.

Each beat process wants the lock ``{REDIS_KEY_PREFIX}redbeat::lock``. The one holding it sends
the due tasks and renews the lock to ``BEAT_LOCK_TIMEOUT`` seconds at each tick (at least every
fifth of it); the others try to take it as often and send nothing. When the active beat dies,
its lock expires and a standby takes over within ``BEAT_LOCK_TIMEOUT`` plus a fifth. Each
entry's last run time is in Redis too (``{REDIS_KEY_PREFIX}redbeat:<entry>``), so the beat that
takes over keeps every period where the dead one left it.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import redis
from redbeat import RedBeatScheduler
from redbeat.schedulers import acquire_distributed_beat_lock
from redis.exceptions import LockError
from redis.lock import Lock

log = logging.getLogger(__name__)


# RedBeat is untyped.
class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat, except that a beat which loses its lock or Redis waits instead of exiting.

    RedBeat renews its lock at each tick and lets the error escape when the lock is gone (the
    beat stalled past the lock timeout, or Redis lost the key) or Redis does not answer: beat
    exits (sibson/redbeat#230), and a deployment whose beats are not restarted is left with
    none. Here such a beat goes back to waiting for the lock, as a freshly started one does;
    whichever beat takes it next schedules. Written here because RedBeat has no option for it.
    """

    lock: Lock | None = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock is None and self.lock_key:
                # RedBeat takes the lock once, in its beat_init handler, whose errors Celery
                # only logs (Redis down at start); and a lost lock is dropped below. Wait for it
                # here, blocking like a standby beat at start.
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
            return float(super().tick(*args, **kwargs))
        except LockError as exc:
            self.lock = None
            log.warning("beat: lost the scheduler lock (%s); waiting to take it again", exc)
            return 0.0
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: Redis did not answer (%s); trying again", exc)
            return float(self.max_interval)
