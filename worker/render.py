"""Renderers: turn a ``JourneyContext`` into what each sink sends.

Pure functions, no I/O and no settings: plain text (CLI, fallbacks), Zendesk and HubSpot HTML,
HubSpot contact properties, a Slack Block Kit alert and a Rocket.Chat message.

Every renderer works from the same building blocks so they never disagree:

- ``format_datetime`` is the one place a datetime becomes text ("2026-11-22 10:00 UTC");
- ``journey_sections`` turns the context into titled sections of ``Fact`` (label, value)
  pairs and plain items (pages, goals, reasons). Renderers only choose a markup.

Every output carries ``event.marker`` as visible text so a sink can be searched for it later;
provider- and user-supplied text is escaped for the target markup (HTML, Slack mrkdwn).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from worker.events import Event
from worker.journey import RECENT_PAGES, Goal, JourneyContext, PageVisit, Prediction

if TYPE_CHECKING:
    from worker.realtime import HotVisitor

__all__ = [
    "HUBSPOT_NOTE_MAX_CHARS",
    "HUBSPOT_PROPERTIES",
    "HUBSPOT_PROPERTY_GROUP",
    "ROCKETCHAT_MAX_CHARS",
    "SLACK_TEXT_MAX_CHARS",
    "Fact",
    "Section",
    "format_datetime",
    "hubspot_contact_properties",
    "journey_sections",
    "provider_name",
    "render_hubspot_note_html",
    "render_realtime_alert",
    "render_rocketchat_message",
    "render_slack_alert",
    "render_text",
    "render_zendesk_html",
]

HUBSPOT_NOTE_MAX_CHARS = 65_536  # hs_note_body limit
SLACK_TEXT_MAX_CHARS = 3_000  # section / context text object limit
SLACK_FIELD_MAX_CHARS = 2_000  # one section field
SLACK_HEADER_MAX_CHARS = 150
SLACK_MAX_FIELDS = 10
# Rocket.Chat's default Message_MaxAllowedSize is 5000; stay well under it.
ROCKETCHAT_MAX_CHARS = 4_000
SLACK_KEY_PAGES = 5

_METADATA_KEY_CHARS = 100

_PROVIDER_NAMES = {"datafast": "DataFast", "postmetric": "PostMetric"}
_ELLIPSIS = "…"

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
class _Limits:
    """How much of the variable-size content to show; tightened to fit size limits."""

    pages: int = RECENT_PAGES
    items: int | None = None  # goals, payments, metadata entries, reasons, ad click ids
    chars: int | None = None  # any single provider/user-supplied value


_FULL = _Limits()
# Tried in order until the output fits (HubSpot note, Rocket.Chat message).
_SHRINKING = (
    _Limits(),
    _Limits(items=50, chars=2_000),
    _Limits(items=20, chars=300),
    _Limits(pages=5, items=10, chars=120),
    _Limits(pages=3, items=5, chars=60),
)


def format_datetime(value: datetime) -> str:
    """``2026-11-22 10:00 UTC``; naive datetimes are taken to be UTC already."""
    return _utc(value).strftime("%Y-%m-%d %H:%M UTC")


def _iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as HubSpot datetime properties take it."""
    return _utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def provider_name(provider: str) -> str:
    return _PROVIDER_NAMES.get(provider.lower(), provider)


def _number(value: float, places: int = 2) -> str:
    """``72`` for 72.0, ``3.09`` for 3.09: no trailing zeros, no exponent."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _percent(fraction: float) -> str:
    return _number(fraction * 100) + "%"


def _usd(value: float) -> str:
    return f"{value:,.2f} USD"


def _one_line(value: Any) -> str:
    """Provider/user text on one line; non-strings (metadata) as compact JSON."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return " ".join(text.split())


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + _ELLIPSIS


def _capped(values: Sequence[str], limit: int | None) -> tuple[str, ...]:
    """At most ``limit`` values, with a "… N more" line standing in for the rest."""
    if limit is None or len(values) <= limit:
        return tuple(values)
    return (*values[:limit], f"{_ELLIPSIS} {len(values) - limit} more")


def _joined(*parts: str | None, sep: str = " ") -> str | None:
    text = sep.join(p for p in parts if p)
    return text or None


