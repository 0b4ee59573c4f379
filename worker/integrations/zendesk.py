"""Zendesk: one private comment on the ticket named by the event's ``ticket_id``."""

from __future__ import annotations

from typing import Any

from config import Settings
from worker.errors import BadResponse, Rejected
from worker.events import Event
from worker.http import ServiceClient, secret_text
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.sink import DeliveryResult, Note, Sink


class ZendeskSink(Sink):
    name = "zendesk"
    label = "Zendesk"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.zendesk_api_token is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "zendesk",
            str(settings.zendesk_base_url),
            settings=settings,
            limiter=limiter,
            rate=settings.zendesk_rate_limit,
            # Zendesk API tokens authenticate as "{email}/token" with the token as password.
            auth=(f"{settings.zendesk_email}/token", secret_text(settings.zendesk_api_token)),
            headers={"Accept": "application/json"},
        )

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.ticket_id:
            return "no ticket_id on the event"
        return self.other_system(event) or super().skip_reason(event, context)

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        if not (event.ticket_id or "").isdigit():
            raise Rejected(f"ticket_id {event.ticket_id!r} is not a Zendesk ticket number")
        comment = {"html_body": note.body, "public": False}
        response = self.http.request(
            "PUT",
            f"api/v2/tickets/{event.ticket_id}.json",
            json_body={"ticket": {"comment": comment}},
        )
        answer: Any = response.json() if response.content else None
        audit = answer.get("audit") if isinstance(answer, dict) else None
        comment_id = None
        if isinstance(audit, dict):
            for item in audit.get("events") or []:
                if isinstance(item, dict) and item.get("type") == "Comment":
                    comment_id = str(item.get("id"))
        return DeliveryResult(external_id=comment_id, detail=f"ticket {event.ticket_id}")

    def already_delivered(self, event: Event) -> bool | None:
        response = self.http.request(
            "GET",
            f"api/v2/tickets/{event.ticket_id}/comments.json",
            params={"sort_order": "desc"},
        )
        body = response.json()
        comments = body.get("comments") if isinstance(body, dict) else None
        if not isinstance(comments, list):
            raise BadResponse("comments answer without a comments list", service=self.name)
        return any(
            event.marker in str(c.get("html_body") or "")
            or event.marker in str(c.get("body") or "")
            for c in comments
            if isinstance(c, dict)
        )

    def check(self) -> str:
        self.http.request("GET", "api/v2/users/me.json")
        return f"{self.label} answered at {self.http.base_url}"


INTEGRATION = Integration(name="zendesk", label="Zendesk", sink=ZendeskSink)
