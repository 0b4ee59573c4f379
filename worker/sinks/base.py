"""What every destination offers: deliver one event's journey, and (where it can) say whether
that was already done."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from config import Settings
from worker.events import Event
from worker.http import ServiceClient
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter


@dataclass(frozen=True)
class DeliveryResult:
    """What a sink created, for the event status (a note id, a comment's ticket...)."""

    external_id: str | None = None
    detail: str | None = None


class Sink(ABC):
    """A destination for journey context. One instance per worker process.

    A sink is on when its credentials are set (``enabled``). ``skip_reason`` decides per event
    (a Zendesk note needs a ticket id; a Slack alert needs a hot lead). ``deliver`` posts once.
    ``already_delivered`` looks in the destination for ``event.marker``; it returns None for a
    sink that cannot look, which then carries a documented risk of a second post after a crash.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    # Whether a "no journey found" note is still worth posting when the source has nothing.
    wants_empty_context: ClassVar[bool] = True

    def __init__(self, settings: Settings, limiter: SharedRateLimiter) -> None:
        self.settings = settings
        self.http = self.build_client(settings, limiter)

    @classmethod
    @abstractmethod
    def enabled(cls, settings: Settings) -> bool: ...

    @abstractmethod
    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient: ...

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        """Why this event does not go to this sink, or None when it does."""
        if not context.found and not self.wants_empty_context:
            return "no journey to send"
        return None

    @abstractmethod
    def deliver(self, event: Event, context: JourneyContext) -> DeliveryResult: ...

    def already_delivered(self, event: Event) -> bool | None:
        """True when the destination already holds ``event.marker``; None when it cannot tell."""
        return None

    def check(self) -> str:
        """A cheap reachability check for ``visitor-enrich check``; raises on failure."""
        return f"{self.label} configured at {self.http.base_url}"
