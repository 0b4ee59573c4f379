"""PostMetric: ``GET /api/v1/visitor?visitorId=...`` (seed 001) mapped into a JourneyContext.

PostMetric knows a visitor by its own id (not necessarily a UUID), lists sessions and
pageviews, and gives no prediction (``worker/score.py`` estimates one). Every documented field
may be missing or null here; fields the documentation does not list are allowed.

Errors use DataFast's envelope. ``400 visitorId parameter is required`` is our bug and is
reported as such; any other 400 and a 404 mean PostMetric has no journey for that visitor.
The documented limit is 100 requests/min per key; its ``X-RateLimit-*`` headers are obeyed by
``worker.http``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from config import Settings
from worker.errors import AuthFailed, Rejected, VisitorNotFound
from worker.http import ServiceClient, bearer_headers
from worker.integration import Integration
from worker.journey import (
    RECENT_PAGES,
    FirstTouch,
    JourneyContext,
    Location,
    PageVisit,
    Technology,
)
from worker.ratelimit import SharedRateLimiter
from worker.source import Source, parse_envelope

MISSING_ID_MESSAGE = "visitorId parameter is required"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class PostMetricSession(_Open):
    session_id: str | None = Field(default=None, alias="sessionId")
    first_visit_at: datetime | None = Field(default=None, alias="firstVisitAt")
    last_seen_at: datetime | None = Field(default=None, alias="lastSeenAt")
    page_views: int | None = Field(default=None, alias="pageViews")
    duration: float | None = None  # seconds
    device: str | None = None
    browser: str | None = None
    os: str | None = None
    country: str | None = None  # a country code

    @property
    def sort_key(self) -> tuple[bool, datetime | None]:
        when = self.last_seen_at or self.first_visit_at
        return (when is not None, when)


class PostMetricPageView(_Open):
    path: str | None = None
    title: str | None = None
    timestamp: datetime | None = None
    referrer: str | None = None


class PostMetricVisitor(_Open):
    """``data`` of a PostMetric visitor response."""

    visitor_id: str = Field(alias="visitorId")
    session_count: int | None = Field(default=None, alias="sessionCount")
    page_view_count: int | None = Field(default=None, alias="pageViewCount")
    first_visit: datetime | None = Field(default=None, alias="firstVisit")
    last_visit: datetime | None = Field(default=None, alias="lastVisit")
    sessions: list[PostMetricSession] = Field(default_factory=list)
    page_views: list[PostMetricPageView] = Field(default_factory=list, alias="pageViews")

    @field_validator("sessions", "page_views", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


def _text(value: str | None) -> str | None:
    value = value.strip() if value else None
    return value or None


def _by_time(items: list[Any], attribute: str) -> list[Any]:
    """Oldest first; items without a time go first so a dated one is always "latest"."""
    return sorted(
        items,
        key=lambda item: (getattr(item, attribute) is not None, getattr(item, attribute)),
    )


def first_touch(pages: list[PostMetricPageView]) -> FirstTouch:
    """Where the visitor came from: the earliest pageview's referrer and UTM parameters."""
    dated = _by_time([p for p in pages if p.path or p.referrer], "timestamp")
    if not dated:
        return FirstTouch()
    first = next((p for p in dated if p.timestamp is not None), dated[0])
    params: dict[str, str] = {}
    if first.path and "?" in first.path:
        query = urlsplit(first.path).query
        params = {k.lower(): v for k, v in parse_qsl(query) if v}
    return FirstTouch(
        referrer=_text(first.referrer),
        utm_source=params.get("utm_source"),
        utm_medium=params.get("utm_medium"),
        utm_campaign=params.get("utm_campaign"),
        utm_term=params.get("utm_term"),
        utm_content=params.get("utm_content"),
        ref=params.get("ref"),
        via=params.get("via"),
        source=params.get("source"),
    )


