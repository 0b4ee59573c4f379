"""Realtime hot-visitor alerts: the map model (seeds 002/003), the pure selection, the Redis
claims and poll lock, one poll against fake DataFast and Slack servers, and the beat entry."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fakes import FakeUpstream
from seed_fakes import DATAFAST_KEY, SEED_VISITOR, SeedFake, realtime_seed_002, realtime_visitor

from config import Settings, load_settings
from worker.app import create_celery
from worker.integrations.datafast import RealtimeMap
from worker.integrations.slack import render_realtime_alert
from worker.journey import HotVisitor, RealtimeSnapshot
from worker.realtime import (
    claim,
    hot_key,
    is_cooling,
    poll,
    realtime_disabled_reason,
    run_realtime_once,
    select_hot_visitors,
    take_poll_lock,
)
from worker.runtime import Runtime, build_runtime


def settings_for(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"datafast_api_key": DATAFAST_KEY}
    values.update(overrides)
    return load_settings(_env_file=None, **values)


def _map(
    visitors: list[dict[str, Any]], payments: list[dict[str, Any]] | None = None
) -> RealtimeSnapshot:
    return RealtimeMap.model_validate(
        {"count": len(visitors), "visitors": visitors, "recentPayments": payments or []}
    ).snapshot()


def _keys(hot: list[HotVisitor]) -> list[str]:
    return [h.key for h in hot]


# The model and the selection ---------------------------------------------------------------


def test_seed_002_parses_and_its_pricing_visitor_is_hot() -> None:
    realtime = RealtimeMap.model_validate(realtime_seed_002())
    assert realtime.count == 2
    (visitor,) = realtime.visitors
    assert visitor.location.label == "Paris, FR"
    assert visitor.system.label == "desktop · Chrome"
    assert visitor.score is None
    (hot,) = select_hot_visitors(realtime.snapshot(), settings_for())
    assert hot.key == SEED_VISITOR and hot.reasons == ("on /pricing now",)


def test_tolerant_of_nulls_odd_entries_and_score_shapes() -> None:
    realtime = RealtimeMap.model_validate(
        {
            "count": None,
            "visitors": [
                {"visitorId": "a", "location": None, "system": None, "profileData": None},
                {"visitorId": "b", "conversionLikelihood": 81},
                {"visitorId": "c", "conversionLikelihood": {"conversionLikelihood": "75.5"}},
                {"visitorId": "d", "conversionLikelihood": {"score": None}},
                {"noId": True},
                "garbage",
            ],
            "conversionMetrics": None,
            "recentEvents": None,
            "recentPayments": None,
            "somethingNew": 1,
        }
    )
    assert [v.score for v in realtime.visitors] == [None, 81, 75.5, None]


def test_score_threshold_hot_paths_and_cold_visitors() -> None:
    realtime = _map(
        [
            realtime_visitor("high", score=70),
            realtime_visitor("low", score=69.9),
            realtime_visitor("pricing", url="https://shop.example/pricing/team?plan=pro"),
            realtime_visitor("checkout", url="/checkout"),
            realtime_visitor("near-miss", url="/pricing-old?x=/pricing"),
            realtime_visitor("blog", url="/blog", score=10),
        ]
    )
    hot = select_hot_visitors(realtime, settings_for())
    assert _keys(hot) == ["high", "pricing", "checkout"]
    assert hot[0].reasons == ("score 70 ≥ 70",)
    custom = select_hot_visitors(realtime, settings_for(hot_paths="/blog", lead_alert_min_score=5))
    assert _keys(custom) == ["high", "low", "blog"]


def test_payments_alert_only_with_the_flag() -> None:
    payment = {"visitorId": "buyer", "amount": 49, "currency": "usd", "id": "pay_1"}
    realtime = _map([realtime_visitor("buyer")], [payment])
    assert select_hot_visitors(realtime, settings_for()) == []
    (hot,) = select_hot_visitors(realtime, settings_for(alert_on_payments=True))
    assert hot.key == "payment:pay_1"
    assert hot.reasons == ("payment 49 USD just now",)
    assert hot.visitor.location == "Berlin, Berlin, DE"  # the active visitor's details


def test_alert_renders_location_device_url_score_and_profile() -> None:
    realtime = _map(
        [realtime_visitor("v1", url="/pricing", score=88, profile={"name": "Ada", "plan": "pro"})]
    )
    (hot,) = select_hot_visitors(realtime, settings_for())
    payload = render_realtime_alert(hot)
    text = json.dumps(payload, ensure_ascii=False)
    for words in ("Berlin, Berlin, DE", "desktop · Firefox · Mac OS", "/pricing", "88/100"):
        assert words in text
    assert "*Identify profile*\\nname: Ada\\nplan: pro" in text
    assert "visitor-enrich:realtime:v1" in payload["text"]
    assert payload["blocks"][0]["text"]["text"] == "Hot visitor on the site now: Ada"


# Redis claims and the poll lock ------------------------------------------------------------


def test_claim_is_once_per_cooldown_and_sink(redis_client: redis.Redis, key_prefix: str) -> None:
    seed = RealtimeMap.model_validate(realtime_seed_002()).snapshot()
    (hot,) = select_hot_visitors(seed, settings_for())
    assert not is_cooling(redis_client, key_prefix, "slack", hot)
    assert claim(redis_client, key_prefix, "slack", hot, 60) is True
    # A second process, same poll:
    assert claim(redis_client, key_prefix, "slack", hot, 60) is False
    assert is_cooling(redis_client, key_prefix, "slack", hot)
    ttl = redis_client.ttl(hot_key(key_prefix, "slack", SEED_VISITOR))
    assert 0 < ttl <= 60
    assert claim(redis_client, key_prefix, "discord", hot, 60) is True  # another alert sink
    assert claim(redis_client, key_prefix + "other:", "slack", hot, 60) is True  # deployment


def test_poll_lock_lets_one_poll_through(redis_client: redis.Redis, key_prefix: str) -> None:
    assert take_poll_lock(redis_client, key_prefix, 60) is True
    assert take_poll_lock(redis_client, key_prefix, 60) is False
    assert 0 < redis_client.pttl(f"{key_prefix}realtime:lock") <= 45_000


def test_disabled_reasons_and_the_beat_entry() -> None:
    slack = {"slack_webhook_url": "https://hooks.slack.invalid/x"}
    assert realtime_disabled_reason(settings_for(**slack)) is None
    assert "no alert sink is configured (Slack" in (realtime_disabled_reason(settings_for()) or "")
    assert realtime_disabled_reason(settings_for(), need_sink=False) is None
    assert "DataFast source is not configured" in (
        realtime_disabled_reason(load_settings(_env_file=None, **slack)) or ""
    )
    postmetric = settings_for(
        source="postmetric",
        postmetric_api_key="k",
        postmetric_base_url="http://pm.invalid",
        **slack,
    )
    assert "PostMetric has none" in (realtime_disabled_reason(postmetric) or "")

    on = create_celery(settings_for(realtime_poll_seconds=5, **slack))
    entry = on.conf.beat_schedule["poll-realtime"]
    assert entry["task"] == "visitor_enrich.poll_realtime" and entry["schedule"] == 5
    assert "poll-realtime" not in create_celery(settings_for()).conf.beat_schedule


# One poll against fake servers -------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[tuple[SeedFake, FakeUpstream]]:
    with SeedFake() as datafast, FakeUpstream() as slack:
        yield datafast, slack


@pytest.fixture
def runtime(servers: tuple[SeedFake, FakeUpstream], key_prefix: str) -> Iterator[Runtime]:
    datafast, slack = servers
    rt = build_runtime(
        settings_for(
            redis_url="redis://127.0.0.1:6379/0",
            redis_key_prefix=key_prefix,
            datafast_base_url=f"{datafast.url}/datafast",
            slack_webhook_url=slack.base_url("slack"),
            slack_rate_limit="50",
        )
    )
    yield rt
    rt.redis.close()


def test_poll_alerts_hot_visitors_once(
    servers: tuple[SeedFake, FakeUpstream], runtime: Runtime
) -> None:
    datafast, slack = servers
    datafast.set_realtime(
        [
            realtime_visitor("hot-score", score=91),
            realtime_visitor("hot-path", url="/checkout/step-2"),
            realtime_visitor("cold", url="/docs", score=12),
        ]
    )
    dry = run_realtime_once(runtime, send=False)
    assert _keys(dry.hot) == ["hot-score", "hot-path"] and not dry.alerted
    assert slack.slack_messages() == []

    first = run_realtime_once(runtime, send=True)
    assert _keys(first.alerted) == ["hot-score", "hot-path"]
    second = run_realtime_once(runtime, send=True)
    assert second.alerted == [] and _keys(second.cooling) == ["hot-score", "hot-path"]
    assert len(slack.slack_messages()) == 2
    assert len(slack.slack_messages("hot-score")) == 1
    assert slack.slack_messages("cold") == []
    assert _keys(run_realtime_once(runtime, send=False).cooling) == ["hot-score", "hot-path"]


def test_failed_alert_is_tried_again_next_poll(
    servers: tuple[SeedFake, FakeUpstream], runtime: Runtime
) -> None:
    datafast, slack = servers
    datafast.set_realtime([realtime_visitor("hot", score=99)])
    slack.fail("slack", 400)
    first = run_realtime_once(runtime, send=True)
    assert first.alerted == [] and len(first.failed) == 1
    second = run_realtime_once(runtime, send=True)
    assert _keys(second.alerted) == ["hot"]


def test_website_not_found_is_logged_and_the_poll_ends(
    servers: tuple[SeedFake, FakeUpstream], runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    datafast, _ = servers
    datafast.map_status = 404
    with caplog.at_level(logging.WARNING, logger="worker.realtime"):
        result = poll(runtime)
    assert result is not None and result.snapshot is None
    assert "404 Website not found" in (result.error or "")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Website not found" in str(warnings[0].__dict__)
    assert poll(runtime) is None  # the lock holds the rest of the period


def test_cli_realtime_once_prints_visitors_and_who_would_be_alerted(
    servers: tuple[SeedFake, FakeUpstream], key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from worker.cli import cli

    datafast, slack = servers
    datafast.set_realtime([realtime_visitor("hot-cli", score=80), realtime_visitor("cold-cli")])
    for name, value in {
        "REDIS_KEY_PREFIX": key_prefix,
        "DATAFAST_API_KEY": DATAFAST_KEY,
        "DATAFAST_BASE_URL": f"{datafast.url}/datafast",
        "SLACK_WEBHOOK_URL": slack.base_url("slack"),
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["realtime", "--once"])
    assert result.exit_code == 0, result.output
    assert "2 active visitors" in result.output
    assert "would alert (use --send): hot-cli (score 80 ≥ 70)" in result.output
    assert "cold-cli" in result.output and "cold-cli (" not in result.output
    assert slack.slack_messages() == []
    sent = CliRunner().invoke(cli, ["realtime", "--once", "--send"])
    assert "alerted: hot-cli" in sent.output and len(slack.slack_messages()) == 1
