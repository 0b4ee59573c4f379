"""Slack: one alert through an incoming webhook when a signup's lead score is high enough."""

from __future__ import annotations

from typing import Any

from config import Settings
from worker.events import Event
from worker.http import ServiceClient, secret_text
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.render import render_slack_alert
from worker.sinks.base import DeliveryResult, Sink


class SlackSink(Sink):
    name = "slack"
    label = "Slack"
    wants_empty_context = False

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

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if event.type != "signup":
            return f"alerts are for signups, not {event.type}"
        reason = super().skip_reason(event, context)
        if reason:
            return reason
        score = context.score
        threshold = self.settings.lead_alert_min_score
        if score is None:
            return "no lead score"
        if score < threshold:
            return f"score {score:g} below the alert threshold {threshold:g}"
        return None

    def post(self, payload: dict[str, Any]) -> None:
        """Send one incoming-webhook payload (lead alerts here, realtime alerts in
        ``worker.realtime``), under the shared Slack rate limit."""
        self.http.request("POST", self.http.base_url, json_body=payload)

    def deliver(self, event: Event, context: JourneyContext) -> DeliveryResult:
        self.post(render_slack_alert(event, context))
        return DeliveryResult(detail=f"alert for score {context.score:g}")

    def check(self) -> str:
        # Posting is the only thing an incoming webhook does; do not post to check it.
        return "Slack incoming webhook configured"
