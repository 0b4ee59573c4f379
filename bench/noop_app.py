"""The queue-overhead reference: a bare Celery app whose one task records when it ran.

Same Redis, same worker flavour as the service's worker (threads pool, late acks, prefetch 1),
no work: the round trip ``apply_async`` returned -> task body started is what the broker and
Celery cost by themselves. The task appends ``"<seq> <time.time()>"`` to a Redis list.

Configured from the environment: ``NOOP_BROKER_URL``, ``NOOP_QUEUE``, ``NOOP_KEY``.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("NOOP_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench_noop", broker=BROKER)
app.conf.update(
    task_default_queue=os.environ.get("NOOP_QUEUE", "bench-noop"),
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
_redis = redis.Redis.from_url(BROKER)


@app.task(name="bench_noop.record")
def record(seq: int, key: str) -> None:
    _redis.rpush(key, f"{seq} {time.time()}")
