"""Each destination's note for one event, as that sink renders it (its template, or its
built-in note): the console shows them, and the sandbox's ``console`` sink keeps them instead
of posting them."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from config import Settings
from worker.events import Event
from worker.journey import JourneyContext
from worker.sink import NoteFormat, Sink

NoteKind = Literal["html", "text"]

# The console shows an HTML note in a sandboxed frame, and a frame cannot take its document's
# height without a script (the console runs none). So its height is estimated from the note,
# in the frame document's own pixels (16 px text, 18 px lines): a line per line-level element,
# a margin per block that has one (paragraphs, headings, lists), and a line more for every
# LINE_CHARS characters beyond what those lines hold; within MIN/MAX, so a long note scrolls.
_LINE = re.compile(r"<(?:li|br|tr|dt|dd|div|p|h[1-6]|pre)\b", re.IGNORECASE)
_MARGIN = re.compile(r"<(?:p|h[1-6]|ul|ol|dl|pre|blockquote|table|hr)\b", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
LINE_PX = 18
MARGIN_PX = 16
LINE_CHARS = 90
FRAME_MIN_PX = 96
FRAME_MAX_PX = 960


def frame_height_px(html: str) -> int:
    """How tall (px) the console's frame for this HTML note is: its whole text, up to a cap."""
    lines = len(_LINE.findall(html))
    lines = max(lines, len(_TAG.sub("", html).strip()) // LINE_CHARS)
    height = LINE_PX * lines + MARGIN_PX * (len(_MARGIN.findall(html)) + 2)
    return min(FRAME_MAX_PX, max(FRAME_MIN_PX, height))


class RenderedNote(BaseModel):
    sink: str
    title: str
    kind: NoteKind
    body: str
    template: str | None = None

    @property
    def frame_px(self) -> int:
        """The console frame's height for an HTML note (``frame_height_px``)."""
        return frame_height_px(self.body) if self.kind == "html" else 0


def kind_of(note_format: NoteFormat) -> NoteKind:
    """How the console shows a note: HTML in a sandboxed frame, anything else as text."""
    return "html" if note_format == "html" else "text"


def render_for(
    sink: Sink, event: Event, context: JourneyContext, template: str | None = None
) -> RenderedNote:
    note = sink.render_note(event, context, template)
    return RenderedNote(
        sink=sink.name,
        title=f"{sink.label} ({sink.note_format})",
        kind=kind_of(sink.note_format),
        body=note.body,
        template=note.template,
    )


def _renderer(cls: type[Sink], settings: Settings) -> Sink:
    # Rendering a note needs only the settings (templates); building the sink would build its
    # client, which needs that system's credentials, which sandbox mode refuses.
    sink = object.__new__(cls)
    sink.settings = settings
    return sink


def render_all(settings: Settings, event: Event, context: JourneyContext) -> list[RenderedNote]:
    """Every note-posting sink's note for the event (the console sink's own excepted)."""
    from worker.integrations import SINKS  # the registry imports the sandbox, which imports this

    return [
        render_for(_renderer(cls, settings), event, context)
        for cls in SINKS
        if cls.name != "console"
    ]
