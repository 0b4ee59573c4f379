"""Shared fixtures: a real Redis on 127.0.0.1:6379, a unique key prefix and Celery queue per
test (or module), and their clean-up.

Tests never share keys: every fixture hands out a fresh ``test-<uuid>:`` prefix and a fresh
queue name, so concurrent runs (other engineers, other modules) cannot see each other's data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from harness import REDIS_HOST, REDIS_PORT, REDIS_URL, cleanup_redis, new_prefix, new_queue

# worker.app builds its Celery app from the environment at import time; make sure an
# in-process publisher (tests/test_web.py) talks to the same Redis as everything else.
os.environ["REDIS_URL"] = REDIS_URL


def _ping() -> bool:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The URL of a Redis that answers on 127.0.0.1:6379, started here when none does."""
    if _ping():
        return REDIS_URL
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "no Redis answers on 127.0.0.1:6379 and redis-server is not on PATH: install Redis "
            "(e.g. apt-get install redis-server) or start one on port 6379",
            pytrace=False,
        )
    subprocess.run(
        [
            binary,
            "--port",
            str(REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _ping():
            return REDIS_URL
        time.sleep(0.05)
    pytest.fail("started redis-server but it does not answer on 127.0.0.1:6379", pytrace=False)


@pytest.fixture
def redis_client(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def module_redis(redis_server: str) -> Iterator[redis.Redis]:
    """A client for a module's fixtures (a service started once per module)."""
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A unique ``REDIS_KEY_PREFIX`` for one test; its keys are deleted afterwards."""
    prefix = new_prefix()
    yield prefix
    cleanup_redis(redis_client, prefix)


@pytest.fixture
def isolation(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A unique (``REDIS_KEY_PREFIX``, ``CELERY_QUEUE``) pair, cleaned up afterwards."""
    prefix, queue = new_prefix(), new_queue()
    yield prefix, queue
    cleanup_redis(redis_client, prefix, queue)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item (``item.rep_call``), so a fixture can tell
    after the test whether it failed (the browser tests then save screenshots)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
