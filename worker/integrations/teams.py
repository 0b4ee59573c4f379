"""Microsoft Teams: a hot-lead alert as one Adaptive Card, and the realtime alerts.

Set-up (README "Microsoft Teams"): Office 365 connectors are being retired, so use a
Workflow: in the channel, "Workflows" → the template "Post to a channel when a webhook request
is received" (trigger "When a Teams webhook request is received"), and copy its URL into
``TEAMS_WEBHOOK_URL``; the URL is the secret and is never logged.

The message is the documented envelope ``{"type": "message", "attachments": [{"contentType":
"application/vnd.microsoft.card.adaptive", "content": <card>}]}`` with an Adaptive Card 1.4:
a bold headline, who, a FactSet of the key facts, the key pages, and the marker in small
print. Teams throttles above 4 requests a second (``TEAMS_RATE_LIMIT``) and takes at most
28 KB a message, so long values are cut. The Workflow cannot be asked what it posted, so
``already_delivered`` cannot tell.
"""

from __future__ import annotations

from typing import Any

from config import Settings
from worker.alert import Alert, lead_alert, realtime_alert
from worker.events import Event
from worker.formats import escape_markdown
from worker.http import ServiceClient, secret_text
from worker.integration import Integration
from worker.journey import HotVisitor, JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.sink import AlertSink, DeliveryResult, Note
from worker.text import cut

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
VALUE_MAX = 500
TEXT_MAX = 4000


def _block(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def card_message(body: list[dict[str, Any]]) -> dict[str, Any]:
    """The Workflows / incoming-webhook envelope around one Adaptive Card."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": CARD_SCHEMA,
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                },
            }
        ],
    }


def render_card(alert: Alert) -> dict[str, Any]:
    """The alert as a card; TextBlocks take a Markdown subset, so text is escaped."""
    body: list[dict[str, Any]] = [
        _block(escape_markdown(alert.headline), size="Medium", weight="Bolder")
    ]
    who = [escape_markdown(line) for line in (alert.person, alert.visitor) if line]
    if who:
        body.append(_block("\n\n".join(who), spacing="None"))
    if alert.facts:
        body.append(
            {
                "type": "FactSet",
                "facts": [
                    {"title": f.label, "value": escape_markdown(cut(f.value, VALUE_MAX))}
                    for f in alert.facts
                ],
            }
        )
    for title, lines in (("Key pages", alert.pages), (alert.extra_title, alert.extra)):
        if title and lines:
            items = "\n".join(f"- {escape_markdown(cut(line, VALUE_MAX))}" for line in lines)
            body.append(_block(f"**{title}**\n\n{items}"))
    if alert.note:
        body.append(_block(escape_markdown(cut(alert.note, TEXT_MAX)), isSubtle=True))
    # The marker, verbatim (no Markdown specials in it to escape).
    body.append(_block(alert.marker, isSubtle=True, size="Small"))
    return card_message(body)


class TeamsSink(AlertSink):
    name = "teams"
    label = "Microsoft Teams"
    note_format = "markdown"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.teams_webhook_url is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "teams",
            secret_text(settings.teams_webhook_url),
            settings=settings,
            limiter=limiter,
            rate=settings.teams_rate_limit,
        )

    def post(self, payload: dict[str, Any]) -> None:
        self.http.request("POST", self.http.base_url, json_body=payload)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if note.template is None:
            self.post(render_card(lead_alert(event, context)))
        else:
            # A user's template (TEMPLATES_DIR or a routing rule) is the card's text.
            self.post(card_message([_block(cut(note.body, TEXT_MAX))]))
        return DeliveryResult(detail="alert card")

    def default_note(self, event: Event, context: JourneyContext) -> str:
        return lead_alert(event, context).summary

    def post_realtime_alert(self, hot: HotVisitor) -> None:
        self.post(render_card(realtime_alert(hot)))

    def check(self) -> str:
        # A Workflow URL only takes posts; do not post to check it.
        return f"{self.label} workflow URL configured"


INTEGRATION = Integration(name="teams", label="Microsoft Teams", sink=TeamsSink)
