"""Realtime hot-visitor alerts from DataFast's realtime map (seeds 002/003).

Every ``REALTIME_POLL_SECONDS`` the beat schedules ``visitor_enrich.poll_realtime``
(``worker/realtime_tasks.py``), which calls ``run_realtime_once``:

1. a short Redis lock (``{prefix}realtime:lock``, three quarters of the period) lets one poll
   through per period, however many beat processes schedule it;
2. ``GET /api/v1/analytics/realtime/map`` lists the active visitors (a pageview in the last
   10 minutes);
3. ``select_hot_visitors`` (pure) picks those whose ``conversionLikelihood`` score is at least
   ``LEAD_ALERT_MIN_SCORE`` or whose current page is under one of ``HOT_PATHS``, plus, with
   ``ALERT_ON_PAYMENTS``, each of the ``recentPayments``;
4. each is claimed with ``SET {prefix}hot:{visitorId} NX EX HOT_VISITOR_COOLDOWN`` (payments:
   ``hot:payment:{id}``), so several beat or worker processes never alert twice, and the one
   that claims it posts a Slack alert through the Slack sink. A failed post gives the claim
   back so the next poll tries again; a process killed between claim and post loses that one
   alert for the cooldown (never doubles it).

A map the API refuses (404 website not found, 401 bad key) or that cannot be reached is logged
once per poll as a WARNING and the poll ends normally: beat keeps running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from config import Settings
from worker.errors import EnrichmentError, RateLimited, Throttled
from worker.http import ServiceClient
from worker.render import render_realtime_alert
from worker.runtime import Runtime
from worker.score import hot_path_of
from worker.sinks.slack import SlackSink
from worker.sources.base import parse_envelope
from worker.sources.datafast import DataFastSource

log = logging.getLogger(__name__)

# The poll lock lasts this fraction of the period: more than half, so two beats ticking at any
# phase offset never both poll in one period, and less than all of it, so a tick that runs a
# little late still finds the previous lock gone.
POLL_LOCK_FRACTION = 0.75


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _dict_or_empty(value: Any) -> Any:
    return {} if value is None else value


def _list_or_empty(value: Any) -> Any:
    return [] if value is None else value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class RealtimeLocation(_Open):
    city: str | None = None
    region: str | None = None
    country_code: str | None = Field(default=None, alias="countryCode")

    @property
    def label(self) -> str | None:
        return ", ".join(p for p in (self.city, self.region, self.country_code) if p) or None


class RealtimeSystem(_Open):
    browser: str | None = None
    os: str | None = None
    device: str | None = None

    @property
    def label(self) -> str | None:
        return " · ".join(p for p in (self.device, self.browser, self.os) if p) or None


class RealtimeVisitor(_Open):
    visitor_id: str = Field(alias="visitorId")
    location: RealtimeLocation = Field(default_factory=RealtimeLocation)
    system: RealtimeSystem = Field(default_factory=RealtimeSystem)
    current_url: str | None = Field(default=None, alias="currentUrl")
    profile_data: dict[str, Any] = Field(default_factory=dict, alias="profileData")
    # "Prediction score and raw values when available": an object (``score`` inside), null,
    # or, tolerated, a bare number.
    conversion_likelihood: Any = Field(default=None, alias="conversionLikelihood")

    @field_validator("location", "system", "profile_data", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return _dict_or_empty(value)

    @property
    def score(self) -> float | None:
        """The 0-100 conversion likelihood score, when DataFast gives one."""
        value = self.conversion_likelihood
        if isinstance(value, dict):
            for key in ("score", "conversionLikelihood", "likelihood"):
                number = _number(value.get(key))
                if number is not None:
                    return number
            return None
        return _number(value)


class RealtimePayment(_Open):
    """A ``recentPayments`` entry; its fields are not documented, so all are optional."""

    visitor_id: str | None = Field(default=None, alias="visitorId")
    amount: float | None = None
    currency: str | None = None

    @property
    def key(self) -> str:
        """A stable id for deduping: the payment's own id when it has one."""
        extra = self.model_extra or {}
        for name in ("id", "_id", "paymentId", "transactionId", "eventId"):
            if extra.get(name):
                return str(extra[name])[:100]
        raw = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    @property
    def label(self) -> str:
        if self.amount is None:
            return "payment"
        amount = f"{self.amount:,.2f}".rstrip("0").rstrip(".")
        return f"payment {amount} {self.currency.upper()}" if self.currency else f"payment {amount}"