def _facts(pairs: Iterable[tuple[str, str | None, Show]], limits: _Limits) -> tuple[Fact, ...]:
    """Facts from (label, value, show), dropping empty values and cutting long ones."""
    return tuple(
        Fact(label, _cut(_one_line(value), limits.chars), show)
        for label, value, show in pairs
        if value not in (None, "")
    )


def _who(event: Event) -> str | None:
    """``Ada Lovelace <ada@example.com>``, or whichever of the two the event has."""
    name = _one_line(event.name) if event.name else None
    if name and event.email:
        return f"{name} <{event.email}>"
    return name or event.email


def _title(event: Event, ctx: JourneyContext) -> str:
    who = _who(event)
    title = f"Visitor journey from {provider_name(ctx.provider)}"
    return f"{title} for {who}" if who else title


def _not_found(ctx: JourneyContext) -> str:
    who = f" for visitor {ctx.visitor_id}" if ctx.visitor_id else ""  # none: no id was known
    text = f"No visitor journey found{who} at {provider_name(ctx.provider)}"
    reason = _one_line(ctx.missing_reason).rstrip(".") if ctx.missing_reason else ""
    return f"{text}: {reason}." if reason else f"{text}."


def _estimate_note(ctx: JourneyContext, with_reasons: bool) -> str:
    provider = provider_name(ctx.provider)
    note = (
        f"Estimated by visitor-enrich, not by {provider}: "
        f"{provider} gave no prediction for this visitor."
    )
    return f"{note} Based on:" if with_reasons else note


def _page_line(page: PageVisit, limits: _Limits) -> str:
    url = _cut(_one_line(page.url), limits.chars)
    title = _cut(_one_line(page.title), limits.chars) if page.title else None
    text = f"{url} ({title})" if title else url
    return f"{format_datetime(page.at)} {text}" if page.at else text


def _goal_line(goal: Goal, limits: _Limits) -> str:
    name = _cut(_one_line(goal.name), limits.chars)
    text = f"{name} ({_one_line(goal.type)})" if goal.type else name
    return f"{format_datetime(goal.at)} {text}" if goal.at else text


