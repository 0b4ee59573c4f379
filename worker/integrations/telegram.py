"""Telegram: a hot-lead alert as one message from a bot to a chat, and the realtime alerts.

Set-up (README "Telegram"): create a bot with @BotFather (``/newbot``) and put its token in
``TELEGRAM_BOT_TOKEN``; add the bot to the group or channel and put the chat's id in
``TELEGRAM_CHAT_ID`` (``-100…`` for supergroups and channels; ``getUpdates`` shows it after a
message in the chat). The token is part of every URL and is never logged.

``sendMessage`` with ``parse_mode: HTML``: every value is escaped (``&``, ``<``, ``>``), only
``<b>``, ``<i>`` and ``<code>`` are ours. At most 4,096 characters: the pages and long values
are cut first. Flood control answers 429 with ``parameters.retry_after``, which the shared
client obeys (``worker/http.py``); ``TELEGRAM_RATE_LIMIT`` (20 a minute, Telegram's limit for a
group) keeps us under it. A bot cannot read back what it sent, so ``already_delivered`` cannot
tell.
"""

from __future__ import annotations

import html
from typing import Any

from config import Settings
from worker.alert import Alert, lead_alert, realtime_alert
from worker.errors import BadResponse
from worker.events import Event
from worker.http import ServiceClient, secret_text
from worker.integration import Integration
from worker.journey import HotVisitor, JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.sink import AlertSink, DeliveryResult, Note
from worker.text import cut

MESSAGE_MAX = 4096
VALUE_MAX = 300


def _e(text: str) -> str:
    return html.escape(text, quote=False)


def render_html(alert: Alert, value_max: int = VALUE_MAX, pages: int | None = None) -> str:
    """The alert as Telegram HTML."""
    lines = [f"<b>{_e(alert.headline)}</b>"]
    lines += [_e(line) for line in (alert.person, alert.visitor) if line]
    lines.append("")
    lines += [f"<b>{_e(f.label)}:</b> {_e(cut(f.value, value_max))}" for f in alert.facts]
    for title, items in (("Key pages", alert.pages[:pages]), (alert.extra_title, alert.extra)):
        if title and items:
            lines += ["", f"<b>{_e(title)}</b>"]
            lines += [f"• {_e(cut(item, value_max))}" for item in items]
    if alert.note:
        lines += ["", f"<i>{_e(cut(alert.note, value_max * 2))}</i>"]
    lines += ["", f"<code>{_e(alert.marker)}</code>"]
    return "\n".join(lines)


def render_text(alert: Alert) -> str:
    """The HTML, showing less until it fits Telegram's 4,096 characters."""
    for value_max, pages in ((VALUE_MAX, None), (120, 3), (60, 0)):
        text = render_html(alert, value_max, pages)
        if len(text) <= MESSAGE_MAX:
            return text
    return f"<b>{_e(cut(alert.headline, 300))}</b>\n<code>{_e(alert.marker)}</code>"


class TelegramSink(AlertSink):
    name = "telegram"
    label = "Telegram"
    note_format = "html"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.telegram_bot_token is not None and settings.telegram_chat_id is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        base = str(settings.telegram_base_url).rstrip("/")
        return ServiceClient(
            "telegram",
            f"{base}/bot{secret_text(settings.telegram_bot_token)}",
            settings=settings,
            limiter=limiter,
            rate=settings.telegram_rate_limit,
        )

    def send(self, text: str) -> str | None:
        """``sendMessage`` to the chat; the id of the message Telegram created."""
        payload = {
            "chat_id": self.settings.telegram_chat_id,
            "text": text,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
        }
        body: Any = self.http.request("POST", "sendMessage", json_body=payload).json()
        if not isinstance(body, dict) or body.get("ok") is not True:
            raise BadResponse("answered without ok: true", service=self.name)
        result = body.get("result")
        return str(result["message_id"]) if isinstance(result, dict) else None

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if note.template is None:
            text = render_text(lead_alert(event, context))
        else:
            # A user's template (TEMPLATES_DIR or a routing rule): Telegram HTML, autoescaped.
            text = cut(note.body, MESSAGE_MAX)
        return DeliveryResult(external_id=self.send(text), detail="alert")

    def default_note(self, event: Event, context: JourneyContext) -> str:
        return render_text(lead_alert(event, context))

    def post_realtime_alert(self, hot: HotVisitor) -> None:
        self.send(render_text(realtime_alert(hot)))

    def check(self) -> str:
        # getMe: a read that proves the token. The base URL holds the token: never print it.
        body: Any = self.http.request("GET", "getMe").json()
        result = body.get("result") if isinstance(body, dict) else None
        name = result.get("username") if isinstance(result, dict) else None
        return f"{self.label} bot @{name or 'unknown'} answered"


INTEGRATION = Integration(name="telegram", label="Telegram", sink=TelegramSink)