class RealtimeMap(_Open):
    """``data`` of ``GET /analytics/realtime/map``."""

    count: int | None = None
    visitors: list[RealtimeVisitor] = Field(default_factory=list)
    conversion_metrics: dict[str, Any] = Field(default_factory=dict, alias="conversionMetrics")
    has_conversion_predictions: bool | None = Field(default=None, alias="hasConversionPredictions")
    recent_events: list[dict[str, Any]] = Field(default_factory=list, alias="recentEvents")
    recent_payments: list[RealtimePayment] = Field(default_factory=list, alias="recentPayments")

    @field_validator("conversion_metrics", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return _dict_or_empty(value)

    @field_validator("visitors", "recent_events", "recent_payments", mode="before")
    @classmethod
    def _objects_only(cls, value: Any, info: ValidationInfo) -> Any:
        # One odd entry must not cost every alert: keep the objects, drop the rest.
        value = _list_or_empty(value)
        if not isinstance(value, list):
            return value
        kept = [v for v in value if isinstance(v, dict)]
        if info.field_name == "visitors":
            kept = [v for v in kept if isinstance(v.get("visitorId"), str) and v["visitorId"]]
        return kept


@dataclass(frozen=True)
class HotVisitor:
    """An active visitor (or a payment) worth an alert, and why."""

    visitor: RealtimeVisitor
    reasons: tuple[str, ...]
    # The dedupe key under ``{prefix}hot:``: the visitor id, or ``payment:{id}``.
    key: str
    payment: RealtimePayment | None = None


@dataclass
class PollResult:
    """What one poll saw and did; ``error`` is set when the map could not be read."""

    map: RealtimeMap | None = None
    hot: list[HotVisitor] = field(default_factory=list)
    alerted: list[HotVisitor] = field(default_factory=list)
    # Already alerted within HOT_VISITOR_COOLDOWN (by this or another process).
    cooling: list[HotVisitor] = field(default_factory=list)
    failed: list[tuple[HotVisitor, str]] = field(default_factory=list)
    error: str | None = None


# Pure parts --------------------------------------------------------------------------------


def select_hot_visitors(realtime: RealtimeMap, settings: Settings) -> list[HotVisitor]:
    """The visitors (and payments) that deserve an alert now, with their reasons."""
    threshold = settings.lead_alert_min_score
    hot_paths = settings.hot_path_list
    selected: list[HotVisitor] = []
    seen: set[str] = set()
    by_id: dict[str, RealtimeVisitor] = {}
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
        for payment in realtime.recent_payments:
            visitor = by_id.get(payment.visitor_id or "") or RealtimeVisitor.model_validate(
                {"visitorId": payment.visitor_id or "unknown"}
            )
            selected.append(
                HotVisitor(
                    visitor, (f"{payment.label} just now",), f"payment:{payment.key}", payment
                )
            )
    return selected


def realtime_disabled_reason(settings: Settings, *, need_slack: bool = True) -> str | None:
    """Why realtime alerts cannot run with these settings, or None when they can."""
    if settings.source != DataFastSource.name:
        return f"realtime alerts read DataFast's realtime map; SOURCE is {settings.source}"
    if not DataFastSource.configured(settings):
        return "DATAFAST_API_KEY is not set"
    if need_slack and not SlackSink.enabled(settings):
        return "SLACK_WEBHOOK_URL is not set"
    return None


# Redis and HTTP ----------------------------------------------------------------------------


def _hot_key(prefix: str, hot: HotVisitor) -> str:
    return f"{prefix}hot:{hot.key}"


def claim(client: redis.Redis, prefix: str, hot: HotVisitor, cooldown: int) -> bool:
    """Take the right to alert about ``hot`` for ``cooldown`` seconds; False when taken."""
    return bool(client.set(_hot_key(prefix, hot), "1", nx=True, ex=max(1, cooldown)))


def release(client: redis.Redis, prefix: str, hot: HotVisitor) -> None:
    """Give a claim back (its alert could not be sent), so a later poll tries again."""
    client.delete(_hot_key(prefix, hot))


def is_cooling(client: redis.Redis, prefix: str, hot: HotVisitor) -> bool:
    return bool(client.exists(_hot_key(prefix, hot)))


def take_poll_lock(client: redis.Redis, prefix: str, poll_seconds: float) -> bool:
    """One poll per period across every beat and worker; the lock is left to expire."""
    ttl_ms = max(1, int(poll_seconds * POLL_LOCK_FRACTION * 1000))
    return bool(client.set(f"{prefix}realtime:lock", secrets.token_hex(8), nx=True, px=ttl_ms))


def fetch_realtime_map(
    source_client: ServiceClient, params: dict[str, str] | None = None
) -> RealtimeMap:
    """``GET /analytics/realtime/map`` through the DataFast client (its rate limit and errors)."""
    response = source_client.request("GET", "analytics/realtime/map", params=params)
    return parse_envelope(response, RealtimeMap)


def _datafast(rt: Runtime) -> DataFastSource | None:
    source = rt.source
    return source if isinstance(source, DataFastSource) else None


def run_realtime_once(rt: Runtime, *, send: bool) -> PollResult:
    """Poll the realtime map once and, with ``send``, alert each hot visitor not cooling down.

    Without ``send`` nothing is claimed or posted (``visitor-enrich realtime --once``): the
    result says who would be alerted (``hot`` minus ``cooling``).
    """
    settings, prefix = rt.settings, rt.settings.redis_key_prefix
    reason = realtime_disabled_reason(settings, need_slack=send)
    source = _datafast(rt)
    if reason is None and source is None:
        reason = "the DataFast source is not configured"
    if reason is not None or source is None:
        return PollResult(error=reason)
    try:
        realtime = fetch_realtime_map(source.http, source._params())
    except (EnrichmentError, redis.RedisError) as exc:
        log.warning("realtime map not read", extra={"reason": str(exc)})
        return PollResult(error=str(exc))
    result = PollResult(map=realtime, hot=select_hot_visitors(realtime, settings))
    if not send:
        for hot in result.hot:
            if is_cooling(rt.redis, prefix, hot):
                result.cooling.append(hot)
        return result

    slack = rt.sinks.get(SlackSink.name)
    if not isinstance(slack, SlackSink):
        slack = SlackSink(settings, rt.limiter)
    for index, hot in enumerate(result.hot):
        if not claim(rt.redis, prefix, hot, settings.hot_visitor_cooldown):
            result.cooling.append(hot)
            continue
        try:
            slack.post(render_realtime_alert(hot))
        except EnrichmentError as exc:
            release(rt.redis, prefix, hot)
            result.failed.append((hot, str(exc)))
            log.warning(
                "realtime alert not sent",
                extra={"visitor": hot.visitor.visitor_id, "reason": str(exc)},
            )
            if isinstance(exc, Throttled | RateLimited):
                # Slack asks us to wait: leave the rest, unclaimed, to the next poll.
                result.failed += [
                    (h, "not tried: Slack is rate limiting") for h in result.hot[index + 1 :]
                ]
                break
            continue
        result.alerted.append(hot)
        log.info("realtime alert sent", extra={"visitor": hot.visitor.visitor_id})
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
