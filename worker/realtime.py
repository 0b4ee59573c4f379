"""Realtime hot-visitor alerts from the source's realtime feed (DataFast's realtime map,
seeds 002/003).

Every ``REALTIME_POLL_SECONDS`` the beat schedules ``visitor_enrich.poll_realtime``
(``worker/realtime_tasks.py``), which calls ``run_realtime_once``:

1. a short Redis lock (``{prefix}realtime:lock``, three quarters of the period) lets one poll
   through per period, however many beat processes schedule it;
2. the source's ``fetch_realtime`` lists the active visitors (DataFast: a pageview in the last
   10 minutes) and recent payments;
3. ``select_hot_visitors`` (pure) picks those whose score is at least
   ``LEAD_ALERT_MIN_SCORE`` or whose current page is under one of ``HOT_PATHS``, plus, with
   ``ALERT_ON_PAYMENTS``, each of the recent payments;
4. for each enabled alert sink (Slack and the other ``AlertSink``s), each is claimed with
   ``SET {prefix}hot:{sink}:{sha256(visitorId)} NX EX HOT_VISITOR_COOLDOWN`` (payments: of
   ``payment:{id}``; hashed so the key holds no personal data, and an erasure deletes it by the
   same name), so several beat or worker processes never alert twice, and the one that claims
   it posts the alert. A failed post gives the claim back so the next poll
   tries again; a process killed between claim and post loses that one alert for the cooldown
   (never doubles it).

A map the API refuses (404 website not found, 401 bad key) or that cannot be reached is logged
once per poll as a WARNING and the poll ends normally: beat keeps running.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

import redis

from config import Settings
from worker.errors import EnrichmentError, RateLimited, Throttled
from worker.journey import ActiveVisitor, HotVisitor, RealtimeSnapshot
from worker.runtime import Runtime
from worker.score import hot_path_of
from worker.sink import AlertSink
from worker.store import digest

log = logging.getLogger(__name__)

# The poll lock lasts this fraction of the period: more than half, so two beats ticking at any
# phase offset never both poll in one period, and less than all of it, so a tick that runs a
# little late still finds the previous lock gone.
POLL_LOCK_FRACTION = 0.75


@dataclass
class PollResult:
    """What one poll saw and did; ``error`` is set when the feed could not be read. ``alerted``,
    ``cooling`` and ``failed`` hold one entry per (hot visitor, alert sink)."""

    snapshot: RealtimeSnapshot | None = None
    hot: list[HotVisitor] = field(default_factory=list)
    alerted: list[HotVisitor] = field(default_factory=list)
    # Already alerted within HOT_VISITOR_COOLDOWN (by this or another process).
    cooling: list[HotVisitor] = field(default_factory=list)
    failed: list[tuple[HotVisitor, str]] = field(default_factory=list)
    error: str | None = None


# Pure parts --------------------------------------------------------------------------------


def select_hot_visitors(realtime: RealtimeSnapshot, settings: Settings) -> list[HotVisitor]:
    """The visitors (and payments) that deserve an alert now, with their reasons."""
    threshold = settings.lead_alert_min_score
    hot_paths = settings.hot_path_list
    selected: list[HotVisitor] = []
    seen: set[str] = set()
    by_id: dict[str, ActiveVisitor] = {}
    for visitor in realtime.visitors:
        by_id.setdefault(visitor.visitor_id, visitor)
        if visitor.visitor_id in seen:
            continue
        seen.add(visitor.visitor_id)
        reasons = []
        score = visitor.score
        if score is not None and score >= threshold:
            reasons.append(f"score {score:g} ≥ {threshold:g}")
        hot = hot_path_of(visitor.current_url, hot_paths)
        if hot is not None:
            reasons.append(f"on {hot} now")
        if reasons:
            selected.append(HotVisitor(visitor, tuple(reasons), visitor.visitor_id))
    if settings.alert_on_payments:
        for payment in realtime.payments:
            visitor = by_id.get(payment.visitor_id or "") or ActiveVisitor(
                visitor_id=payment.visitor_id or "unknown"
            )
            selected.append(
                HotVisitor(
                    visitor, (f"{payment.label} just now",), f"payment:{payment.key}", payment
                )
            )
    return selected


def realtime_disabled_reason(settings: Settings, *, need_sink: bool = True) -> str | None:
    """Why realtime alerts cannot run with these settings, or None when they can."""
    # Imported here: the registry imports every integration, which the pure parts above and
    # the tests of the selection do not need.
    from worker.integrations import SINKS, SOURCES

    source = SOURCES[settings.source]
    if not source.has_realtime:
        return f"realtime alerts need a source with a realtime feed; {source.label} has none"
    if not source.configured(settings):
        return f"the {source.label} source is not configured (set its API key)"
    alert_sinks = [s for s in SINKS if issubclass(s, AlertSink)]
    if need_sink and not any(s.enabled(settings) for s in alert_sinks):
        names = ", ".join(s.label for s in alert_sinks)
        return f"no alert sink is configured ({names})"
    return None


# Redis and HTTP ----------------------------------------------------------------------------


def hot_key(prefix: str, sink: str, dedupe_key: str) -> str:
    """The alert dedupe key of a visitor id (or ``payment:{id}``) for one alert sink, named by
    its hash so the key holds no personal data."""
    return f"{prefix}hot:{sink}:{digest(dedupe_key)}"


def visitor_hot_keys(prefix: str, visitor_id: str) -> list[str]:
    """Every alert sink's dedupe key of ``visitor_id``, for an erasure (worker/privacy.py),
    and the keys written before they were hashed, which held the visitor id itself."""
    from worker.integrations import SINKS

    sinks = [s.name for s in SINKS if issubclass(s, AlertSink)]
    return [
        *(hot_key(prefix, sink, visitor_id) for sink in sinks),
        *(f"{prefix}hot:{sink}:{visitor_id}" for sink in sinks),
        f"{prefix}hot:{visitor_id}",
    ]


def _hot_key(prefix: str, sink: str, hot: HotVisitor) -> str:
    return hot_key(prefix, sink, hot.key)


def claim(client: redis.Redis, prefix: str, sink: str, hot: HotVisitor, cooldown: int) -> bool:
    """Take the right to alert ``sink`` about ``hot`` for ``cooldown`` seconds; False when
    taken."""
    return bool(client.set(_hot_key(prefix, sink, hot), "1", nx=True, ex=max(1, cooldown)))


def release(client: redis.Redis, prefix: str, sink: str, hot: HotVisitor) -> None:
    """Give a claim back (its alert could not be sent), so a later poll tries again."""
    client.delete(_hot_key(prefix, sink, hot))


def is_cooling(client: redis.Redis, prefix: str, sink: str, hot: HotVisitor) -> bool:
    return bool(client.exists(_hot_key(prefix, sink, hot)))


def take_poll_lock(client: redis.Redis, prefix: str, poll_seconds: float) -> bool:
    """One poll per period across every beat and worker; the lock is left to expire."""
    ttl_ms = max(1, int(poll_seconds * POLL_LOCK_FRACTION * 1000))
    return bool(client.set(f"{prefix}realtime:lock", secrets.token_hex(8), nx=True, px=ttl_ms))


def alert_sinks(rt: Runtime) -> list[AlertSink]:
    return [s for s in rt.sinks.values() if isinstance(s, AlertSink)]


def run_realtime_once(rt: Runtime, *, send: bool) -> PollResult:
    """Poll the realtime feed once and, with ``send``, alert each hot visitor not cooling down
    to each alert sink.

    Without ``send`` nothing is claimed or posted (``visitor-enrich realtime --once``): the
    result says who would be alerted (``hot`` minus ``cooling``).
    """
    settings, prefix = rt.settings, rt.settings.redis_key_prefix
    reason = realtime_disabled_reason(settings, need_sink=send)
    source = rt.source
    if reason is not None or source is None:
        return PollResult(error=reason or "the source is not configured")
    try:
        realtime = source.fetch_realtime()
    except (EnrichmentError, redis.RedisError) as exc:
        log.warning("realtime feed not read", extra={"reason": str(exc)})
        return PollResult(error=str(exc))
    result = PollResult(snapshot=realtime, hot=select_hot_visitors(realtime, settings))
    sinks = alert_sinks(rt)
    if not send:
        for hot in result.hot:
            if sinks and all(is_cooling(rt.redis, prefix, s.name, hot) for s in sinks):
                result.cooling.append(hot)
        return result
    for sink in sinks:
        _alert(rt, sink, result)
    log.info(
        "realtime poll",
        extra={
            "active": len(realtime.visitors),
            "hot": len(result.hot),
            "alerted": len(result.alerted),
            "cooling": len(result.cooling),
        },
    )
    return result


def _alert(rt: Runtime, sink: AlertSink, result: PollResult) -> None:
    settings, prefix = rt.settings, rt.settings.redis_key_prefix
    for index, hot in enumerate(result.hot):
        if not claim(rt.redis, prefix, sink.name, hot, settings.hot_visitor_cooldown):
            result.cooling.append(hot)
            continue
        try:
            sink.post_realtime_alert(hot)
        except EnrichmentError as exc:
            release(rt.redis, prefix, sink.name, hot)
            result.failed.append((hot, str(exc)))
            log.warning(
                "realtime alert not sent",
                extra={"visitor": hot.visitor.visitor_id, "sink": sink.name, "reason": str(exc)},
            )
            if isinstance(exc, Throttled | RateLimited):
                # The sink asks us to wait: leave the rest, unclaimed, to the next poll.
                result.failed += [
                    (h, f"not tried: {sink.label} is rate limiting")
                    for h in result.hot[index + 1 :]
                ]
                break
            continue
        result.alerted.append(hot)
        log.info(
            "realtime alert sent", extra={"visitor": hot.visitor.visitor_id, "sink": sink.name}
        )


def poll(rt: Runtime) -> PollResult | None:
    """What the beat task runs: a no-op when disabled or when another process polls now."""
    reason = realtime_disabled_reason(rt.settings)
    if reason is not None:
        log.debug("realtime alerts off", extra={"reason": reason})
        return None
    if not take_poll_lock(
        rt.redis, rt.settings.redis_key_prefix, rt.settings.realtime_poll_seconds
    ):
        log.debug("realtime poll skipped: another process polled this period")
        return None
    return run_realtime_once(rt, send=True)
