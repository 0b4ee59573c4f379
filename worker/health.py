"""What the operator sees of the running service, read from Redis: queue depth and oldest
waiting task, dead letters, each system's circuit, last error and rate-limit use, workers.

The console's health page and the Prometheus gauges both read it (worker/metrics.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from config import Rate
from worker import heartbeat
from worker.metrics import SharedState

if TYPE_CHECKING:  # worker.http records errors here; the runtime imports worker.http
    from worker.runtime import Runtime

# Rate-limit use is counted per bucket of this many seconds (worker/ratelimit.py) and read
# over the last minute.
USE_BUCKET_SECONDS = 10
USE_WINDOW_SECONDS = 60


def last_error_key(prefix: str, system: str) -> str:
    return f"{prefix}lasterror:{system}"


def record_error(client: redis.Redis, prefix: str, system: str, message: str) -> None:
    """Keep the last error a system gave (a day), for the health page."""
    entry = json.dumps({"at": time.time(), "message": message[:300]})
    # Only the health page loses this when Redis fails; the error being raised must not be
    # replaced by Redis's.
    with contextlib.suppress(redis.RedisError):
        client.set(last_error_key(prefix, system), entry, ex=86400)


def use_bucket_key(prefix: str, system: str, now: float) -> str:
    return f"{prefix}rateuse:{system}:{int(now // USE_BUCKET_SECONDS)}"


@dataclass(frozen=True)
class SystemHealth:
    name: str
    kind: str  # "source" or "sink"
    circuit_open: bool
    last_error: str | None
    last_error_age: float | None
    used_last_minute: int
    limit_per_minute: float


@dataclass(frozen=True)
class WaitingTask:
    event_id: str
    task: str
    created_at: str | None


@dataclass(frozen=True)
class Health:
    redis_up: bool
    redis_error: str | None = None
    queue_depth: int = 0
    oldest_waiting: WaitingTask | None = None
    inflight: int = 0
    dead_letters: int = 0
    systems: tuple[SystemHealth, ...] = ()
    workers: tuple[tuple[str, float], ...] = ()


def per_minute(rate: Rate) -> float:
    return rate.amount * USE_WINDOW_SECONDS / rate.seconds


def systems(rt: Runtime) -> dict[str, tuple[str, Rate]]:
    """Each configured upstream system: its kind and shared rate."""
    found: dict[str, tuple[str, Rate]] = {}
    source = rt.source
    if source is not None and getattr(source, "http", None) is not None:
        found[source.http.service] = ("source", source.http.rate)
    for sink in rt.sinks.values():
        http = getattr(sink, "http", None)
        if http is not None:
            found.setdefault(http.service, ("sink", http.rate))
    return found


def task_event_id(message: bytes | str) -> tuple[str, str]:
    """(event id, task name) of a Celery task message as kombu's Redis transport keeps it."""
    envelope = json.loads(message)
    body: Any = json.loads(base64.b64decode(envelope["body"]))
    args = body[0] if isinstance(body, list) and body else []
    task = str(envelope.get("headers", {}).get("task", ""))
    return (str(args[0]) if args else "", task)


class RedisHealth(SharedState):
    """Reads of the shared state for one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.redis = rt.redis
        self.prefix = rt.settings.redis_key_prefix
        self.queue = rt.settings.celery_queue

    def queue_depth(self) -> int:
        return int(self.redis.llen(self.queue))

    def dead_letters(self) -> int:
        return int(self.redis.hlen(f"{self.prefix}dead"))

    def circuits(self) -> dict[str, bool]:
        names = list(systems(self.rt))
        if not names:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(f"{self.prefix}circuit:{name}:open")
        return {name: bool(v) for name, v in zip(names, pipe.execute(), strict=True)}

    def read(self) -> Health:
        try:
            return self._read()
        except redis.RedisError as exc:
            return Health(redis_up=False, redis_error=type(exc).__name__)

    def _read(self) -> Health:
        now = time.time()
        known = systems(self.rt)
        moments = [
            now - i * USE_BUCKET_SECONDS for i in range(USE_WINDOW_SECONDS // USE_BUCKET_SECONDS)
        ]
        pipe = self.redis.pipeline(transaction=False)
        pipe.ping()
        pipe.llen(self.queue)
        pipe.lindex(self.queue, -1)  # LPUSH adds on the left; workers take from the right
        pipe.zcard(f"{self.prefix}inflight")
        pipe.hlen(f"{self.prefix}dead")
        for name in known:
            pipe.exists(f"{self.prefix}circuit:{name}:open")
            pipe.get(last_error_key(self.prefix, name))
            pipe.mget([use_bucket_key(self.prefix, name, moment) for moment in moments])
        _, depth, oldest, inflight, dead, *per_system = pipe.execute()
        rows = []
        for i, (name, (kind, rate)) in enumerate(known.items()):
            is_open, raw_error, uses = per_system[3 * i : 3 * i + 3]
            error = json.loads(raw_error) if raw_error else None
            rows.append(
                SystemHealth(
                    name=name,
                    kind=kind,
                    circuit_open=bool(is_open),
                    last_error=error["message"] if error else None,
                    last_error_age=now - float(error["at"]) if error else None,
                    used_last_minute=sum(int(u) for u in uses if u),
                    limit_per_minute=per_minute(rate),
                )
            )
        return Health(
            redis_up=True,
            queue_depth=int(depth),
            oldest_waiting=self._waiting(oldest),
            inflight=int(inflight),
            dead_letters=int(dead),
            systems=tuple(rows),
            workers=tuple(heartbeat.seen_since(self.redis, self.prefix, 60)),
        )

    def _waiting(self, message: bytes | None) -> WaitingTask | None:
        if not message:
            return None
        try:
            event_id, task = task_event_id(message)
        except (ValueError, KeyError, TypeError):
            return WaitingTask(event_id="?", task="unreadable message", created_at=None)
        created = self.rt.store.get_field(event_id, "created_at") if event_id else None
        return WaitingTask(event_id=event_id, task=task, created_at=created)
