"""Slack: an incoming webhook. A lead alert (Block Kit) for a hot signup or a payment, and the
realtime hot-visitor alerts.

Set-up (README "Slack"): create an app with an incoming webhook for the channel and set
``SLACK_WEBHOOK_URL``. The URL is the secret: it is never logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import Settings
from worker.alert import realtime_alert
from worker.events import Event
from worker.formats import cap_mrkdwn, escape_mrkdwn
from worker.http import ServiceClient, secret_text
from worker.integration import Integration
from worker.journey import HotVisitor, JourneyContext
from worker.note import (
    Fact,
    Limits,
    not_found_text,
    note_sections,
    payment_summary,
    provider_name,
    who,
)
from worker.ratelimit import SharedRateLimiter
from worker.sink import AlertSink, DeliveryResult, Note
from worker.text import cut, joined, one_line

SLACK_TEXT_MAX_CHARS = 3_000  # section / context text object limit
SLACK_FIELD_MAX_CHARS = 2_000  # one section field
SLACK_HEADER_MAX_CHARS = 150
SLACK_MAX_FIELDS = 10
SLACK_KEY_PAGES = 5


class SlackSink(AlertSink):
    name = "slack"
    label = "Slack"
    note_format = "mrkdwn"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.slack_webhook_url is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        # The webhook URL is the secret; it is the whole base URL and is never logged.
        return ServiceClient(
            "slack",
            secret_text(settings.slack_webhook_url),
            settings=settings,
            limiter=limiter,
            rate=settings.slack_rate_limit,
        )

    def post(self, payload: dict[str, Any]) -> None:
        """Send one incoming-webhook payload under the shared Slack rate limit."""
        self.http.request("POST", self.http.base_url, json_body=payload)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if note.template is None:
            self.post(render_slack_alert(event, context))
        else:
            # A user's template (TEMPLATES_DIR or a routing rule) is the whole message.
            self.post({"text": note.body, "blocks": [_slack_section(note.body)]})
        score = context.score
        return DeliveryResult(detail=f"alert for score {score:g}" if score is not None else "alert")

    def default_note(self, event: Event, context: JourneyContext) -> str:
        # The Block Kit message is built in code; this is its notification text.
        return str(render_slack_alert(event, context)["text"])

    def post_realtime_alert(self, hot: HotVisitor) -> None:
        self.post(render_realtime_alert(hot))

    def check(self) -> str:
        # Posting is the only thing an incoming webhook does; do not post to check it.
        return "Slack incoming webhook configured"


# Rendering -----------------------------------------------------------------------------------


def _slack_section(text: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": cap_mrkdwn(text, SLACK_TEXT_MAX_CHARS)},
    }


def _slack_fields(facts: Sequence[Fact]) -> dict[str, Any]:
    """A section of labelled fields (at most ten, each within Slack's field limit)."""
    return {
        "type": "section",
        "fields": [
            {
                "type": "mrkdwn",
                "text": cap_mrkdwn(
                    f"*{escape_mrkdwn(f.label)}*\n{escape_mrkdwn(f.value)}", SLACK_FIELD_MAX_CHARS
                ),
            }
            for f in facts
        ],
    }


def _slack_context(text: str) -> dict[str, Any]:
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": cap_mrkdwn(text, SLACK_TEXT_MAX_CHARS)}],
    }


def _slack_fallback(text: str, marker: str) -> str:
    """The notification text: ``text`` cut to fit, then the marker, never cut."""
    room = max(SLACK_TEXT_MAX_CHARS - len(marker) - 3, 1)
    return f"{cap_mrkdwn(text, room)} · {marker}"


def _slack_who(event: Event) -> str | None:
    name = f"*{escape_mrkdwn(one_line(event.name))}*" if event.name else None
    email = None
    if event.email:
        safe = not any(c in event.email for c in "<>|& ")
        email = f"<mailto:{event.email}|{event.email}>" if safe else escape_mrkdwn(event.email)
    return joined(name, email, sep=" · ")


