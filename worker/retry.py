"""The retry policy: exponential backoff with full jitter, never sooner than the upstream
asked, never longer than a countdown may be (see ``Settings.max_countdown``)."""

from __future__ import annotations

import random

from config import Settings


def backoff_delay(
    attempt: int, base: float, cap: float, *, rng: random.Random | None = None
) -> float:
    """Full-jitter backoff for failure ``attempt`` (1-based): U(0, min(cap, base * 2^(n-1)))."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)


def retry_countdown(
    attempt: int, retry_after: float | None, settings: Settings, *, rng: random.Random | None = None
) -> float:
    """Seconds before the next attempt."""
    delay = backoff_delay(attempt, settings.retry_backoff_base, settings.retry_backoff_max, rng=rng)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.max_countdown)
