"""Which workers are alive: each worker process stamps itself into a Redis sorted set.

A minimal scheme for the console's health page ("workers seen in the last minute"): key
``{prefix}workers``, member ``hostname:pid``, score the unix time of its last beat, every
``INTERVAL`` seconds from a daemon thread started when the worker is ready.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

log = logging.getLogger(__name__)

INTERVAL = 15.0
# A member not seen for this long is dropped when the set is read.
FORGET_AFTER = 3600.0


def workers_key(prefix: str) -> str:
    return f"{prefix}workers"


def beat(client: redis.Redis, prefix: str, name: str, now: float | None = None) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.zadd(workers_key(prefix), {name: time.time() if now is None else now})
    # A deployment whose workers are all gone leaves no key behind for long.
    pipe.expire(workers_key(prefix), int(FORGET_AFTER))
    pipe.execute()


def seen_since(client: redis.Redis, prefix: str, seconds: float) -> list[tuple[str, float]]:
    """Workers that beat within the last ``seconds``: (name, seconds since), newest first."""
    now = time.time()
    key = workers_key(prefix)
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", now - FORGET_AFTER)
    pipe.zrevrangebyscore(key, "+inf", now - seconds, withscores=True)
    _, members = pipe.execute()
    return [
        (m.decode() if isinstance(m, bytes) else str(m), max(0.0, now - float(score)))
        for m, score in members
    ]


def start(client: redis.Redis, prefix: str) -> threading.Thread:
    """Beat now and every ``INTERVAL`` seconds for the life of the process."""
    name = f"{socket.gethostname()}:{os.getpid()}"

    def loop() -> None:
        while True:
            try:
                beat(client, prefix, name)
            except redis.RedisError as exc:
                log.warning("heartbeat failed", extra={"error": type(exc).__name__})
            time.sleep(INTERVAL)

    thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
    thread.start()
    return thread
