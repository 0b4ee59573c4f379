"""Prometheus metrics: what each process counts, and the ``/metrics`` answer.

Two kinds of numbers, kept where they are true:

* Counters and histograms of what a process did (events accepted or refused, events finished,
  sink deliveries, upstream latency, rate-limit waits, 429s) are counted in the process that
  did it, with ``prometheus-client``. With several processes on a host (the web process and
  Celery workers), ``PROMETHEUS_MULTIPROC_DIR`` names a directory they all write to (the
  library's multiprocess mode: one small mmap file per process) and ``/metrics`` adds them
  up; ``visitor-enrich serve`` sets it to ``.data/metrics`` and empties it at start. Without
  it, ``/metrics`` shows the web process's own counters only. On several hosts each host's
  web process is scraped (Prometheus adds the hosts up with ``sum``); a host that runs only
  workers exposes them with ``visitor-enrich metrics-serve``.
* Gauges of shared state (queue depth, dead letters, open circuits) live in Redis, the same
  for every host, and are read when ``/metrics`` is scraped (``RedisStateCollector``).

An increment is a few microseconds (an mmap write under a lock): the intake's hot path pays
one per event and nothing per request otherwise.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.events import EventType

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# No "_": the library splits file names on it.
_HOST = socket.gethostname().replace("_", "-")
_identity = f"{_HOST}-{os.getpid()}"


def _process_identifier() -> str:
    # Each process's file is named after this. The library's default, the pid alone, collides
    # when containers (each with its own pid 1, 7, ...) share the directory through a volume
    # (docker-compose.yml); with the host name it is unique. The library calls it on every
    # increment to notice a fork; a getpid system call each time was most of an increment's
    # cost here, so the name is kept and renewed in a forked child instead.
    return _identity


def _renew_identity() -> None:
    global _identity
    _identity = f"{_HOST}-{os.getpid()}"


os.register_at_fork(after_in_child=_renew_identity)


if os.environ.get(MULTIPROC_ENV):
    # Read by every metric as it is created, so set before the metrics below.
    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=_process_identifier
    )

EVENTS_RECEIVED = Counter(
    "visitor_enrich_events_received",
    "Inbound events answered, by inbound path (api or the webhook's system), event type and "
    "HTTP status (2xx accepted, else refused).",
    ["inbound", "type", "code"],
)
EVENTS_FINISHED = Counter(
    "visitor_enrich_events_finished",
    "Events that reached a final state, by state.",
    ["state"],
)
SINK_DELIVERIES = Counter(
    "visitor_enrich_sink_deliveries",
    "Delivery attempts by sink and outcome (delivered, retry, throttled, failed, dead).",
    ["sink", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "visitor_enrich_upstream_request_seconds",
    "Time of one request to a provider or sink, by system, until its answer was read.",
    ["system"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RATE_LIMIT_WAITS = Counter(
    "visitor_enrich_rate_limit_waits",
    "Times a request waited for the shared rate limit (or a provider pause), by system.",
    ["system"],
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "visitor_enrich_rate_limit_wait_seconds",
    "Seconds spent waiting for the shared rate limit, by system.",
    ["system"],
)
UPSTREAM_429 = Counter(
    "visitor_enrich_upstream_429",
    "429 Too Many Requests answers received, by system.",
    ["system"],
)

_EVENT_TYPES = frozenset(get_args(EventType))
_TYPE_KEY = "visitor_enrich.event_type"
# The label values of the intake's counter are few (a few paths x 4 types x a handful of
# codes): the child of each triple is looked up once and kept, so the hot path pays only the
# increment.
_received: dict[tuple[str, str, int], Callable[[], None]] = {}


def name_event_type(scope: MutableMapping[str, Any], payload: object) -> None:
    """Record the request's event type for its answer's count: the body's ``type`` when it is
    one of the contract's, else "unknown" (a label never carries what a sender wrote)."""
    value = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(value, str) and value in _EVENT_TYPES:
        scope[_TYPE_KEY] = value


def inbound_answered(scope: Mapping[str, Any], code: int) -> None:
    """Count one answer to ``POST /v1/events`` or ``POST /v1/webhooks/{system}``."""
    path: str = scope["path"]
    inbound = "api" if path == "/v1/events" else path.rpartition("/")[2]
    event_received(inbound, scope.get(_TYPE_KEY, "unknown"), code)


def event_received(inbound: str, event_type: str, code: int) -> None:
    key = (inbound, event_type, code)
    inc = _received.get(key)
    if inc is None:
        inc = _received[key] = EVENTS_RECEIVED.labels(inbound, event_type, str(code)).inc
    inc()


def event_finished(state: str) -> None:
    EVENTS_FINISHED.labels(state).inc()


def sink_delivery(sink: str, outcome: str) -> None:
    SINK_DELIVERIES.labels(sink, outcome).inc()


def upstream_request(system: str, seconds: float, status_code: int) -> None:
    UPSTREAM_LATENCY.labels(system).observe(seconds)
    if status_code == 429:
        UPSTREAM_429.labels(system).inc()


def rate_limit_wait(system: str, seconds: float) -> None:
    RATE_LIMIT_WAITS.labels(system).inc()
    RATE_LIMIT_WAIT_SECONDS.labels(system).inc(seconds)


# Shared state -------------------------------------------------------------------------------


class SharedState:
    """What the gauges read from Redis (kept abstract so this module imports no runtime)."""

    def queue_depth(self) -> int:
        raise NotImplementedError

    def dead_letters(self) -> int:
        raise NotImplementedError

    def circuits(self) -> dict[str, bool]:
        """Each known system's circuit: True when open."""
        raise NotImplementedError


class RedisStateCollector(Collector):
    """Gauges read from Redis at scrape time; a Redis outage leaves them out of the answer
    (with ``visitor_enrich_redis_up 0``) instead of failing the scrape."""

    def __init__(self, state: SharedState) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("visitor_enrich_redis_up", "1 when Redis answered this scrape.")
        try:
            depth = self.state.queue_depth()
            dead = self.state.dead_letters()
            circuits = self.state.circuits()
        except Exception:
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        queue = GaugeMetricFamily(
            "visitor_enrich_queue_depth", "Tasks waiting in the Celery queue."
        )
        queue.add_metric([], depth)
        letters = GaugeMetricFamily("visitor_enrich_dead_letters", "Dead letters kept.")
        letters.add_metric([], dead)
        circuit = GaugeMetricFamily(
            "visitor_enrich_circuit_open",
            "1 while a system's circuit breaker is open (requests held), else 0.",
            labels=["system"],
        )
        for system, is_open in sorted(circuits.items()):
            circuit.add_metric([system], 1 if is_open else 0)
        return [up, queue, letters, circuit]


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def reset_multiprocess_dir(path: Path) -> None:
    """Empty the multiprocess directory before the processes that write it start: files of
    processes from an earlier run would otherwise be added to this run's counts."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def build_registry(state: SharedState | None) -> CollectorRegistry:
    """The registry ``/metrics`` renders: every process's counters on this host (multiprocess
    mode) or this process's own, plus the Redis gauges."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    if state is not None:
        registry.register(RedisStateCollector(state))
    return registry


class _Forward(Collector):
    """This process's default registry, inside another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST
