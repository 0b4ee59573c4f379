"""The normalized journey context every source produces and every sink renders.

Sources map their own response models into ``JourneyContext`` (pure functions in each
``worker/integrations/<provider>.py``); ``worker/note.py`` turns it into the sections of a note
and each integration renders those in its own markup. ``HotVisitor`` is the realtime
counterpart: a visitor on the site now, as a provider's realtime feed reports it. Nothing here
does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RECENT_PAGES = 10


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class FirstTouch(_Model):
    """Where the visitor came from on the first session."""

    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    ref: str | None = None
    via: str | None = None
    source: str | None = None
    ad_click_ids: dict[str, str] = Field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not any(
            (
                self.referrer,
                self.utm_source,
                self.utm_medium,
                self.utm_campaign,
                self.utm_term,
                self.utm_content,
                self.ref,
                self.via,
                self.source,
                self.ad_click_ids,
            )
        )

    @property
    def label(self) -> str:
        """A one-line answer to "where did they come from"."""
        if self.utm_source:
            parts = [self.utm_source]
            if self.utm_medium:
                parts.append(self.utm_medium)
            if self.utm_campaign:
                parts.append(self.utm_campaign)
            return " / ".join(parts)
        for value in (self.ref, self.via, self.source, self.referrer):
            if value:
                return value
        if self.ad_click_ids:
            return "paid ad (" + ", ".join(sorted(self.ad_click_ids)) + ")"
        return "direct"


class Location(_Model):
    country: str | None = None
    country_code: str | None = None
    region: str | None = None
    city: str | None = None

    @property
    def label(self) -> str | None:
        parts = [p for p in (self.city, self.region, self.country or self.country_code) if p]
        return ", ".join(parts) or None


class Technology(_Model):
    device: str | None = None
    device_vendor: str | None = None
    device_model: str | None = None
    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    os_version: str | None = None

    @property
    def label(self) -> str | None:
        parts = [p for p in (self.device, self.browser, self.os) if p]
        return " · ".join(parts) or None


class PageVisit(_Model):
    url: str
    at: datetime | None = None
    title: str | None = None


class Goal(_Model):
    name: str
    type: str | None = None
    origin: str | None = None
    at: datetime | None = None

    @property
    def is_payment(self) -> bool:
        kind = (self.type or "").lower()
        return (
            self.origin == "payment_provider"
            or kind == "payment"
            or kind.startswith("subscription")
        )


class IdentifiedProfile(_Model):
    user_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    identified_at: datetime | None = None


class Prediction(_Model):
    """A conversion score, from the provider or estimated by this service.

    ``estimated`` is True when the provider gave none and ``worker/score.py`` computed it;
    renderers must then say "estimate" and show ``reasons``.
    """

    score: float
    conversion_rate: float | None = None
    expected_value: float | None = None
    confidence: float | None = None
    estimated: bool = False
    reasons: list[str] = Field(default_factory=list)


class JourneyContext(_Model):
    """Everything known about one visitor's journey, independent of the provider."""

    provider: str
    visitor_id: str
    found: bool = True
    # Why there is no journey, in words fit for a support agent ("no pageviews for this visitor").
    missing_reason: str | None = None
    first_touch: FirstTouch = Field(default_factory=FirstTouch)
    location: Location = Field(default_factory=Location)
    technology: Technology = Field(default_factory=Technology)
    first_visit_at: datetime | None = None
    last_visit_at: datetime | None = None
    visit_count: int | None = None
    pageview_count: int | None = None
    current_url: str | None = None
    # Newest first, at most RECENT_PAGES.
    recent_pages: list[PageVisit] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    profile: IdentifiedProfile | None = None
    prediction: Prediction | None = None

    @classmethod
    def not_found(cls, provider: str, visitor_id: str, reason: str) -> JourneyContext:
        return cls(provider=provider, visitor_id=visitor_id, found=False, missing_reason=reason)

    @property
    def payments(self) -> list[Goal]:
        return [g for g in self.goals if g.is_payment]

    @property
    def conversion_goals(self) -> list[Goal]:
        return [g for g in self.goals if not g.is_payment]

    @property
    def score(self) -> float | None:
        return self.prediction.score if self.prediction else None


# Realtime ---------------------------------------------------------------------------------


class ActiveVisitor(_Model):
    """A visitor on the site now, as a provider's realtime feed reports it."""

    visitor_id: str
    location: str | None = None
    device: str | None = None
    current_url: str | None = None
    # The Identify profile the provider keeps for the visitor (name, email, plan...).
    profile: dict[str, Any] = Field(default_factory=dict)
    # The provider's 0-100 conversion score, when it gives one.
    score: float | None = None


class RecentPayment(_Model):
    """A payment the realtime feed reports; ``key`` is stable across polls (for dedupe)."""

    visitor_id: str | None
    key: str
    label: str


class RealtimeSnapshot(_Model):
    """What one realtime poll saw: the active visitors and the recent payments."""

    visitors: list[ActiveVisitor] = Field(default_factory=list)
    payments: list[RecentPayment] = Field(default_factory=list)


@dataclass(frozen=True)
class HotVisitor:
    """An active visitor (or a payment) worth an alert, and why."""

    visitor: ActiveVisitor
    reasons: tuple[str, ...]
    # The dedupe key under ``{prefix}hot:``: the visitor id, or ``payment:{id}``.
    key: str
    payment: RecentPayment | None = None
