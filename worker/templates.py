"""Note templates: every note body is a Jinja2 template that users may override.

The built-in templates live in ``worker/note_templates/``: ``note.html.j2``, ``note.md.j2``,
``note.txt.j2`` (the HTML, Markdown and plain-text notes) and a few sinks' own
(``rocketchat.txt.j2``). A sink's template is the first of ``{sink}.{ext}.j2`` and
``note.{ext}.j2`` found in ``TEMPLATES_DIR`` and then among the built-in ones, so a file in
``TEMPLATES_DIR`` overrides one sink (``zendesk.html.j2``) or every note of a markup
(``note.html.j2``); a routing rule may name any template file for one sink.

Templates run in Jinja2's immutable sandbox (no attribute that reaches Python internals, no
changing the context); ``.html.j2`` templates are autoescaped. Every template in
``TEMPLATES_DIR`` is compiled at start-up (``check``), so a syntax error stops the process with
the file and line; an error while rendering is raised as ``TemplateFailed`` and the sink posts
its built-in note instead, with the reason in the event status.

What a template sees: ``event`` (type, email, name, ticket_id, payment...), ``journey`` (the
``JourneyContext``), ``found``, ``title``, ``not_found`` (the "no journey" sentence),
``sections`` (titled facts and items, as every built-in note shows them), ``marker`` (must stay
in the note: it is how a restarted task finds it), ``score`` and ``first_touch``; filters
``md`` (escape Markdown), ``md_code`` (a code span) and ``datetime``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from config import ConfigError
from worker.events import Event
from worker.formats import escape_markdown, markdown_code
from worker.journey import JourneyContext
from worker.note import FULL, Limits, not_found_text, note_sections, title
from worker.text import format_datetime

__all__ = [
    "BUILTIN_DIR",
    "NoteTemplates",
    "TemplateFailed",
    "TemplatesError",
    "builtin_templates",
    "extension",
    "note_templates",
    "render_html",
    "render_markdown",
    "render_text",
]

BUILTIN_DIR = Path(__file__).resolve().parent / "note_templates"
_EXTENSIONS = {"html": "html", "markdown": "md", "text": "txt", "mrkdwn": "mrkdwn"}


class TemplatesError(ConfigError):
    """A template in ``TEMPLATES_DIR`` does not compile (start-up); names file and line."""


class TemplateFailed(Exception):
    """Rendering a template failed; the sink falls back to its built-in note."""


def extension(note_format: str) -> str:
    return _EXTENSIONS.get(note_format, note_format)


def _escape_markdown(value: Any) -> str:
    return escape_markdown(str(value))


def _markdown_code(value: Any) -> str:
    return markdown_code(str(value))


class NoteTemplates:
    """The templates of one ``TEMPLATES_DIR`` (or none) over the built-in ones."""

    def __init__(self, templates_dir: str | None = None) -> None:
        self.user_dir = Path(templates_dir) if templates_dir else None
        loaders: list[jinja2.BaseLoader] = []
        if self.user_dir is not None:
            loaders.append(jinja2.FileSystemLoader(self.user_dir))
        loaders.append(jinja2.FileSystemLoader(BUILTIN_DIR))
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html", "html.j2"), default_for_string=False
            ),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self.env.filters["md"] = _escape_markdown
        self.env.filters["md_code"] = _markdown_code
        self.env.filters["datetime"] = format_datetime

    def check(self) -> list[str]:
        """Compile every template in ``TEMPLATES_DIR``; ``TemplatesError`` on the first that
        does not. Returns the names checked."""
        if self.user_dir is None:
            return []
        if not self.user_dir.is_dir():
            raise TemplatesError(f"TEMPLATES_DIR: {self.user_dir} is not a directory")
        names = sorted(p.name for p in self.user_dir.iterdir() if p.suffix == ".j2")
        for name in names:
            self.compile(name)
        return names

    def compile(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplatesError(
                f"template {exc.filename or name}, line {exc.lineno}: {exc.message}"
            ) from None
        except jinja2.TemplateNotFound:
            where = f"TEMPLATES_DIR ({self.user_dir})" if self.user_dir else "the built-in ones"
            raise TemplatesError(f"template {name!r} not found in {where}") from None

    def exists(self, name: str) -> bool:
        try:
            self.env.get_template(name)
        except jinja2.TemplateNotFound:
            return False
        except jinja2.TemplateSyntaxError:
            return True
        return True

    def overridden(self, name: str) -> bool:
        return self.user_dir is not None and (self.user_dir / name).is_file()

    def template_for(self, sink: str, note_format: str) -> str | None:
        """The template a sink uses by default: ``{sink}.{ext}.j2`` or ``note.{ext}.j2``,
        from ``TEMPLATES_DIR`` first; None when neither exists (the sink builds its note in
        code, as Slack's Block Kit message)."""
        ext = extension(note_format)
        for name in (f"{sink}.{ext}.j2", f"note.{ext}.j2"):
            if self.exists(name):
                return name
        return None

    def render(
        self, name: str, event: Event, context: JourneyContext, limits: Limits = FULL
    ) -> str:
        """Render template ``name``; ``TemplateFailed`` when it cannot be."""
        template = self.compile(name)
        values = template_context(event, context, limits)
        try:
            return template.render(values)
        except Exception as exc:
            raise TemplateFailed(f"template {name} failed: {type(exc).__name__}: {exc}") from None


def template_context(
    event: Event, context: JourneyContext, limits: Limits = FULL
) -> dict[str, Any]:
    """What every note template sees (see the module docstring)."""
    return {
        "event": event,
        "journey": context,
        "found": context.found,
        "title": title(event, context),
        "not_found": not_found_text(context) if not context.found else "",
        # A journey not found still has the event's own sections (what a payment bought).
        "sections": note_sections(event, context, limits),
        "marker": event.marker,
        "score": context.score,
        "first_touch": context.first_touch.label,
    }


@functools.cache
def builtin_templates() -> NoteTemplates:
    """The built-in templates alone (pure renderers in ``worker/formats.py`` use them)."""
    return NoteTemplates(None)


@functools.cache
def note_templates(templates_dir: str | None) -> NoteTemplates:
    """The process's templates for a ``TEMPLATES_DIR``, built once."""
    return NoteTemplates(templates_dir)


# The built-in notes as pure functions --------------------------------------------------------


def render_html(event: Event, context: JourneyContext, limits: Limits = FULL) -> str:
    """The built-in HTML note (``note.html.j2``): helpdesk and CRM note bodies."""
    return builtin_templates().render("note.html.j2", event, context, limits)


def render_markdown(event: Event, context: JourneyContext, limits: Limits = FULL) -> str:
    """The built-in Markdown note (``note.md.j2``)."""
    return builtin_templates().render("note.md.j2", event, context, limits)


def render_text(event: Event, context: JourneyContext, limits: Limits = FULL) -> str:
    """The built-in plain-text note (``note.txt.j2``): the CLI and plain-text sinks."""
    return builtin_templates().render("note.txt.j2", event, context, limits)
