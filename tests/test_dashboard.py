"""The Grafana dashboard and the Prometheus example name only metric families the service
exposes (a renamed metric must not leave an empty panel behind)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from worker import metrics

ROOT = Path(__file__).resolve().parent.parent
# Families registered in-process plus the gauges read from Redis at scrape time.
REDIS_GAUGES = {
    "visitor_enrich_queue_depth",
    "visitor_enrich_dead_letters",
    "visitor_enrich_circuit_open",
    "visitor_enrich_redis_up",
}


def _exposed() -> set[str]:
    names = set(REDIS_GAUGES)
    for metric in (
        metrics.EVENTS_RECEIVED,
        metrics.EVENTS_FINISHED,
        metrics.SINK_DELIVERIES,
        metrics.RATE_LIMIT_WAITS,
        metrics.RATE_LIMIT_WAIT_SECONDS,
        metrics.UPSTREAM_429,
    ):
        names.add(f"{metric._name}_total")
    names.add(f"{metrics.UPSTREAM_LATENCY._name}_bucket")
    return names


def test_every_dashboard_query_names_an_exposed_family() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/visitor-enrich.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"visitor_enrich_[a-z0-9_]+", target["expr"]))
    assert used <= _exposed(), used - _exposed()
    # Every family of the issue has a panel.
    assert _exposed() - {f"{metrics.RATE_LIMIT_WAIT_SECONDS._name}_total"} <= used


def test_the_prometheus_example_scrapes_the_web_process() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["web:8000"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"]
    assert compose["services"]["grafana"]["profiles"] == ["monitoring"]
