"""Discord: a hot-lead alert (one embed) through a channel webhook, and the realtime alerts.

Set-up (README "Discord"): Server Settings → Integrations → Webhooks → New Webhook, pick the
channel, copy the URL into ``DISCORD_WEBHOOK_URL``; the URL is the secret and is never logged.

Messages are sent with ``?wait=true`` so Discord confirms the message was saved (and returns
its id) instead of answering 204 for a message it may have dropped. Discord's rate limits
(``X-RateLimit-*`` headers, and ``retry_after`` in a 429 body) are obeyed by the shared
client (``worker/http.py``). Mentions are switched off: a visitor named "@everyone" pings
nobody. A webhook cannot list its channel's messages, so ``already_delivered`` cannot tell:
a worker killed between the post and its record may post an alert twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

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

# Discord's documented embed limits.
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
CONTENT_MAX = 2000
MAX_FIELDS = 25
COLOR = 0x2F80ED


def _text(value: str, limit: int) -> str:
    return cut(escape_markdown(value), limit)


def render_embed(alert: Alert) -> dict[str, Any]:
    """One Discord embed for an alert; every user- and provider-supplied text escaped."""
    lines = [escape_markdown(line) for line in (alert.person, alert.visitor) if line]
    if alert.note:
        lines.append(f"*{escape_markdown(alert.note)}*")
    description = "\n".join(lines)
    fields = [
        {
            "name": cut(f.label, FIELD_NAME_MAX),
            "value": _text(f.value, FIELD_VALUE_MAX),
            "inline": True,
        }
        for f in alert.facts
    ]
    if alert.pages:
        pages = "\n".join(f"• {escape_markdown(p)}" for p in alert.pages)
        fields.append({"name": "Key pages", "value": cut(pages, FIELD_VALUE_MAX), "inline": False})
    if alert.extra_title and alert.extra:
        extra = "\n".join(escape_markdown(e) for e in alert.extra)
        fields.append(
            {"name": alert.extra_title, "value": cut(extra, FIELD_VALUE_MAX), "inline": False}
        )
    embed: dict[str, Any] = {
        "title": cut(alert.headline, TITLE_MAX),
        "color": COLOR,
        "fields": fields[:MAX_FIELDS],
        # The marker, verbatim: how the alert is recognised as ours.
        "footer": {"text": cut(alert.marker, FOOTER_MAX)},
    }
    if description:
        embed["description"] = cut(description, DESCRIPTION_MAX)
    return embed


def render_message(alert: Alert) -> dict[str, Any]:
    return {
        "username": "visitor-enrich",
        "content": cut(escape_markdown(alert.summary), CONTENT_MAX),
        "embeds": [render_embed(alert)],
        "allowed_mentions": {"parse": []},
    }


class DiscordSink(AlertSink):
    name = "discord"
    label = "Discord"
    note_format = "markdown"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.discord_webhook_url is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        url: SecretStr | None = settings.discord_webhook_url
        return ServiceClient(
            "discord",
            secret_text(url),
            settings=settings,
            limiter=limiter,
            rate=settings.discord_rate_limit,
        )

    def post(self, payload: dict[str, Any]) -> str | None:
        """Execute the webhook; the id of the message Discord saved."""
        answer = self.http.request(
            "POST", self.http.base_url, params={"wait": "true"}, json_body=payload
        )
        body = answer.json() if answer.content else None
        return str(body["id"]) if isinstance(body, dict) and body.get("id") else None

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if note.template is None:
            payload = render_message(lead_alert(event, context))
        else:
            # A user's template (TEMPLATES_DIR or a routing rule) is the whole message.
            payload = {
                "username": "visitor-enrich",
                "content": cut(note.body, CONTENT_MAX),
                "allowed_mentions": {"parse": []},
            }
        return DeliveryResult(external_id=self.post(payload), detail="alert")

    def default_note(self, event: Event, context: JourneyContext) -> str:
        # The embed is built in code; this is its notification text.
        return lead_alert(event, context).summary

    def post_realtime_alert(self, hot: HotVisitor) -> None:
        self.post(render_message(realtime_alert(hot)))

    def check(self) -> str:
        # "Get Webhook with Token": a read that proves the URL without posting.
        body = self.http.request("GET", self.http.base_url).json()
        channel = body.get("channel_id") if isinstance(body, dict) else None
        return f"{self.label} webhook answered (channel {channel or 'unknown'})"


INTEGRATION = Integration(name="discord", label="Discord", sink=DiscordSink)
