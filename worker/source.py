"""What every analytics source offers: fetch one visitor's journey."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from config import Settings
from worker.errors import BadResponse
from worker.http import ServiceClient, UpstreamResponse
from worker.journey import JourneyContext, RealtimeSnapshot
from worker.ratelimit import SharedRateLimiter


class Source(ABC):
    """An analytics provider that knows visitors by the id in the ``datafast_visitor_id``
    cookie (or its own id) and can say where they came from and what they did."""

    name: ClassVar[str]
    label: ClassVar[str]
    # Whether the provider's visitor ids are UUIDs (checked at the door, 400 otherwise).
    requires_uuid: ClassVar[bool] = False
    # Whether ``fetch_realtime`` lists the visitors on the site now (realtime alerts).
    has_realtime: ClassVar[bool] = False

    def __init__(self, settings: Settings, limiter: SharedRateLimiter) -> None:
        self.settings = settings
        self.http = self.build_client(settings, limiter)

    @classmethod
    @abstractmethod
    def configured(cls, settings: Settings) -> bool:
        """Whether the settings hold what this source needs."""

    @abstractmethod
    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient: ...

    @abstractmethod
    def fetch_journey(self, visitor_id: str, website: str | None = None) -> JourneyContext:
        """The visitor's journey; raises ``worker.errors`` types on failure. ``website`` names
        one of several websites (``DATAFAST_WEBSITES``) where the source has them."""

    def fetch_realtime(self) -> RealtimeSnapshot:
        """The visitors on the site now; only sources with ``has_realtime`` implement it."""
        raise NotImplementedError(f"{self.label} has no realtime feed")

    def identity_parts(self, website: str | None = None) -> tuple[str, ...]:
        """What picks the account or website this source reads for ``website`` (its
        credentials, a website id): two sources with different parts see different visitors."""
        return ()

    def cache_identity(self, website: str | None = None) -> str:
        """A short digest of the provider, its base URL and ``identity_parts``: the part of a
        cached profile's key (worker/profiles.py) that keeps websites apart without putting a
        credential into a key."""
        parts = (self.name, self.http.base_url, *self.identity_parts(website))
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]

    def check(self) -> str:
        """A cheap reachability check for ``visitor-enrich check``; raises on failure."""
        return f"{self.label} configured at {self.http.base_url}"


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_envelope(response: UpstreamResponse, model: type[ModelT]) -> ModelT:
    """Parse a ``{"status":"success","data":{...}}`` body into ``model`` or raise BadResponse.

    Both DataFast and PostMetric answer in this envelope; a 200 whose body is anything else is
    a broken or impostor upstream, and retrying would not change it.
    """
    body: Any = response.json()
    if not isinstance(body, dict) or body.get("status") != "success":
        raise BadResponse(
            "answered 200 without the documented success envelope",
            service=response.service,
            status_code=response.status_code,
        )
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadResponse(
            "answered 200 with no data object",
            service=response.service,
            status_code=response.status_code,
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadResponse(
            f"answered 200 with data that does not match the documented fields "
            f"({where}: {first['msg']})",
            service=response.service,
            status_code=response.status_code,
        ) from None
