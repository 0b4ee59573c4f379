"""The per-process wiring: settings, one Redis client, the store, the shared limiter, the
source and the enabled sinks. Built once per process on first use."""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from config import Settings, get_settings
from config.redis_target import SentinelTarget, parse_redis_url
from worker.errors import NotReplicated
from worker.integrations import SINKS, SOURCES, build_sinks, build_source
from worker.profiles import ProfileCache
from worker.ratelimit import SharedRateLimiter
from worker.routing import Routes, load_routes
from worker.sink import Sink
from worker.source import Source
from worker.store import EventStore
from worker.templates import note_templates


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: EventStore
    limiter: SharedRateLimiter
    sinks: dict[str, Sink] = field(default_factory=dict)
    # The routing rules of ROUTES_FILE; None: the default routing.
    routes: Routes | None = None
    _source: Source | None = None
    _profiles: ProfileCache | None = None

    def confirm_replicated(self) -> None:
        """Return once ``REDIS_MIN_REPLICAS`` replicas hold every write made so far (at once
        when none is required); ``NotReplicated`` when they do not within
        ``REDIS_REPLICA_TIMEOUT_MS``. A delivery calls it between recording ``posting`` and
        posting: a failover that lost that record would post the note a second time."""
        required = self.settings.replicas_to_wait_for
        if not required:
            return
        timeout = self.settings.redis_replica_timeout_ms
        pipe = self.redis.pipeline(transaction=False)
        fence_and_wait(pipe, self.store.prefix, required, timeout)
        # Unlike the intake, the connections are kept: the task's next writes (the record put
        # back) then go where its earlier ones went, not to a new master without the event.
        check_replicated(pipe.execute(), required, timeout)

    @property
    def source_class(self) -> type[Source]:
        return SOURCES[self.settings.source]

    @property
    def source(self) -> Source | None:
        """The configured analytics source, or None when its credentials are not set."""
        if self._source is None and self.source_class.configured(self.settings):
            self._source = build_source(self.settings, self.limiter)
        return self._source

    @property
    def profiles(self) -> ProfileCache:
        """Fetched journeys shared by all workers (``PROFILE_CACHE_SECONDS``, 0: off)."""
        if self._profiles is None:
            # A cached journey is personal data too: never kept past JOURNEY_RETENTION_SECONDS.
            ttl = min(self.settings.profile_cache_seconds, self.settings.journey_retention_seconds)
            self._profiles = ProfileCache(self.redis, self.settings.redis_key_prefix, ttl)
        return self._profiles


# Short timeouts: a Redis outage must turn into a quick 503, never a hung request.
_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
    "health_check_interval": 15,
    "retry_on_timeout": False,
}


# Asking a Sentinel where the master is must not hang either: an unreachable Sentinel is
# skipped for the next one.
_SENTINEL_OPTIONS: dict[str, Any] = {"socket_timeout": 1, "socket_connect_timeout": 1}


def _master_options(target: SentinelTarget) -> dict[str, Any]:
    """The master's connection options (the Sentinels are asked without credentials)."""
    return {
        **_CLIENT_OPTIONS,
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }


def redis_client(settings: Settings) -> redis.Redis:
    """The process's client. With a Sentinel ``REDIS_URL`` its pool asks the Sentinels for
    the master before each new connection; a connection to a master that went down or became
    a replica fails (``ConnectionError``, also for redis-py's ``READONLY`` check) and is
    dropped, and redis-py's retry reconnects to the master the Sentinels now name."""
    return client_for_url(settings.redis_url)


def client_for_url(url: str, **overrides: Any) -> redis.Redis:
    """A client for a ``REDIS_URL`` of either form, with ``_CLIENT_OPTIONS`` and
    ``overrides``."""
    target = parse_redis_url(url)
    if isinstance(target, SentinelTarget):
        options = _master_options(target) | overrides
        sentinel = redis.sentinel.Sentinel(
            list(target.sentinels), sentinel_kwargs=_SENTINEL_OPTIONS, **options
        )
        return sentinel.master_for(target.master_name)
    return redis.Redis.from_url(target, **(_CLIENT_OPTIONS | overrides))


