"""The outside systems, one module each; this is the one list of them.

Adding a system is one module under this package (its client settings, webhook adapter,
sink, source and renderers, ending with ``INTEGRATION = Integration(...)``), one line in
``INTEGRATIONS`` below, one fake in ``tests/`` and one README section. The order is the order
sinks are planned and listed in.
"""

from __future__ import annotations

from config import Settings
from worker.inbound import WebhookAdapter
from worker.integration import Integration
from worker.integrations import (
    attio,
    clerk,
    console,
    crisp,
    datafast,
    discord,
    freshdesk,
    helpscout,
    hubspot,
    intercom,
    pipedrive,
    plain,
    postmetric,
    rocketchat,
    salesforce,
    slack,
    stripe,
    teams,
    telegram,
    webhook,
    zendesk,
)
from worker.ratelimit import SharedRateLimiter
from worker.sink import Sink
from worker.source import Source

INTEGRATIONS: list[Integration] = [
    datafast.INTEGRATION,
    postmetric.INTEGRATION,
    hubspot.INTEGRATION,
    attio.INTEGRATION,
    pipedrive.INTEGRATION,
    salesforce.INTEGRATION,
    zendesk.INTEGRATION,
    slack.INTEGRATION,
    rocketchat.INTEGRATION,
    discord.INTEGRATION,
    teams.INTEGRATION,
    telegram.INTEGRATION,
    freshdesk.INTEGRATION,
    crisp.INTEGRATION,
    plain.INTEGRATION,
    intercom.INTEGRATION,
    helpscout.INTEGRATION,
    stripe.INTEGRATION,
    clerk.INTEGRATION,
    webhook.INTEGRATION,
    console.INTEGRATION,
]

SOURCES: dict[str, type[Source]] = {i.name: i.source for i in INTEGRATIONS if i.source}
SINKS: list[type[Sink]] = [i.sink for i in INTEGRATIONS if i.sink]
WEBHOOKS: dict[str, type[WebhookAdapter]] = {i.name: i.webhook for i in INTEGRATIONS if i.webhook}


def build_sinks(settings: Settings, limiter: SharedRateLimiter) -> dict[str, Sink]:
    """The enabled sinks (credentials set), by name, in registry order."""
    return {cls.name: cls(settings, limiter) for cls in SINKS if cls.enabled(settings)}


def build_source(settings: Settings, limiter: SharedRateLimiter) -> Source:
    return SOURCES[settings.source](settings, limiter)


def build_webhooks(settings: Settings, *, require_uuid: bool) -> dict[str, WebhookAdapter]:
    """Every webhook adapter, by system: one that is not configured answers 401."""
    return {name: cls(settings, require_uuid=require_uuid) for name, cls in WEBHOOKS.items()}


def integration(name: str) -> Integration | None:
    return next((i for i in INTEGRATIONS if i.name == name), None)


__all__ = [
    "INTEGRATIONS",
    "SINKS",
    "SOURCES",
    "WEBHOOKS",
    "Integration",
    "build_sinks",
    "build_source",
    "build_webhooks",
    "integration",
]
