"""Analytics providers, one module each. ``SOURCES`` maps the ``SOURCE`` setting to a class."""

from __future__ import annotations

from config import Settings
from worker.ratelimit import SharedRateLimiter
from worker.sources.base import Source
from worker.sources.datafast import DataFastSource
from worker.sources.postmetric import PostMetricSource

SOURCES: dict[str, type[Source]] = {
    DataFastSource.name: DataFastSource,
    PostMetricSource.name: PostMetricSource,
}


def build_source(settings: Settings, limiter: SharedRateLimiter) -> Source:
    return SOURCES[settings.source](settings, limiter)


__all__ = ["SOURCES", "DataFastSource", "PostMetricSource", "Source", "build_source"]