class _HiredisPacking:
    """redis-py's asyncio connection packs every command in Python, argument by argument;
    its sync connection hands that to hiredis when installed. The intake's accept script
    carries a few arguments per event, and that packing was a sixth of the web process's
    CPU per event, so the web process's connections use the sync client's hiredis packer."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)  # type: ignore[no-any-return]


class HiredisPackingConnection(_HiredisPacking, redis.asyncio.Connection):  # type: ignore[misc]
    """A connection to one Redis server, packing with hiredis."""


class HiredisPackingSentinelConnection(
    _HiredisPacking,
    redis.asyncio.sentinel.SentinelManagedConnection,  # type: ignore[misc]
):
    """A connection to the master the Sentinels name, packing with hiredis."""


def async_redis_client(url: str) -> redis.asyncio.Redis:
    """The web process's asyncio client (worker/intake.py), with the same options and the
    same Sentinel handling as ``redis_client``. A ``rediss://`` or ``unix://`` URL keeps
    redis-py's own connection class."""
    target = parse_redis_url(url)
    options = dict(_CLIENT_OPTIONS)
    if isinstance(target, SentinelTarget):
        options = _master_options(target)
        if HIREDIS_AVAILABLE:
            options["connection_class"] = HiredisPackingSentinelConnection
        sentinel = redis.asyncio.sentinel.Sentinel(
            list(target.sentinels), sentinel_kwargs=_SENTINEL_OPTIONS
        )
        return sentinel.master_for(target.master_name, **options)
    if HIREDIS_AVAILABLE:
        options["connection_class"] = HiredisPackingConnection
    return redis.asyncio.Redis.from_url(target, **options)


def fence_and_wait(pipe: Any, prefix: str, required: int, timeout_ms: int) -> None:
    """Add to ``pipe`` (one connection, sync or asyncio) a write of the fence key and a
    ``WAIT``. Redis waits for the replicas to reach the offset of the connection's *own* last
    write, so writing the fence first makes ``WAIT`` cover everything the master took before
    it: writes of other connections, and an event recorded by an earlier request that a retry
    finds as a duplicate (and does not write again)."""
    pipe.incr(f"{prefix}replication-fence")
    pipe.wait(required, timeout_ms)


def check_replicated(results: list[Any], required: int, timeout_ms: int) -> None:
    """``NotReplicated`` unless ``fence_and_wait``'s ``WAIT`` (the last result) counted
    ``required`` replicas."""
    acknowledged = int(results[-1])
    if acknowledged < required:
        raise NotReplicated(acknowledged, required, timeout_ms)


def load_routing(settings: Settings) -> Routes | None:
    """The routes file and the note templates, checked at start-up: ``RoutesError`` or
    ``TemplatesError`` (both ``ConfigError``s) name the file, line and key at fault."""
    templates = note_templates(settings.templates_dir)
    templates.check()
    routes = load_routes(settings.routes_file)
    if routes is not None:
        enabled = [s.name for s in SINKS if s.enabled(settings)]
        routes.check_sinks([s.name for s in SINKS], enabled)
        for name in sorted(routes.templates()):
            templates.compile(name)
    return routes


def build_runtime(settings: Settings) -> Runtime:
    routes = load_routing(settings)
    client = redis_client(settings)
    limiter = SharedRateLimiter(client, settings.redis_key_prefix)
    return Runtime(
        settings=settings,
        redis=client,
        store=EventStore(client, settings.redis_key_prefix, settings.event_retention_seconds),
        limiter=limiter,
        sinks=build_sinks(settings, limiter),
        routes=routes,
    )


@functools.cache
def get_runtime() -> Runtime:
    return build_runtime(get_settings())


# Allocations (less deallocations) of container objects between two collections of the
# youngest generation; CPython's default is 700.
GC_YOUNG_THRESHOLD = 5_000


def settle_garbage_collector() -> None:
    """Tune the garbage collector for a long-running process once it has started.

    What start-up built (modules, the FastAPI and pydantic schemas, clients) lives as long as
    the process, yet every full collection would walk it again: ``gc.freeze`` moves it out of
    the collector's sight. The young generation is collected less often: a request or task
    makes a few hundred short-lived objects, and at CPython's default the collector ran every
    few events. Together these took about 5 % of the web process's CPU per inbound event on
    the bench machine (README "Performance"); memory stays bounded by the same thresholds.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