def to_journey(visitor: PostMetricVisitor) -> JourneyContext:
    """Map a PostMetric visitor onto the provider-independent journey context."""
    sessions = sorted(visitor.sessions, key=lambda s: s.sort_key)
    latest = sessions[-1] if sessions else PostMetricSession()
    pages = [p for p in _by_time(visitor.page_views, "timestamp") if p.path]
    newest_first = list(reversed(pages))

    first_visit = visitor.first_visit or min(
        (s.first_visit_at for s in sessions if s.first_visit_at), default=None
    )
    if first_visit is None and pages and pages[0].timestamp:
        first_visit = pages[0].timestamp
    session_ends = [s.last_seen_at or s.first_visit_at for s in sessions]
    last_visit = visitor.last_visit or max((t for t in session_ends if t), default=None)
    if last_visit is None and newest_first and newest_first[0].timestamp:
        last_visit = newest_first[0].timestamp

    visit_count = visitor.session_count
    if visit_count is None and sessions:
        visit_count = len(sessions)
    pageview_count = visitor.page_view_count
    if pageview_count is None and pages:
        pageview_count = len(pages)

    return JourneyContext(
        provider=PostMetricSource.label,
        visitor_id=visitor.visitor_id,
        first_touch=first_touch(visitor.page_views),
        location=Location(country_code=_text(latest.country)),
        technology=Technology(
            device=_text(latest.device), browser=_text(latest.browser), os=_text(latest.os)
        ),
        first_visit_at=first_visit,
        last_visit_at=last_visit,
        visit_count=visit_count,
        pageview_count=pageview_count,
        current_url=newest_first[0].path if newest_first else None,
        recent_pages=[
            PageVisit(url=p.path or "", at=p.timestamp, title=_text(p.title))
            for p in newest_first[:RECENT_PAGES]
        ],
    )


class PostMetricSource(Source):
    name = "postmetric"
    label = "PostMetric"
    requires_uuid = False

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return settings.postmetric_api_key is not None and settings.postmetric_base_url is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        base = str(settings.postmetric_base_url or "").rstrip("/")
        return ServiceClient(
            "postmetric",
            f"{base}/api/v1",
            settings=settings,
            limiter=limiter,
            rate=settings.postmetric_rate_limit,
            headers=bearer_headers(settings.postmetric_api_key),
        )

    def identity_parts(self, website: str | None = None) -> tuple[str, ...]:
        key = self.settings.postmetric_api_key
        return (key.get_secret_value() if key else "",)

    def fetch_visitor(self, visitor_id: str) -> PostMetricVisitor:
        try:
            response = self.http.request("GET", "visitor", params={"visitorId": visitor_id})
        except AuthFailed as exc:
            raise exc.with_hint("check POSTMETRIC_API_KEY") from None
        except Rejected as exc:
            if isinstance(exc, VisitorNotFound) or exc.status_code not in (400, 404):
                raise
            if exc.status_code == 400 and MISSING_ID_MESSAGE in exc.message:
                # We always send the id: this means it was lost on the way (a proxy?).
                raise Rejected(
                    f"{exc.message} (the request carried visitorId={visitor_id[:60]!r})",
                    service=exc.service,
                    status_code=exc.status_code,
                ) from None
            raise VisitorNotFound(
                exc.message, service=exc.service, status_code=exc.status_code
            ) from None
        return parse_envelope(response, PostMetricVisitor)

    def fetch_journey(self, visitor_id: str, website: str | None = None) -> JourneyContext:
        return to_journey(self.fetch_visitor(visitor_id))

    def check(self) -> str:
        # There is no cheaper documented read: ask for a visitor that does not exist. Any
        # answer but 401/403 proves the service answers and takes the key.
        try:
            self.http.request("GET", "visitor", params={"visitorId": "visitor-enrich-check"})
        except AuthFailed:
            raise
        except Rejected:
            pass
        return f"{self.label} answered at {self.http.base_url}"


INTEGRATION = Integration(name="postmetric", label="PostMetric", source=PostMetricSource)
