"""A real web process and worker for the operator-surface tests (console, metrics, sandbox),
each under its own key prefix, queue and metrics directory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from harness import REDIS_URL, Service, cleanup_redis, new_prefix, new_queue


@contextmanager
def running_service(
    tmp_path_factory: pytest.TempPathFactory, name: str, **settings: str
) -> Iterator[Service]:
    """The service with ``settings`` (environment names) on top of an isolated Redis prefix,
    queue and ``PROMETHEUS_MULTIPROC_DIR``; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix, queue = new_prefix(), new_queue()
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp(f"{name}-metrics")),
        **settings,
    }
    service = Service(env, tmp_path_factory.mktemp(f"{name}-logs"), redis_client=client)
    try:
        with service:
            yield service
    finally:
        cleanup_redis(client, prefix, queue)
        client.close()
