"""What an alert to a team channel says, independent of the channel's markup.

A lead alert (a hot signup, a payment) and a realtime hot-visitor alert both become an
``Alert``: a headline, who it is, the key facts, the pages that matter, a note (an estimated
score's reasons) and the marker. Each alert sink (Discord, Microsoft Teams, Telegram) renders
that one model in its own format, so they never disagree on what an alert says.

Pure functions, no I/O. Nothing here imports an integration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.events import Event
from worker.journey import HotVisitor, JourneyContext
from worker.note import (
    METADATA_KEY_CHARS,
    Fact,
    Limits,
    journey_sections,
    make_facts,
    not_found_text,
    payment_section,
    provider_name,
    who,
)
from worker.text import capped, cut, number, one_line

__all__ = ["Alert", "lead_alert", "realtime_alert"]

KEY_PAGES = 5
MAX_FACTS = 10
PROFILE_ITEMS = 8
_PROFILE_NAME_KEYS = ("name", "displayName", "fullName", "email", "userId", "user_id")


@dataclass(frozen=True)
class Alert:
    """One alert's content. Every text is plain (unescaped): renderers escape it."""

    headline: str
    # "Ada Lovelace <ada@example.com>", or whichever is known.
    person: str | None
    # "DataFast visitor 1b2c…", when a visitor is known.
    visitor: str | None
    facts: tuple[Fact, ...]
    pages: tuple[str, ...] = ()
    # Extra lines under a heading (the Identify profile of a realtime visitor).
    extra_title: str | None = None
    extra: tuple[str, ...] = ()
    # A remark below the facts (how an estimated score was made).
    note: str | None = None
    marker: str = ""

    @property
    def summary(self) -> str:
        """One line for notifications: the headline and the score and first touch."""
        wanted = {f.label: f.value for f in self.facts}
        parts = [
            f"{label.lower()} {wanted[label]}"
            for label in ("Lead score", "First touch", "Paid")
            if label in wanted
        ]
        return ", ".join([self.headline, *parts])


def lead_alert(event: Event, ctx: JourneyContext) -> Alert:
    """The alert for a hot signup or a payment."""
    subject = event.name or event.email or (f"visitor {ctx.visitor_id}" if ctx.visitor_id else "")
    kind = "New payment" if event.type == "payment" else "Hot lead"
    headline = f"{kind}: {one_line(subject)}" if subject else kind
    visitor = f"{provider_name(ctx.provider)} visitor {ctx.visitor_id}" if ctx.visitor_id else None
    limits = Limits(pages=KEY_PAGES, items=5, chars=200)
    section = payment_section(event, ctx, limits)
    payment = section.brief_facts() if section is not None else ()
    if not ctx.found:
        return Alert(
            headline=headline,
            person=who(event),
            visitor=visitor,
            facts=payment,
            note=not_found_text(ctx),
            marker=event.marker,
        )
    sections = {s.key: s for s in journey_sections(ctx, limits)}
    prediction = sections.get("prediction")
    facts = [
        f
        for s in (prediction, sections.get("journey"))
        if s is not None
        for f in s.brief_facts()
        if f.label != "Visitor ID"
    ]
    note = None
    if prediction is not None and prediction.note:
        reasons = "; ".join(prediction.items)
        note = f"{prediction.note} {reasons}" if reasons else prediction.note
    return Alert(
        headline=headline,
        person=who(event),
        visitor=visitor,
        facts=(*payment, *facts)[:MAX_FACTS],
        pages=sections["pages"].items if "pages" in sections else (),
        note=note,
        marker=event.marker,
    )


def _profile_name(profile: dict[str, Any]) -> str | None:
    for key in _PROFILE_NAME_KEYS:
        value = profile.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return one_line(str(value))
    return None


def realtime_alert(hot: HotVisitor) -> Alert:
    """The alert for a visitor on the site now (the realtime feed)."""
    visitor = hot.visitor
    profile = {
        str(k): v for k, v in visitor.profile.items() if v is not None and v not in ("", [], {})
    }
    name = cut(_profile_name(profile) or f"visitor {visitor.visitor_id}", 100)
    reasons = "; ".join(one_line(r) for r in hot.reasons)
    score = visitor.score
    facts = make_facts(
        [
            ("Why now", reasons, "both"),
            ("Lead score", f"{number(score, 1)}/100" if score is not None else None, "both"),
            ("Location", visitor.location, "both"),
            ("Device", visitor.device, "both"),
            ("Current page", visitor.current_url, "both"),
        ],
        Limits(chars=300),
    )
    entries = [
        f"{cut(one_line(k), METADATA_KEY_CHARS)}: {cut(one_line(v), 200)}"
        for k, v in profile.items()
    ]
    return Alert(
        headline=f"Hot visitor on the site now: {name}",
        person=None,
        visitor=f"visitor {one_line(visitor.visitor_id)}",
        facts=facts[:MAX_FACTS],
        extra_title="Identify profile" if entries else None,
        extra=capped(entries, PROFILE_ITEMS),
        marker=f"visitor-enrich:realtime:{hot.key}",
    )
