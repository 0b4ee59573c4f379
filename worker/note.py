"""The content of a journey note: titled sections of facts and items, independent of markup.

``journey_sections`` turns a ``JourneyContext`` into ``Section``s of ``Fact`` (label, value)
pairs and plain items (pages, goals, reasons); every renderer (``worker/formats.py`` and each
integration's own) only chooses a markup, so no two of them disagree on what a note says.
``Limits`` says how much of the variable-size content to show; ``fit`` tries smaller ones until
a rendering fits a destination's size limit.

Pure functions, no I/O and no settings. Nothing here imports an integration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from worker.events import Event
from worker.journey import RECENT_PAGES, Goal, JourneyContext, PageVisit, Prediction
from worker.text import (
    ELLIPSIS,
    capped,
    cut,
    format_datetime,
    joined,
    money,
    number,
    one_line,
    percent,
    usd,
)

__all__ = [
    "FULL",
    "SHRINKING",
    "Fact",
    "Limits",
    "Section",
    "fit",
    "journey_sections",
    "make_facts",
    "not_found_text",
    "note_sections",
    "payment_section",
    "payment_summary",
    "provider_name",
    "title",
    "who",
]

METADATA_KEY_CHARS = 100

_PROVIDER_NAMES = {"datafast": "DataFast", "postmetric": "PostMetric"}

Show = Literal["both", "full", "brief"]


# --------------------------------------------------------------------------- building blocks


@dataclass(frozen=True)
class Fact:
    """One labelled value. ``show`` says whether full renderers, brief ones or both use it."""

    label: str
    value: str
    show: Show = "both"


@dataclass(frozen=True)
class Section:
    """A titled group of facts and plain items (page visits, goals, reasons)."""

    key: str
    title: str
    facts: tuple[Fact, ...] = ()
    items: tuple[str, ...] = ()
    note: str | None = None

    def brief_facts(self) -> tuple[Fact, ...]:
        return tuple(f for f in self.facts if f.show != "full")

    def full_facts(self) -> tuple[Fact, ...]:
        return tuple(f for f in self.facts if f.show != "brief")


@dataclass(frozen=True)
class Limits:
    """How much of the variable-size content to show; tightened to fit size limits."""

    pages: int = RECENT_PAGES
    items: int | None = None  # goals, payments, metadata entries, reasons, ad click ids
    chars: int | None = None  # any single provider/user-supplied value


FULL = Limits()
# Tried in order until the output fits (HubSpot note, Rocket.Chat message).
SHRINKING = (
    Limits(),
    Limits(items=50, chars=2_000),
    Limits(items=20, chars=300),
    Limits(pages=5, items=10, chars=120),
    Limits(pages=3, items=5, chars=60),
)


def provider_name(provider: str) -> str:
    return _PROVIDER_NAMES.get(provider.lower(), provider)


def make_facts(pairs: Iterable[tuple[str, str | None, Show]], limits: Limits) -> tuple[Fact, ...]:
    """Facts from (label, value, show), dropping empty values and cutting long ones."""
    return tuple(
        Fact(label, cut(one_line(value), limits.chars), show)
        for label, value, show in pairs
        if value not in (None, "")
    )


def who(event: Event) -> str | None:
    """``Ada Lovelace <ada@example.com>``, or whichever of the two the event has."""
    name = one_line(event.name) if event.name else None
    if name and event.email:
        return f"{name} <{event.email}>"
    return name or event.email


def title(event: Event, ctx: JourneyContext) -> str:
    person = who(event)
    provider = provider_name(ctx.provider)
    if event.type == "payment":
        amount = _amount(event)
        paid = f"Payment of {amount}" if amount else "Payment"
        paid = f"{paid} by {person}" if person else paid
        return f"{paid}: visitor journey from {provider}"
    text = f"Visitor journey from {provider}"
    return f"{text} for {person}" if person else text


def not_found_text(ctx: JourneyContext) -> str:
    whom = f" for visitor {ctx.visitor_id}" if ctx.visitor_id else ""  # none: no id was known
    text = f"No visitor journey found{whom} at {provider_name(ctx.provider)}"
    reason = one_line(ctx.missing_reason).rstrip(".") if ctx.missing_reason else ""
    return f"{text}: {reason}." if reason else f"{text}."


def _estimate_note(ctx: JourneyContext, with_reasons: bool) -> str:
    provider = provider_name(ctx.provider)
    note = (
        f"Estimated by visitor-enrich, not by {provider}: "
        f"{provider} gave no prediction for this visitor."
    )
    return f"{note} Based on:" if with_reasons else note


def _page_line(page: PageVisit, limits: Limits) -> str:
    url = cut(one_line(page.url), limits.chars)
    title = cut(one_line(page.title), limits.chars) if page.title else None
    text = f"{url} ({title})" if title else url
    return f"{format_datetime(page.at)} {text}" if page.at else text


def _goal_line(goal: Goal, limits: Limits) -> str:
    name = cut(one_line(goal.name), limits.chars)
    text = f"{name} ({one_line(goal.type)})" if goal.type else name
    return f"{format_datetime(goal.at)} {text}" if goal.at else text


def _journey_facts(ctx: JourneyContext, limits: Limits) -> tuple[Fact, ...]:
    touch, loc, tech = ctx.first_touch, ctx.location, ctx.technology
    clicks = sorted(touch.ad_click_ids.items())
    click_text = ", ".join(capped([f"{k}: {v}" for k, v in clicks], limits.items))
    hardware = joined(tech.device_vendor, tech.device_model)
    device = joined(tech.device, f"({hardware})" if hardware else None)
    activity = joined(
        f"{ctx.visit_count} visits" if ctx.visit_count is not None else None,
        f"{ctx.pageview_count} pageviews" if ctx.pageview_count is not None else None,
        sep=", ",
    )
    newest = ctx.recent_pages[0].url if ctx.recent_pages else None
    current = ctx.current_url if ctx.current_url != newest else None
    return make_facts(
        [
            ("Visitor ID", ctx.visitor_id, "both"),
            ("First touch", touch.label, "both"),
            ("Referrer", touch.referrer, "full"),
            ("UTM source", touch.utm_source, "full"),
            ("UTM medium", touch.utm_medium, "full"),
            ("UTM campaign", touch.utm_campaign, "full"),
            ("UTM term", touch.utm_term, "full"),
            ("UTM content", touch.utm_content, "full"),
            ("Ref", touch.ref, "full"),
            ("Via", touch.via, "full"),
            ("Source", touch.source, "full"),
            ("Ad click IDs", click_text, "full"),
            ("Location", loc.label, "both"),
            ("Device", device, "full"),
            ("Browser", joined(tech.browser, tech.browser_version), "full"),
            ("OS", joined(tech.os, tech.os_version), "full"),
            ("Device", tech.label, "brief"),
            ("First visit", _dt(ctx.first_visit_at), "both"),
            ("Last visit", _dt(ctx.last_visit_at), "both"),
            ("Visits", _int(ctx.visit_count), "full"),
            ("Pageviews", _int(ctx.pageview_count), "full"),
            ("Activity", activity, "brief"),
            ("Current page", current, "full"),
        ],
        limits,
    )


def _dt(value: datetime | None) -> str | None:
    return format_datetime(value) if value else None


def _int(value: int | None) -> str | None:
    return str(value) if value is not None else None


def _score(prediction: Prediction) -> str:
    score = f"{number(prediction.score, 1)}/100"
    return f"{score} (estimate)" if prediction.estimated else score


def _prediction_section(ctx: JourneyContext, limits: Limits) -> Section | None:
    p = ctx.prediction
    if p is None:
        return None
    facts = make_facts(
        [
            ("Lead score", _score(p), "both"),
            (
                "Conversion rate",
                percent(p.conversion_rate) if p.conversion_rate is not None else None,
                "full",
            ),
            (
                "Expected value",
                usd(p.expected_value) if p.expected_value is not None else None,
                "both",
            ),
            ("Confidence", percent(p.confidence) if p.confidence is not None else None, "full"),
        ],
        limits,
    )
    if not p.estimated:
        return Section("prediction", "Prediction", facts)
    reasons = [cut(one_line(r), limits.chars) for r in p.reasons if r]
    note = _estimate_note(ctx, bool(reasons))
    return Section("prediction", "Prediction", facts, capped(reasons, limits.items), note)


def _profile_section(ctx: JourneyContext, limits: Limits) -> Section | None:
    profile = ctx.profile
    if profile is None:
        return None
    key_chars = min(limits.chars or METADATA_KEY_CHARS, METADATA_KEY_CHARS)
    metadata: list[tuple[str, str | None, Show]] = [
        (cut(one_line(key), key_chars), one_line(value), "full")
        for key, value in profile.metadata.items()
        if value is not None and value != ""
    ]
    hidden = len(metadata) - limits.items if limits.items is not None else 0
    if hidden > 0:
        metadata = [*metadata[: limits.items], ("Metadata", f"{ELLIPSIS} {hidden} more", "full")]
    facts = make_facts(
        [
            ("User ID", profile.user_id, "both"),
            ("Identified", _dt(profile.identified_at), "full"),
            *metadata,
        ],
        limits,
    )
    return Section("profile", "Identify profile", facts) if facts else None


def journey_sections(ctx: JourneyContext, limits: Limits = FULL) -> list[Section]:
    """The whole context as sections, empty ones left out; shared by every renderer."""
    pages = [_page_line(p, limits) for p in ctx.recent_pages[: min(limits.pages, RECENT_PAGES)]]
    goals = [_goal_line(g, limits) for g in ctx.conversion_goals]
    payments = [_goal_line(g, limits) for g in ctx.payments]
    candidates: list[Section | None] = [
        Section("journey", "Journey", _journey_facts(ctx, limits)),
        Section("pages", "Last pages (newest first)", items=tuple(pages)) if pages else None,
        Section("goals", "Goals", items=capped(goals, limits.items)) if goals else None,
        Section("payments", "Payments", items=capped(payments, limits.items)) if payments else None,
        _profile_section(ctx, limits),
        _prediction_section(ctx, limits),
    ]
    return [s for s in candidates if s is not None]


def _amount(event: Event) -> str | None:
    payment = event.payment
    if payment is None or payment.amount is None:
        return None
    return money(payment.amount, payment.currency)


def payment_section(event: Event, ctx: JourneyContext, limits: Limits = FULL) -> Section | None:
    """What a ``payment`` event's buyer bought, for how much, and where they first came from
    (the first touch); None for other events."""
    if event.type != "payment" and event.payment is None:
        return None
    payment = event.payment
    facts = make_facts(
        [
            ("Bought", payment.description if payment else None, "both"),
            ("Paid", _amount(event), "both"),
            # Brief renderings (alerts) show the journey's "First touch" fact already.
            ("Came from", ctx.first_touch.label if ctx.found else None, "full"),
        ],
        limits,
    )
    return Section("payment", "Payment", facts) if facts else None


def payment_summary(event: Event, ctx: JourneyContext) -> str | None:
    """One line for an alert's headline: ``Bought Pro plan for 49.00 EUR, first came from
    hn / social``; None for other events."""
    if event.type != "payment":
        return None
    payment = event.payment
    what = one_line(payment.description) if payment and payment.description else "a payment"
    amount = _amount(event)
    text = f"Bought {what} for {amount}" if amount else f"Bought {what}"
    return f"{text}, first came from {ctx.first_touch.label}" if ctx.found else text


def note_sections(event: Event, ctx: JourneyContext, limits: Limits = FULL) -> list[Section]:
    """Every section of the note for ``event``: what the event itself says (a payment), then
    the journey when one was found. Renderers that show the whole note use this."""
    payment = payment_section(event, ctx, limits)
    journey = journey_sections(ctx, limits) if ctx.found else []
    if payment is None:
        return journey
    # Right after the journey's facts (which renderers show without a heading), so that the
    # payment has its own heading near the top.
    return [*journey[:1], payment, *journey[1:]]


def fit(
    render: Callable[[Limits], str],
    max_chars: int,
    fallback: str,
    levels: Sequence[Limits] = SHRINKING,
) -> str:
    """The first rendering within ``max_chars``, showing less each time; else ``fallback``."""
    for limits in levels:
        text = render(limits)
        if len(text) <= max_chars:
            return text
    return fallback
