"""Text helpers every renderer shares: dates, numbers, one-line values and cutting to a size.

Pure functions, no markup: ``worker/formats.py`` escapes for HTML, Markdown and Slack mrkdwn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ELLIPSIS",
    "capped",
    "cut",
    "format_datetime",
    "iso_utc",
    "joined",
    "money",
    "number",
    "one_line",
    "percent",
    "usd",
]

ELLIPSIS = "…"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """``2026-11-22 10:00 UTC``; naive datetimes are taken to be UTC already."""
    return _utc(value).strftime("%Y-%m-%d %H:%M UTC")


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as CRM datetime properties take it."""
    return _utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def number(value: float, places: int = 2) -> str:
    """``72`` for 72.0, ``3.09`` for 3.09: no trailing zeros, no exponent."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def percent(fraction: float) -> str:
    return number(fraction * 100) + "%"


def usd(value: float) -> str:
    return f"{value:,.2f} USD"


def money(amount: float, currency: str | None) -> str:
    """``1,049.00 EUR``: an amount in major units with its ISO currency code (none: bare)."""
    text = f"{amount:,.2f}"
    return f"{text} {currency.upper()}" if currency else text


def one_line(value: Any) -> str:
    """Provider/user text on one line; non-strings (metadata) as compact JSON."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return " ".join(text.split())


def cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + ELLIPSIS


def capped(values: Sequence[str], limit: int | None) -> tuple[str, ...]:
    """At most ``limit`` values, with a "… N more" line standing in for the rest."""
    if limit is None or len(values) <= limit:
        return tuple(values)
    return (*values[:limit], f"{ELLIPSIS} {len(values) - limit} more")


def joined(*parts: str | None, sep: str = " ") -> str | None:
    text = sep.join(p for p in parts if p)
    return text or None
