"""DataFast: ``GET /api/v1/visitors/{visitorId}`` (seed 000) mapped into a JourneyContext, and
the realtime map ``GET /api/v1/analytics/realtime/map`` (seeds 002/003) mapped into the active
visitors that realtime hot-visitor alerts are chosen from (``worker/realtime.py``).

The models cover every documented field and allow fields the documentation does not list;
every value may be null for old or cookieless visitors.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from config import Settings
from worker.errors import Rejected, VisitorNotFound
from worker.http import ServiceClient, bearer_headers
from worker.integration import Integration
from worker.journey import (
    RECENT_PAGES,
    ActiveVisitor,
    FirstTouch,
    Goal,
    IdentifiedProfile,
    JourneyContext,
    Location,
    PageVisit,
    Prediction,
    RealtimeSnapshot,
    RecentPayment,
    Technology,
)
from worker.ratelimit import SharedRateLimiter
from worker.sandbox import sample_datafast_client
from worker.source import Source, parse_envelope


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class NameVersion(_Open):
    name: str | None = None
    version: str | None = None


class Device(_Open):
    type: str | None = None
    vendor: str | None = None
    model: str | None = None


class Viewport(_Open):
    width: float | None = None
    height: float | None = None


class Identity(_Open):
    country: str | None = None
    country_code: str | None = Field(default=None, alias="countryCode")
    region: str | None = None
    city: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    ad_click_ids: dict[str, Any] = Field(default_factory=dict, alias="adClickIds")
    browser: NameVersion = Field(default_factory=NameVersion)
    os: NameVersion = Field(default_factory=NameVersion)
    device: Device = Field(default_factory=Device)
    viewport: Viewport = Field(default_factory=Viewport)

    @field_validator("params", "ad_click_ids", "browser", "os", "device", "viewport", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class CompletedGoal(_Open):
    name: str = ""
    origin: str | None = None
    type: str | None = None
    timestamp: datetime | None = None


class VisitedPage(_Open):
    url: str = ""
    timestamp: datetime | None = None


class Activity(_Open):
    visit_count: int | None = Field(default=None, alias="visitCount")
    page_view_count: int | None = Field(default=None, alias="pageViewCount")
    time_since_first_visit: float | None = Field(default=None, alias="timeSinceFirstVisit")
    time_since_current_visit: float | None = Field(default=None, alias="timeSinceCurrentVisit")
    first_visit_at: datetime | None = Field(default=None, alias="firstVisitAt")
    last_visit_at: datetime | None = Field(default=None, alias="lastVisitAt")
    current_url: str | None = Field(default=None, alias="currentUrl")
    completed_goals: list[CompletedGoal] = Field(default_factory=list, alias="completedGoals")
    visited_pages: list[VisitedPage] = Field(default_factory=list, alias="visitedPages")

    @field_validator("completed_goals", "visited_pages", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class Profile(_Open):
    user_id: str | None = Field(default=None, alias="userId")
    metadata: dict[str, Any] = Field(default_factory=dict)
    identified_at: datetime | None = Field(default=None, alias="identifiedAt")

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class DataFastPrediction(_Open):
    score: float
    conversion_rate: float | None = Field(default=None, alias="conversionRate")
    expected_value: float | None = Field(default=None, alias="expectedValue")
    confidence: float | None = None


class VisitorProfile(_Open):
    """``data`` of a DataFast visitor response."""

    visitor_id: str = Field(alias="visitorId")
    identity: Identity = Field(default_factory=Identity)
    activity: Activity = Field(default_factory=Activity)
    profile: Profile | None = None
    prediction: DataFastPrediction | None = None

    @field_validator("identity", "activity", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def first_touch(identity: Identity) -> FirstTouch:
    """Where the visitor came from: first-session params, referrer and ad click ids."""
    params = {str(k).lower(): v for k, v in identity.params.items()}
    extra = identity.model_extra or {}
    referrer = _text(extra.get("referrer")) or _text(params.get("referrer"))
    return FirstTouch(
        referrer=referrer,
        utm_source=_text(params.get("utm_source")),
        utm_medium=_text(params.get("utm_medium")),
        utm_campaign=_text(params.get("utm_campaign")),
        utm_term=_text(params.get("utm_term")),
        utm_content=_text(params.get("utm_content")),
        ref=_text(params.get("ref")),
        via=_text(params.get("via")),
        source=_text(params.get("source")),
        ad_click_ids={str(k): str(v) for k, v in identity.ad_click_ids.items() if v},
    )


def to_journey(profile: VisitorProfile) -> JourneyContext:
    """Map a DataFast visitor profile onto the provider-independent journey context."""
    identity, activity = profile.identity, profile.activity
    pages = sorted(
        (p for p in activity.visited_pages if p.url),
        key=lambda p: (p.timestamp is not None, p.timestamp),
        reverse=True,
    )[:RECENT_PAGES]
    prediction = None
    if profile.prediction is not None:
        prediction = Prediction(
            score=profile.prediction.score,
            conversion_rate=profile.prediction.conversion_rate,
            expected_value=profile.prediction.expected_value,
            confidence=profile.prediction.confidence,
        )
    identified = None
    if profile.profile is not None:
        identified = IdentifiedProfile(
            user_id=profile.profile.user_id,
            metadata=profile.profile.metadata,
            identified_at=profile.profile.identified_at,
        )
    return JourneyContext(
        provider=DataFastSource.label,
        visitor_id=profile.visitor_id,
        first_touch=first_touch(identity),
        location=Location(
            country=identity.country,
            country_code=identity.country_code,
            region=identity.region,
            city=identity.city,
        ),
        technology=Technology(
            device=identity.device.type,
            device_vendor=identity.device.vendor,
            device_model=identity.device.model,
            browser=identity.browser.name,
            browser_version=identity.browser.version,
            os=identity.os.name,
            os_version=identity.os.version,
        ),
        first_visit_at=activity.first_visit_at,
        last_visit_at=activity.last_visit_at,
        visit_count=activity.visit_count,
        pageview_count=activity.page_view_count,
        current_url=activity.current_url,
        recent_pages=[PageVisit(url=p.url, at=p.timestamp) for p in pages],
        goals=[
            Goal(name=g.name, type=g.type, origin=g.origin, at=g.timestamp)
            for g in activity.completed_goals
        ],
        profile=identified,
        prediction=prediction,
    )


# The realtime map --------------------------------------------------------------------------


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

    def snapshot(self) -> RealtimeSnapshot:
        """The map as the provider-neutral active visitors and payments."""
        return RealtimeSnapshot(
            visitors=[
                ActiveVisitor(
                    visitor_id=v.visitor_id,
                    location=v.location.label,
                    device=v.system.label,
                    current_url=v.current_url,
                    profile=v.profile_data,
                    score=v.score,
                )
                for v in self.visitors
            ],
            payments=[
                RecentPayment(visitor_id=p.visitor_id, key=p.key, label=p.label)
                for p in self.recent_payments
            ],
        )


# The source --------------------------------------------------------------------------------


class DataFastSource(Source):
    """DataFast, with one API client per website: ``DATAFAST_API_KEY`` (the default) and each
    of ``DATAFAST_WEBSITES``. Each key has its own shared rate limit (``DATAFAST_RATE_LIMIT``
    per key), since DataFast counts requests per key."""

    name = "datafast"
    label = "DataFast"
    requires_uuid = True
    has_realtime = True

    def __init__(self, settings: Settings, limiter: SharedRateLimiter) -> None:
        # The query parameters each client sends, by service name (filled by ``_client``).
        self._params_by_service: dict[str, dict[str, str] | None] = {}
        super().__init__(settings, limiter)
        self.websites: dict[str, ServiceClient] = {
            name: self._client(
                f"datafast:{name}", settings, limiter, website.api_key, website.website_id
            )
            for name, website in settings.websites.items()
        }

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        # Sandbox mode: answered in-process with sample profiles (worker/sandbox.py).
        return settings.datafast_api_key is not None or bool(settings.websites) or settings.sandbox

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return self._client(
            "datafast", settings, limiter, settings.datafast_api_key, settings.datafast_website_id
        )

    def _client(
        self,
        service: str,
        settings: Settings,
        limiter: SharedRateLimiter,
        key: SecretStr | None,
        website_id: str | None,
    ) -> ServiceClient:
        client = ServiceClient(
            service,
            f"{str(settings.datafast_base_url).rstrip('/')}/api/v1",
            settings=settings,
            limiter=limiter,
            rate=settings.datafast_rate_limit,
            headers=bearer_headers(key),
            client=sample_datafast_client() if settings.sandbox else None,
        )
        # A dft_ account token names the website on every request.
        token = key.get_secret_value() if key is not None else ""
        self._params_by_service[service] = (
            {"websiteId": website_id or ""} if token.startswith("dft_") else None
        )
        return client

    def client_for(self, website: str | None) -> ServiceClient:
        """The client of ``website`` (a ``DATAFAST_WEBSITES`` name), else the default key's."""
        if website is None:
            if self.settings.datafast_api_key is None and len(self.websites) == 1:
                return next(iter(self.websites.values()))
            return self.http
        try:
            return self.websites[website]
        except KeyError:
            raise Rejected(
                f"unknown website {website[:60]!r}; DATAFAST_WEBSITES names "
                f"{', '.join(self.websites) or 'none'}",
                service=self.name,
            ) from None

    def identity_parts(self, website: str | None = None) -> tuple[str, ...]:
        # The key and website id of the client that ``website`` picks (as ``client_for``).
        client = self.client_for(website)
        key, website_id = self.settings.datafast_api_key, self.settings.datafast_website_id
        for site_name, site_client in self.websites.items():
            if site_client is client:
                site = self.settings.websites[site_name]
                key, website_id = site.api_key, site.website_id
        return (key.get_secret_value() if key is not None else "", website_id or "")

    def _params(self, client: ServiceClient | None = None) -> dict[str, str] | None:
        return self._params_by_service.get((client or self.http).service)

    def fetch_profile(self, visitor_id: str, website: str | None = None) -> VisitorProfile:
        client = self.client_for(website)
        try:
            response = client.request("GET", f"visitors/{visitor_id}", params=self._params(client))
        except Rejected as exc:
            # 400: invalid id or a bot; 404: no pageviews. Neither changes on retry.
            if exc.status_code in (400, 404) and not isinstance(exc, VisitorNotFound):
                raise VisitorNotFound(
                    exc.message, service=exc.service, status_code=exc.status_code
                ) from None
            raise
        return parse_envelope(response, VisitorProfile)

    def fetch_journey(self, visitor_id: str, website: str | None = None) -> JourneyContext:
        return to_journey(self.fetch_profile(visitor_id, website))

    def _clients(self) -> list[ServiceClient]:
        default = [self.http] if self.settings.datafast_api_key is not None else []
        return default + list(self.websites.values())

    def fetch_realtime_map(self, client: ServiceClient | None = None) -> RealtimeMap:
        """``GET /analytics/realtime/map`` under the DataFast rate limit and error mapping."""
        client = client or self.http
        response = client.request("GET", "analytics/realtime/map", params=self._params(client))
        return parse_envelope(response, RealtimeMap)

    def fetch_realtime(self) -> RealtimeSnapshot:
        """The visitors on every configured website now."""
        snapshots = [self.fetch_realtime_map(c).snapshot() for c in self._clients()]
        return RealtimeSnapshot(
            visitors=[v for s in snapshots for v in s.visitors],
            payments=[p for s in snapshots for p in s.payments],
        )

    def check(self) -> str:
        # The realtime map is a cheap authenticated read that needs no visitor id.
        for client in self._clients():
            client.request("GET", "analytics/realtime/map", params=self._params(client))
        names = ", ".join(c.service for c in self._clients())
        return f"{self.label} answered at {self.http.base_url} ({names})"


INTEGRATION = Integration(name="datafast", label="DataFast", source=DataFastSource)
