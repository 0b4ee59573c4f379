"""REDIS_URL: a plain Redis URL or Sentinels (``redis+sentinel://``), parsed once and handed to
redis-py, kombu and celery-redbeat each in its own form; a bad one fails at start-up naming
REDIS_URL without repeating its password."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from config.redis_target import SentinelTarget, parse_redis_url
from config.settings import ConfigError, Settings, load_settings
from worker.app import broker_settings, create_celery, redbeat_settings
from worker.broker import SentinelChannel, SentinelTransport

PASSWORD = "s3cr3t-Redis-pa55"


def settings(redis_url: str, **overrides: Any) -> Settings:
    return load_settings(_env_file=None, redis_url=redis_url, **overrides)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/2",
            SentinelTarget(
                (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)), "mymaster", 2
            ),
        ),
        (
            "redis+sentinel://s1/cache.main",
            SentinelTarget((("s1", 26379),), "cache.main", 0),
        ),
        (
            f"redis+sentinel://:{PASSWORD}@s1:1,[::1]:2,[fe80::1]/m/0",
            SentinelTarget((("s1", 1), ("::1", 2), ("fe80::1", 26379)), "m", 0, None, PASSWORD),
        ),
        (
            "REDIS+SENTINEL://app%40x:p%3Aw@s1:5/m/",
            SentinelTarget((("s1", 5),), "m", 0, "app@x", "p:w"),
        ),
    ],
)
def test_sentinel_urls_are_parsed(url: str, expected: SentinelTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://:pw@host:6380/1", "unix:///run/redis.sock"]
)
def test_plain_urls_are_used_as_they_are(url: str) -> None:
    assert parse_redis_url(url) == url
    assert settings(url).replicas_to_wait_for == 0
    assert broker_settings(settings(url)) == (url, "worker.broker:Transport", {})


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("localhost:6379", "must be a redis://"),
        ("http://localhost:6379/0", "must be a redis://"),
        ("sentinel://s1:26379", "must be a redis://"),
        (f"redis+sentinel://:{PASSWORD}@s1:26379", "needs the master's name"),
        (f"redis+sentinel://:{PASSWORD}@s1:26379/", "needs the master's name"),
        ("redis+sentinel://s1:26379/m/0/extra", "needs the master's name"),
        ("redis+sentinel://s1:26379/m/zero", "must be a number"),
        (f"redis+sentinel://:{PASSWORD}@s1:99999/m", "port must be a number"),
        ("redis+sentinel://s1:port/m", "port must be a number"),
        ("redis+sentinel://s1,,s2/m", "every Sentinel needs a host"),
        ("redis+sentinel://s1/m?ssl=true", "no ?query"),
    ],
)
def test_a_bad_url_fails_at_start_up_naming_redis_url(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(url)
    message = str(caught.value)
    assert "REDIS_URL: " in message
    assert complaint in message
    assert PASSWORD not in message


def test_replicas_default_to_one_with_sentinels_and_can_be_set() -> None:
    url = "redis+sentinel://s1,s2,s3/mymaster/0"
    assert settings(url).replicas_to_wait_for == 1
    assert settings(url, redis_min_replicas=0).replicas_to_wait_for == 0
    assert settings(url, redis_min_replicas=2).replicas_to_wait_for == 2
    assert settings("redis://h/0", redis_min_replicas=1).replicas_to_wait_for == 1
    assert settings(url).redis_replica_timeout_ms == 1000
    with pytest.raises(ConfigError, match="REDIS_REPLICA_TIMEOUT_MS"):
        settings(url, redis_replica_timeout_ms=0)
    with pytest.raises(ConfigError, match="REDIS_MIN_REPLICAS"):
        settings(url, redis_min_replicas=-1)


def test_the_redis_password_is_scrubbed_from_logs() -> None:
    assert PASSWORD in settings(f"redis+sentinel://:{PASSWORD}@s1/m").secret_values()
    assert PASSWORD in settings(f"redis://:{PASSWORD}@h:6379/0").secret_values()


def test_celerys_broker_asks_the_sentinels_in_kombus_form() -> None:
    s = settings(f"redis+sentinel://:{PASSWORD}@10.0.0.1:26379,[::1]:26380/mymaster/3")
    url, transport, options = broker_settings(s)
    assert url == (f"sentinel://:{PASSWORD}@10.0.0.1:26379/3;sentinel://[::1]:26380/3")
    assert options == {"master_name": "mymaster"}
    assert transport == "worker.broker:SentinelTransport"
    app = create_celery(s)
    assert app.conf.broker_transport_options["master_name"] == "mymaster"
    # kombu's Sentinel transport (with worker/broker.py's fix), reading every Sentinel.
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, SentinelTransport)
        assert connection.transport.Channel is SentinelChannel
        assert issubclass(SentinelChannel, kombu_redis.SentinelChannel)
        assert connection.alt == url.split(";")


def test_beat_asks_the_sentinels_in_redbeats_form() -> None:
    s = settings("redis+sentinel://app:pw@s1:26379,s2:26380/mymaster/3")
    conf = redbeat_settings(s)
    assert conf["redbeat_redis_url"].startswith("redis-sentinel")
    options = conf["redbeat_redis_options"]
    assert options["sentinels"] == [("s1", 26379), ("s2", 26380)]
    assert (options["service_name"], options["db"]) == ("mymaster", 3)
    assert (options["username"], options["password"]) == ("app", "pw")
    plain = redbeat_settings(settings("redis://h:6379/0"))
    assert plain["redbeat_redis_url"] == "redis://h:6379/0"
