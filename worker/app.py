"""The Celery application: Redis broker, JSON, late acks, no result backend.

Start a worker with ``celery -A worker.app worker --pool threads``: tasks spend their time
waiting on HTTP, so threads (one process, one shared ``httpx.Client`` and Redis pool) give
concurrency without prefork's per-child memory and connection pools.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from celery import Celery
from celery.signals import after_setup_logger, worker_process_init, worker_ready

from config import Settings, get_settings
from config.redis_target import SentinelTarget
from worker.observability import configure_logging, init_sentry, scrub_logging_handlers
from worker.runtime import load_routing, settle_garbage_collector

# Beat and the broker connection both give up on a Redis that does not answer in time.
REDIS_SOCKET_OPTIONS: dict[str, Any] = {
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
    "health_check_interval": 10,
}


def broker_settings(settings: Settings) -> tuple[str, str, dict[str, Any]]:
    """The broker URL, the transport (worker/broker.py) and the transport options that
    locate the broker, in kombu's form.

    kombu's Redis Sentinel transport takes ``sentinel://h1:p1/db;sentinel://h2:p2/db`` (it
    asks each in turn) and the master's name as a transport option; the master's credentials
    ride on the first URL. It follows a failover as the web process does: a lost connection
    is re-made to the master the Sentinels name then.
    """
    target = settings.redis_target
    if not isinstance(target, SentinelTarget):
        return target, "worker.broker:Transport", {}
    credentials = ""
    if target.username or target.password:
        credentials = f"{quote(target.username or '', safe='')}"
        if target.password is not None:
            credentials += f":{quote(target.password, safe='')}"
        credentials += "@"
    urls = [
        f"sentinel://{credentials if i == 0 else ''}{_host(host)}:{port}/{target.db}"
        for i, (host, port) in enumerate(target.sentinels)
    ]
    return ";".join(urls), "worker.broker:SentinelTransport", {"master_name": target.master_name}


def redbeat_settings(settings: Settings) -> dict[str, Any]:
    """celery-redbeat's Redis settings: its own ``redis-sentinel://`` URL marker with the
    Sentinels and master in its options, else the plain URL."""
    target = settings.redis_target
    if not isinstance(target, SentinelTarget):
        return {"redbeat_redis_url": target, "redbeat_redis_options": REDIS_SOCKET_OPTIONS}
    return {
        # RedBeat only looks at the scheme; the options say where to go.
        "redbeat_redis_url": "redis-sentinel://",
        "redbeat_redis_options": {
            **REDIS_SOCKET_OPTIONS,
            "sentinels": list(target.sentinels),
            "service_name": target.master_name,
            "db": target.db,
            "username": target.username,
            "password": target.password,
            "sentinel_kwargs": {"socket_timeout": 1, "socket_connect_timeout": 1},
        },
    }


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def create_celery(settings: Settings) -> Celery:
    broker_url, broker_transport, broker_location = broker_settings(settings)
    app = Celery(
        "visitor_enrich",
        broker=broker_url,
        include=["worker.tasks", "worker.realtime_tasks", "worker.privacy_tasks"],
    )
    app.conf.update(
        # kombu's Redis transport, with channels that survive their connection being
        # collected on a broker outage (worker/broker.py).
        broker_transport=broker_transport,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Event state lives in Redis, written by the tasks; nothing reads Celery results.
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.celery_queue,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Off: the threads pool cannot cancel a running task (Celery 5.6 ends the worker with
        # NotImplementedError from kill_job when it tries on a broker outage). A task that was
        # running goes on; its unacknowledged message and worker/lease.py cover it.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            # A task taken by a worker that dies is handed out again after this long.
            # Every countdown stays below half of it (Settings.max_countdown), or Redis would
            # redeliver a task that is only waiting for its ETA.
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            **REDIS_SOCKET_OPTIONS,
            **broker_location,
        },
        # The web process publishes; when Redis is gone it must fail fast (503), not hang.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_heartbeat=0,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        # Beat keeps its schedule and its single-runner lock in Redis, never in a file
        # (worker/beat.py): any number of beats give one active scheduler.
        beat_scheduler="worker.beat:Scheduler",
        **redbeat_settings(settings),
        redbeat_key_prefix=f"{settings.redis_key_prefix}redbeat:",
        redbeat_lock_timeout=settings.beat_lock_timeout,
        # The active beat renews the lock, and a standby tries to take it, this often.
        beat_max_loop_interval=settings.beat_lock_timeout / 5,
    )
    from worker.realtime import realtime_disabled_reason

    schedule: dict[str, Any] = {
        # Re-queue events whose task was lost. Each worker sweeps too (worker/lease.py);
        # this copy is a second opinion, not what the recovery bounds rest on.
        "requeue-stuck-events": {
            "task": "visitor_enrich.requeue_stuck_events",
            "schedule": min(60.0, settings.stuck_event_seconds / 2),
            "options": {"expires": min(60.0, settings.stuck_event_seconds / 2)},
        }
    }
    # Personal data past its retention (worker/privacy.py): often enough that nothing stays
    # much longer than JOURNEY_RETENTION_SECONDS, at most every five minutes.
    shortest = min(settings.journey_retention_seconds, settings.dead_letter_retention_seconds)
    retention_period = max(1.0, min(300.0, shortest / 4))
    schedule["expire-personal-data"] = {
        "task": "visitor_enrich.expire_personal_data",
        "schedule": retention_period,
        "options": {"expires": retention_period},
    }
    if realtime_disabled_reason(settings) is None:
        # DataFast realtime map -> Slack hot-visitor alerts (worker/realtime.py).
        schedule |= {
            "poll-realtime": {
                "task": "visitor_enrich.poll_realtime",
                "schedule": settings.realtime_poll_seconds,
                # A tick still queued after a whole period is stale; the next one replaces it.
                "options": {"expires": settings.realtime_poll_seconds},
            }
        }
    app.conf.beat_schedule = schedule
    return app


settings = get_settings()
# A bad routes file or template stops the worker and beat at start-up, never inside a task.
load_routing(settings)
app = create_celery(settings)


@after_setup_logger.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(settings)
    scrub_logging_handlers(settings)


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    init_sentry(settings, component="worker")


@worker_ready.connect
def _ready(**_: Any) -> None:
    init_sentry(settings, component="worker")
    scrub_logging_handlers(settings)
    settle_garbage_collector()
    from worker import heartbeat
    from worker.runtime import get_runtime

    heartbeat.start(get_runtime().redis, settings.redis_key_prefix)
