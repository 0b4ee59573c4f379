"""Each destination's note for one event, as that sink renders it (its template, or its
built-in note): the console shows them, and the sandbox's ``console`` sink keeps them instead
of posting them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from config import Settings
from worker.events import Event
from worker.journey import JourneyContext
from worker.sink import NoteFormat, Sink

NoteKind = Literal["html", "text"]


class RenderedNote(BaseModel):
    sink: str
    title: str
    kind: NoteKind
    body: str
    template: str | None = None


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