def render_slack_alert(event: Event, ctx: JourneyContext) -> dict[str, Any]:
    """Incoming-webhook payload ``{"text", "blocks"}`` for a hot-lead alert."""
    marker = escape_mrkdwn(event.marker)
    person = _slack_who(event)
    paid = payment_summary(event, ctx)
    if not ctx.found:
        note = escape_mrkdwn(not_found_text(ctx))
        if paid:
            note = f"*{escape_mrkdwn(paid)}*\n{note}"
        return {
            "text": _slack_fallback(note, marker),
            "blocks": [
                _slack_section(f"{person}\n{note}" if person else note),
                _slack_context(marker),
            ],
        }

    limits = Limits(pages=SLACK_KEY_PAGES, items=5, chars=200)
    sections = {s.key: s for s in note_sections(event, ctx, limits)}
    prediction = sections.get("prediction")
    journey = sections["journey"]
    payment = sections.get("payment")
    fields = [
        f
        for s in (payment, prediction, journey)
        if s is not None
        for f in s.brief_facts()
        if f.label != "Visitor ID"
    ][:SLACK_MAX_FIELDS]

    visitor = f"{provider_name(ctx.provider)} visitor `{escape_mrkdwn(ctx.visitor_id)}`"
    # plain_text is shown literally (no mrkdwn, so no escaping); mrkdwn texts are escaped.
    kind = "New payment" if event.type == "payment" else "Hot lead"  # as worker/alert.py
    header = f"{kind}: {one_line(event.name or event.email or f'visitor {ctx.visitor_id}')}"
    headline = f"{kind}: {who(event) or f'visitor {ctx.visitor_id}'}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": cut(header, SLACK_HEADER_MAX_CHARS)},
        },
        _slack_section(f"{person}\n{visitor}" if person else visitor),
    ]
    if paid:
        blocks.append(_slack_section(f"*{escape_mrkdwn(paid)}*"))
    if fields:
        blocks.append(_slack_fields(fields))
    if "pages" in sections:
        pages = "\n".join(f"• {escape_mrkdwn(item)}" for item in sections["pages"].items)
        blocks.append(_slack_section(f"*Key pages*\n{pages}"))
    if prediction is not None and prediction.note:
        reasons = "; ".join(prediction.items)
        text = f"{prediction.note} {reasons}" if reasons else prediction.note
        blocks.append(_slack_context(escape_mrkdwn(text)))
    blocks.append(_slack_context(marker))

    # A payment's summary already says where the buyer came from.
    wanted = ("Lead score",) if paid else ("Lead score", "First touch")
    summary = [f"{f.label.lower()} {f.value}" for f in fields if f.label in wanted]
    fallback = ", ".join([headline, paid, *summary] if paid else [headline, *summary])
    return {"text": _slack_fallback(escape_mrkdwn(fallback), marker), "blocks": blocks}


# Realtime alerts -----------------------------------------------------------------------------


def render_realtime_alert(hot: HotVisitor) -> dict[str, Any]:
    """Incoming-webhook payload for a visitor on the site now (the realtime feed): why this
    visitor is hot, score, location, device, current page and the Identify profile
    (``worker/alert.py``, as every alert sink shows it)."""
    alert = realtime_alert(hot)
    marker = escape_mrkdwn(alert.marker)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": cut(alert.headline, SLACK_HEADER_MAX_CHARS)},
        },
        _slack_section(f"DataFast {escape_mrkdwn(alert.visitor or '')}"),
        _slack_fields(alert.facts[:SLACK_MAX_FIELDS]),
    ]
    if alert.extra_title and alert.extra:
        lines = "\n".join(escape_mrkdwn(line) for line in alert.extra)
        blocks.append(_slack_section(f"*{escape_mrkdwn(alert.extra_title)}*\n{lines}"))
    blocks.append(_slack_context(marker))
    reasons = next((f.value for f in alert.facts if f.label == "Why now"), "")
    fallback = escape_mrkdwn(f"{alert.headline} ({reasons})")
    return {"text": _slack_fallback(fallback, marker), "blocks": blocks}


INTEGRATION = Integration(name="slack", label="Slack", sink=SlackSink)
