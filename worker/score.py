"""An explainable lead score for visitors the provider gives no prediction for.

PostMetric has no prediction at all, and DataFast answers ``prediction: null`` for customers
and for websites without revenue attribution. Sales still wants to know who is worth a call,
so this module estimates a 0-100 score from journey facts, each fact adding points
(weights from settings, defaults in brackets):

- hot pages: ``SCORE_WEIGHT_HOT_PAGE`` [12] per view of a ``HOT_PATHS`` page among the recent
  pages, at most 3 views counted;
- returning visits: ``SCORE_WEIGHT_VISIT`` [4] per visit after the first, at most 5;
- conversion goals: ``SCORE_WEIGHT_GOAL`` [15] per completed non-payment goal, at most 2;
- recency: ``SCORE_WEIGHT_RECENCY`` [20] for a visit now, halving with every day since;
- pageviews: ``SCORE_WEIGHT_PAGEVIEWS`` [0.5] per pageview, at most 20;
- a payment goal: the score is 100, they already pay.

The total is capped at 100 and rounded. Every fact that adds points becomes a reason, such as
"visited /pricing 3x (+36)" (with a multiplication sign), "4 visits in 7 days (+12)" or
"last visit 2 h ago (+19)", and the prediction is marked ``estimated`` so renderers never pass
it off as the provider's score.

Everything here is pure: the caller passes the weights and the current time.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from config import Settings
from worker.journey import JourneyContext, Prediction

HOT_PAGE_CAP = 3
RETURN_VISIT_CAP = 5
GOAL_CAP = 2
PAGEVIEW_CAP = 20
RECENCY_HALF_LIFE_HOURS = 24.0


@dataclass(frozen=True)
class ScoreWeights:
    """Points per journey fact (see the module docstring); read from settings."""

    hot_page: float = 12.0
    visit: float = 4.0
    goal: float = 15.0
    recency: float = 20.0
    pageviews: float = 0.5
    hot_paths: tuple[str, ...] = ("/pricing", "/checkout")

    @classmethod
    def from_settings(cls, settings: Settings) -> ScoreWeights:
        return cls(
            hot_page=settings.score_weight_hot_page,
            visit=settings.score_weight_visit,
            goal=settings.score_weight_goal,
            recency=settings.score_weight_recency,
            pageviews=settings.score_weight_pageviews,
            hot_paths=tuple(settings.hot_path_list),
        )


def url_path(url: str) -> str:
    """The path of a URL or of a bare path, without query string, fragment or host."""
    text = url.strip()
    if "://" in text or text.startswith("//"):
        path = urlsplit(text).path
    else:
        path = text.split("?", 1)[0].split("#", 1)[0]
    return path or "/"


def hot_path_of(url: str | None, hot_paths: tuple[str, ...] | list[str]) -> str | None:
    """The configured hot path ``url`` is on, matching whole path segments, or None.

    ``/pricing`` matches ``/pricing``, ``/pricing/`` and ``/pricing/team?x=1`` on any host, but
    not ``/pricing-old``; ``/`` matches only the home page.
    """
    if not url:
        return None
    path = url_path(url)
    for hot in hot_paths:
        base = hot.rstrip("/")
        if not base:
            if path == "/":
                return hot
            continue
        if path == base or path.startswith(base + "/"):
            return hot
    return None


def _points(value: float) -> str:
    rounded = round(value, 1)
    text = f"{rounded:.0f}" if rounded == int(rounded) else f"{rounded:.1f}"
    return f"+{text}"


def _ago(hours: float) -> str:
    if hours < 1:
        return f"{max(1, round(hours * 60))} min ago"
    if hours < 48:
        return f"{round(hours)} h ago"
    return f"{round(hours / 24)} d ago"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def estimate_score(ctx: JourneyContext, weights: ScoreWeights, now: datetime) -> Prediction:
    """A 0-100 estimate with the reasons behind it, marked ``estimated``."""
    reasons: list[str] = []
    total = 0.0

    payments = ctx.payments
    if payments:
        names = ", ".join(dict.fromkeys(g.name for g in payments if g.name)) or "payment"
        return Prediction(
            score=100, estimated=True, reasons=[f"already paid ({names}): a customer"]
        )

    # Hot pages among the recent pages (the current page when there are none).
    urls = [p.url for p in ctx.recent_pages] or ([ctx.current_url] if ctx.current_url else [])
    views = Counter(
        hot for hot in (hot_path_of(u, weights.hot_paths) for u in urls) if hot is not None
    )
    budget = HOT_PAGE_CAP
    for hot, count in views.most_common():
        counted = min(count, budget)
        budget -= counted
        points = weights.hot_page * counted
        total += points
        reasons.append(
            f"visited {hot} {count}\N{MULTIPLICATION SIGN}"
            + (f" ({_points(points)})" if points else "")
        )

    visits = ctx.visit_count or 0
    if visits >= 2:
        points = weights.visit * min(visits - 1, RETURN_VISIT_CAP)
        total += points
        span = ""
        if ctx.first_visit_at and ctx.last_visit_at:
            seconds = (_utc(ctx.last_visit_at) - _utc(ctx.first_visit_at)).total_seconds()
            days = max(1, math.ceil(seconds / 86400))
            span = f" in {days} day{'s' if days != 1 else ''}"
        reasons.append(f"{visits} visits{span}" + (f" ({_points(points)})" if points else ""))

    seen: set[str] = set()
    for goal in ctx.conversion_goals:
        if len(seen) >= GOAL_CAP:
            break
        if goal.name in seen:
            continue
        seen.add(goal.name)
        points = weights.goal
        total += points
        reasons.append(f"completed goal {goal.name}" + (f" ({_points(points)})" if points else ""))

    last = ctx.last_visit_at or next((p.at for p in ctx.recent_pages if p.at), None)
    if last is not None:
        hours = max(0.0, (_utc(now) - _utc(last)).total_seconds() / 3600)
        points = weights.recency * 0.5 ** (hours / RECENCY_HALF_LIFE_HOURS)
        if round(points, 1) > 0:
            total += points
            reasons.append(f"last visit {_ago(hours)} ({_points(points)})")

    pageviews = ctx.pageview_count or 0
    if pageviews > 0 and weights.pageviews > 0:
        points = weights.pageviews * min(pageviews, PAGEVIEW_CAP)
        total += points
        reasons.append(f"{pageviews} pageviews ({_points(points)})")

    return Prediction(
        score=float(round(min(100.0, max(0.0, total)))), estimated=True, reasons=reasons
    )
