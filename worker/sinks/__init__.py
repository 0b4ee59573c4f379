"""Destinations, one module each. A new sink is one file here plus one line in ``SINKS``."""

from __future__ import annotations

from config import Settings
from worker.ratelimit import SharedRateLimiter
from worker.sinks.base import DeliveryResult, Sink
from worker.sinks.hubspot import HubSpotSink
from worker.sinks.rocketchat import RocketChatSink
from worker.sinks.slack import SlackSink
from worker.sinks.zendesk import ZendeskSink

SINKS: list[type[Sink]] = [
    HubSpotSink,
    ZendeskSink,
    SlackSink,
    RocketChatSink,
]


def build_sinks(settings: Settings, limiter: SharedRateLimiter) -> dict[str, Sink]:
    """The enabled sinks (credentials set), by name, in registry order."""
    return {cls.name: cls(settings, limiter) for cls in SINKS if cls.enabled(settings)}


__all__ = ["SINKS", "DeliveryResult", "Sink", "build_sinks"]