def _journey_facts(ctx: JourneyContext, limits: _Limits) -> tuple[Fact, ...]:
    touch, loc, tech = ctx.first_touch, ctx.location, ctx.technology
    clicks = sorted(touch.ad_click_ids.items())
    click_text = ", ".join(_capped([f"{k}: {v}" for k, v in clicks], limits.items))
    hardware = _joined(tech.device_vendor, tech.device_model)
    device = _joined(tech.device, f"({hardware})" if hardware else None)
    activity = _joined(
        f"{ctx.visit_count} visits" if ctx.visit_count is not None else None,
        f"{ctx.pageview_count} pageviews" if ctx.pageview_count is not None else None,
        sep=", ",
    )
    newest = ctx.recent_pages[0].url if ctx.recent_pages else None
    current = ctx.current_url if ctx.current_url != newest else None
    return _facts(
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
            ("Browser", _joined(tech.browser, tech.browser_version), "full"),
            ("OS", _joined(tech.os, tech.os_version), "full"),
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
    score = f"{_number(prediction.score, 1)}/100"
    return f"{score} (estimate)" if prediction.estimated else score


def _prediction_section(ctx: JourneyContext, limits: _Limits) -> Section | None:
    p = ctx.prediction
    if p is None:
        return None
    facts = _facts(
        [
            ("Lead score", _score(p), "both"),
            (
                "Conversion rate",
                _percent(p.conversion_rate) if p.conversion_rate is not None else None,
                "full",
            ),
            (
                "Expected value",
                _usd(p.expected_value) if p.expected_value is not None else None,
                "both",
            ),
            ("Confidence", _percent(p.confidence) if p.confidence is not None else None, "full"),
        ],
        limits,
    )
    if not p.estimated:
        return Section("prediction", "Prediction", facts)
    reasons = [_cut(_one_line(r), limits.chars) for r in p.reasons if r]
    note = _estimate_note(ctx, bool(reasons))
    return Section("prediction", "Prediction", facts, _capped(reasons, limits.items), note)


def _profile_section(ctx: JourneyContext, limits: _Limits) -> Section | None:
    profile = ctx.profile
    if profile is None:
        return None
    key_chars = min(limits.chars or _METADATA_KEY_CHARS, _METADATA_KEY_CHARS)
    metadata: list[tuple[str, str | None, Show]] = [
        (_cut(_one_line(key), key_chars), _one_line(value), "full")
        for key, value in profile.metadata.items()
        if value is not None and value != ""
    ]
    hidden = len(metadata) - limits.items if limits.items is not None else 0
    if hidden > 0:
        metadata = [*metadata[: limits.items], ("Metadata", f"{_ELLIPSIS} {hidden} more", "full")]
    facts = _facts(
        [
            ("User ID", profile.user_id, "both"),
            ("Identified", _dt(profile.identified_at), "full"),
            *metadata,
        ],
        limits,
    )
    return Section("profile", "Identify profile", facts) if facts else None


def journey_sections(ctx: JourneyContext, limits: _Limits = _FULL) -> list[Section]:
    """The whole context as sections, empty ones left out; shared by every renderer."""
    pages = [_page_line(p, limits) for p in ctx.recent_pages[: min(limits.pages, RECENT_PAGES)]]
    goals = [_goal_line(g, limits) for g in ctx.conversion_goals]
    payments = [_goal_line(g, limits) for g in ctx.payments]
    candidates: list[Section | None] = [
        Section("journey", "Journey", _journey_facts(ctx, limits)),
        Section("pages", "Last pages (newest first)", items=tuple(pages)) if pages else None,
        Section("goals", "Goals", items=_capped(goals, limits.items)) if goals else None,
        Section("payments", "Payments", items=_capped(payments, limits.items))
        if payments
        else None,
        _profile_section(ctx, limits),
        _prediction_section(ctx, limits),
    ]
    return [s for s in candidates if s is not None]


def _fit(
    render: Callable[[_Limits], str],
    max_chars: int,
    fallback: str,
    levels: Sequence[_Limits] = _SHRINKING,
) -> str:
    """The first rendering within ``max_chars``, showing less each time; else ``fallback``."""
    for limits in levels:
        text = render(limits)
        if len(text) <= max_chars:
            return text
    return fallback


# --------------------------------------------------------------------------- plain text


def render_text(event: Event, ctx: JourneyContext) -> str:
    """Plain text, for the CLI and as a fallback body."""
    if not ctx.found:
        return f"{_not_found(ctx)}\n\n{event.marker}"
    lines = [_title(event, ctx)]
    for section in journey_sections(ctx):
        lines.append("")
        if section.key != "journey":
            lines.append(f"{section.title}:")
        lines += [f"{f.label}: {f.value}" for f in section.full_facts()]
        if section.note:
            lines.append(section.note)
        lines += [f"- {item}" for item in section.items]
    lines += ["", event.marker]
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html(event: Event, ctx: JourneyContext, limits: _Limits) -> str:
    footer = f"<p><small>{_e(event.marker)}</small></p>"
    if not ctx.found:
        return f"<p>{_e(_not_found(ctx))}</p>{footer}"
    parts = [f"<p><strong>{_e(_title(event, ctx))}</strong></p>"]
    for section in journey_sections(ctx, limits):
        if section.key != "journey":
            parts.append(f"<p><strong>{_e(section.title)}</strong></p>")
        facts = "".join(
            f"<li><strong>{_e(f.label)}:</strong> {_e(f.value)}</li>" for f in section.full_facts()
        )
        if facts:
            parts.append(f"<ul>{facts}</ul>")
        if section.note:
            parts.append(f"<p><em>{_e(section.note)}</em></p>")
        items = "".join(f"<li>{_e(item)}</li>" for item in section.items)
        if items:
            tag = "ol" if section.key == "pages" else "ul"
            parts.append(f"<{tag}>{items}</{tag}>")
    parts.append(footer)
    return "".join(parts)


def render_zendesk_html(event: Event, ctx: JourneyContext) -> str:
    """``html_body`` of a private Zendesk comment."""
    return _html(event, ctx, _FULL)


def render_hubspot_note_html(event: Event, ctx: JourneyContext) -> str:
    """``hs_note_body`` of a HubSpot note, within HubSpot's 65,536 characters.

    Long page lists, metadata and values are cut first; the marker footer is never cut.
    """
    fallback = (
        f"<p><strong>{_e(_cut(_title(event, ctx), 500))}</strong></p>"
        "<p>The journey is too large for a note; see the contact's visitor journey "
        f"properties.</p><p><small>{_e(event.marker)}</small></p>"
    )
    return _fit(lambda limits: _html(event, ctx, limits), HUBSPOT_NOTE_MAX_CHARS, fallback)


# --------------------------------------------------------------------------- HubSpot properties

HUBSPOT_PROPERTY_GROUP: dict[str, Any] = {
    "name": "visitor_enrich",
    "label": "Visitor journey (visitor-enrich)",
    "displayOrder": -1,
}


def _prop(name: str, label: str, description: str, kind: str = "string") -> dict[str, Any]:
    field_type = {"string": "text", "number": "number", "datetime": "date"}[kind]
    return {
        "name": name,
        "label": label,
        "type": kind,
        "fieldType": field_type,
        "groupName": HUBSPOT_PROPERTY_GROUP["name"],
        "description": description,
    }


HUBSPOT_PROPERTIES: list[dict[str, Any]] = [
    _prop("ve_visitor_id", "Visitor ID", "Analytics visitor id (datafast_visitor_id cookie)."),
    _prop(
        "ve_first_touch",
        "First touch",
        "Where the visitor first came from (UTM, ref, referrer or 'direct').",
    ),
    _prop("ve_referrer", "First-touch referrer", "Referrer of the first session."),
    _prop("ve_utm_source", "First-touch UTM source", "utm_source of the first session."),
    _prop("ve_utm_medium", "First-touch UTM medium", "utm_medium of the first session."),
    _prop("ve_utm_campaign", "First-touch UTM campaign", "utm_campaign of the first session."),
    _prop("ve_first_visit_at", "First visit", "First known visit (UTC).", "datetime"),
    _prop("ve_last_visit_at", "Last visit", "Latest known visit (UTC).", "datetime"),
    _prop("ve_visit_count", "Visits", "Number of visits.", "number"),
    _prop("ve_pageview_count", "Pageviews", "Number of pageviews.", "number"),
    _prop("ve_lead_score", "Lead score", "0-100 likelihood to convert.", "number"),
    {
        **_prop(
            "ve_lead_score_estimated",
            "Lead score estimated",
            "Yes when visitor-enrich estimated the score because the analytics provider gave none.",
        ),
        "type": "enumeration",
        "fieldType": "booleancheckbox",
        "options": [
            {"label": "Yes", "value": "true", "displayOrder": 0},
            {"label": "No", "value": "false", "displayOrder": 1},
        ],
    },
    _prop("ve_expected_value", "Expected value (USD)", "Predicted revenue value in USD.", "number"),
    _prop("ve_country", "Country", "Country of the latest pageview."),
    _prop("ve_last_page", "Last page", "Latest page URL seen for the visitor."),
]

_HUBSPOT_NAMES = frozenset(p["name"] for p in HUBSPOT_PROPERTIES)


def hubspot_contact_properties(event: Event, ctx: JourneyContext) -> dict[str, str]:
    """Values for ``HUBSPOT_PROPERTIES`` as HubSpot takes them; unknown values are left out."""
    if not ctx.found:
        values: dict[str, str | None] = {"ve_visitor_id": ctx.visitor_id}
    else:
        touch, p = ctx.first_touch, ctx.prediction
        values = {
            "ve_visitor_id": ctx.visitor_id,
            "ve_first_touch": touch.label,
            "ve_referrer": touch.referrer,
            "ve_utm_source": touch.utm_source,
            "ve_utm_medium": touch.utm_medium,
            "ve_utm_campaign": touch.utm_campaign,
            "ve_first_visit_at": _iso_utc(ctx.first_visit_at) if ctx.first_visit_at else None,
            "ve_last_visit_at": _iso_utc(ctx.last_visit_at) if ctx.last_visit_at else None,
            "ve_visit_count": _int(ctx.visit_count),
            "ve_pageview_count": _int(ctx.pageview_count),
            "ve_lead_score": _number(p.score) if p else None,
            "ve_lead_score_estimated": ("true" if p.estimated else "false") if p else None,
            "ve_expected_value": _number(p.expected_value)
            if p and p.expected_value is not None
            else None,
            "ve_country": ctx.location.country or ctx.location.country_code,
            "ve_last_page": ctx.current_url
            or (ctx.recent_pages[0].url if ctx.recent_pages else None),
        }
    return {
        name: _cut(value, HUBSPOT_NOTE_MAX_CHARS)
        for name, value in values.items()
        if value and name in _HUBSPOT_NAMES
    }


# --------------------------------------------------------------------------- Slack


def _mrkdwn(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cap_mrkdwn(text: str, limit: int) -> str:
    """Cut escaped mrkdwn to ``limit`` without splitting an ``&amp;``-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(len(cut) - 5, 0))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + _ELLIPSIS


def _slack_section(text: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _cap_mrkdwn(text, SLACK_TEXT_MAX_CHARS)},
    }


def _slack_context(text: str) -> dict[str, Any]:
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": _cap_mrkdwn(text, SLACK_TEXT_MAX_CHARS)}],
    }


def _slack_fallback(text: str, marker: str) -> str:
    """The notification text: ``text`` cut to fit, then the marker, never cut."""
    room = max(SLACK_TEXT_MAX_CHARS - len(marker) - 3, 1)
    return f"{_cap_mrkdwn(text, room)} · {marker}"


def _slack_who(event: Event) -> str | None:
    name = f"*{_mrkdwn(_one_line(event.name))}*" if event.name else None
    email = None
    if event.email:
        safe = not any(c in event.email for c in "<>|& ")
        email = f"<mailto:{event.email}|{event.email}>" if safe else _mrkdwn(event.email)
    return _joined(name, email, sep=" · ")


def render_slack_alert(event: Event, ctx: JourneyContext) -> dict[str, Any]:
    """Incoming-webhook payload ``{"text", "blocks"}`` for a hot-lead alert."""
    marker = _mrkdwn(event.marker)
    who = _slack_who(event)
    if not ctx.found:
        note = _mrkdwn(_not_found(ctx))
        return {
            "text": _slack_fallback(note, marker),
            "blocks": [_slack_section(f"{who}\n{note}" if who else note), _slack_context(marker)],
        }

    limits = _Limits(pages=SLACK_KEY_PAGES, items=5, chars=200)
    sections = {s.key: s for s in journey_sections(ctx, limits)}
    prediction = sections.get("prediction")
    journey = sections["journey"]
    fields = [
        f
        for s in (prediction, journey)
        if s is not None
        for f in s.brief_facts()
        if f.label != "Visitor ID"
    ][:SLACK_MAX_FIELDS]

    visitor = f"{provider_name(ctx.provider)} visitor `{_mrkdwn(ctx.visitor_id)}`"
    # plain_text is shown literally (no mrkdwn, so no escaping); mrkdwn texts are escaped.
    header = f"Hot lead: {_one_line(event.name or event.email or f'visitor {ctx.visitor_id}')}"
    headline = f"Hot lead: {_who(event) or f'visitor {ctx.visitor_id}'}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(header, SLACK_HEADER_MAX_CHARS)},
        },
        _slack_section(f"{who}\n{visitor}" if who else visitor),
    ]
    if fields:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {
                        "type": "mrkdwn",
                        "text": _cap_mrkdwn(
                            f"*{_mrkdwn(f.label)}*\n{_mrkdwn(f.value)}", SLACK_FIELD_MAX_CHARS
                        ),
                    }
                    for f in fields
                ],
            }
        )
    if "pages" in sections:
        pages = "\n".join(f"• {_mrkdwn(item)}" for item in sections["pages"].items)
        blocks.append(_slack_section(f"*Key pages*\n{pages}"))
    if prediction is not None and prediction.note:
        reasons = "; ".join(prediction.items)
        text = f"{prediction.note} {reasons}" if reasons else prediction.note
        blocks.append(_slack_context(_mrkdwn(text)))
    blocks.append(_slack_context(marker))

    summary = [
        f"{f.label.lower()} {f.value}" for f in fields if f.label in ("Lead score", "First touch")
    ]
    fallback = ", ".join([headline, *summary])
    return {"text": _slack_fallback(_mrkdwn(fallback), marker), "blocks": blocks}


# --------------------------------------------------------------------------- Rocket.Chat


_ROCKETCHAT_LEVELS = (
    _Limits(pages=SLACK_KEY_PAGES, items=10, chars=200),
    _Limits(pages=SLACK_KEY_PAGES, items=5, chars=120),
    _Limits(pages=3, items=3, chars=60),
)


def _rocketchat(event: Event, ctx: JourneyContext, limits: _Limits) -> str:
    lines = [f"*{_title(event, ctx)}*"]
    for section in journey_sections(ctx, limits):
        if section.key == "journey":
            lines += [f"*{f.label}:* {f.value}" for f in section.brief_facts()]
            continue
        heading = f"*{section.title}:*"
        if section.key in ("goals", "payments"):
            lines.append(f"{heading} " + "; ".join(section.items))
            continue
        facts = " · ".join(f"{f.label}: {f.value}" for f in section.full_facts())
        lines.append(f"{heading} {facts}" if facts else heading)
        if section.note:
            lines.append(f"_{section.note}_")
        lines += [f"• {item}" for item in section.items]
    lines.append(event.marker)
    return "\n".join(lines)


def render_rocketchat_message(event: Event, ctx: JourneyContext) -> str:
    """Rocket.Chat markdown for the livechat room, compact enough for an agent to skim."""
    if not ctx.found:
        return f"{_not_found(ctx)}\n{event.marker}"
    fallback = f"*{_cut(_title(event, ctx), 500)}*\n{event.marker}"
    return _fit(
        lambda limits: _rocketchat(event, ctx, limits),
        ROCKETCHAT_MAX_CHARS,
        fallback,
        _ROCKETCHAT_LEVELS,
    )


# --------------------------------------------------------------------------- Slack: realtime

REALTIME_PROFILE_ITEMS = 8
_PROFILE_NAME_KEYS = ("name", "displayName", "fullName", "email", "userId", "user_id")


def _profile_name(profile: dict[str, Any]) -> str | None:
    for key in _PROFILE_NAME_KEYS:
        value = profile.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return _one_line(str(value))
    return None


def render_realtime_alert(hot: HotVisitor) -> dict[str, Any]:
    """Incoming-webhook payload for a visitor on the site now (DataFast realtime map).

    Location, device, current page, DataFast's score (when it gives one), why this visitor is
    hot, and the Identify profile when there is one.
    """
    visitor = hot.visitor
    marker = _mrkdwn(f"visitor-enrich:realtime:{hot.key}")
    profile = {
        str(k): v
        for k, v in visitor.profile_data.items()
        if v is not None and v not in ("", [], {})
    }
    who = _profile_name(profile)
    plain_who = _cut(who or f"visitor {visitor.visitor_id}", 100)
    reasons = "; ".join(_one_line(r) for r in hot.reasons)
    score = visitor.score
    limits = _Limits(chars=300)
    fields = _facts(
        [
            ("Why now", reasons, "both"),
            (
                "Lead score",
                f"{_number(score, 1)}/100 (DataFast)" if score is not None else None,
                "both",
            ),
            ("Location", visitor.location.label, "both"),
            ("Device", visitor.system.label, "both"),
            ("Current page", visitor.current_url, "both"),
        ],
        limits,
    )
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _cut(f"Hot visitor on the site now: {plain_who}", SLACK_HEADER_MAX_CHARS),
            },
        },
        _slack_section(f"DataFast visitor `{_mrkdwn(_one_line(visitor.visitor_id))}`"),
        {
            "type": "section",
            "fields": [
                {
                    "type": "mrkdwn",
                    "text": _cap_mrkdwn(
                        f"*{_mrkdwn(f.label)}*\n{_mrkdwn(f.value)}", SLACK_FIELD_MAX_CHARS
                    ),
                }
                for f in fields[:SLACK_MAX_FIELDS]
            ],
        },
    ]
    if profile:
        entries = [
            _mrkdwn(f"{_cut(_one_line(k), _METADATA_KEY_CHARS)}: {_cut(_one_line(v), 200)}")
            for k, v in profile.items()
        ]
        lines = "\n".join(_capped(entries, REALTIME_PROFILE_ITEMS))
        blocks.append(_slack_section(f"*Identify profile*\n{lines}"))
    blocks.append(_slack_context(marker))
    fallback = _mrkdwn(f"Hot visitor on the site now: {plain_who} ({reasons})")
    return {"text": _slack_fallback(fallback, marker), "blocks": blocks}
