"""Escaping for each markup a note is written in: HTML, Markdown, Slack mrkdwn.

Provider- and user-supplied text always goes through one of these before it reaches a
destination (the templates of ``worker/templates.py`` and the integrations' own payloads).
Pure functions, no I/O. Nothing here imports an integration.
"""

from __future__ import annotations

import html
import re

from worker.text import ELLIPSIS

__all__ = [
    "cap_mrkdwn",
    "escape_html",
    "escape_markdown",
    "escape_mrkdwn",
    "markdown_code",
]


# --------------------------------------------------------------------------- HTML


def escape_html(text: str) -> str:
    """Escape text for HTML content and attribute values."""
    return html.escape(text, quote=True)


# --------------------------------------------------------------------------- Slack mrkdwn


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cap_mrkdwn(text: str, limit: int) -> str:
    """Cut escaped mrkdwn to ``limit`` without splitting an ``&amp;``-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(len(cut) - 5, 0))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + ELLIPSIS


# --------------------------------------------------------------------------- Markdown

# The characters that make inline Markdown syntax (emphasis, code, links, HTML, strikethrough).
# Line-start syntax (#, -, 1.) cannot occur: every value is on one line after a prefix.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>~])")


def escape_markdown(text: str) -> str:
    """Escape provider/user text so a Markdown renderer shows it literally."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def markdown_code(text: str) -> str:
    """A code span: the text stays verbatim in the source and the rendered note (a marker a
    sink searches for)."""
    return f"`{text}`" if "`" not in text else escape_markdown(text)
