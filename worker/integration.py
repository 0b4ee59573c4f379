"""What one integration module declares: the system's name and the parts it has.

Each ``worker/integrations/<system>.py`` ends with ``INTEGRATION = Integration(...)`` and
``worker/integrations/__init__.py`` lists the modules, one line each. The pipeline finds
sources, sinks and webhook adapters through that list and imports no integration itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.inbound import WebhookAdapter
from worker.sink import Sink
from worker.source import Source


@dataclass(frozen=True)
class Integration:
    """One outside system: an analytics ``source``, a ``sink`` for notes or alerts, a
    ``webhook`` adapter for what it sends us; any of them may be absent."""

    name: str
    label: str
    source: type[Source] | None = None
    sink: type[Sink] | None = None
    webhook: type[WebhookAdapter] | None = None

    def __post_init__(self) -> None:
        for part in (self.source, self.sink):
            if part is not None and part.name != self.name:
                raise ValueError(f"{part.__name__}.name is {part.name!r}, not {self.name!r}")
        if self.webhook is not None and self.webhook.system != self.name:
            raise ValueError(f"{self.webhook.__name__}.system is not {self.name!r}")
