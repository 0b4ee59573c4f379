"""Note templates: the built-in ones, overrides by file name, the sandbox, compile errors at
start-up and the fallback to the built-in note when a user's template fails while rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from harness import REDIS_URL

from config import ConfigError, load_settings
from worker.events import Event
from worker.integrations.hubspot import HubSpotSink
from worker.integrations.slack import SlackSink
from worker.integrations.zendesk import ZendeskSink
from worker.journey import FirstTouch, JourneyContext, PageVisit, Prediction
from worker.ratelimit import SharedRateLimiter
from worker.runtime import load_routing
from worker.sink import Sink
from worker.templates import NoteTemplates, TemplateFailed, TemplatesError, render_html

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
EVENT = Event(
    id="evt_t1", type="support_ticket", visitor_id=VISITOR, email="ada@acme.io", ticket_id="7"
)
JOURNEY = JourneyContext(
    provider="datafast",
    visitor_id=VISITOR,
    first_touch=FirstTouch(utm_source="producthunt", referrer="https://producthunt.com/"),
    visit_count=3,
    recent_pages=[PageVisit(url="https://shop.example/pricing")],
    prediction=Prediction(score=81),
)


# Rendering sends no request: the limiter's client never connects.
LIMITER = SharedRateLimiter(redis.Redis.from_url(REDIS_URL), "test-templates:")


def sink(cls: type[Sink], templates_dir: Path | None) -> Sink:
    values: dict[str, Any] = {
        "zendesk_base_url": "https://acme.zendesk.invalid",
        "zendesk_email": "a@acme.invalid",
        "zendesk_api_token": "z",
        "hubspot_token": "pat-x",
        "slack_webhook_url": "https://hooks.slack.invalid/x",
    }
    if templates_dir is not None:
        values["templates_dir"] = str(templates_dir)
    settings = load_settings(_env_file=None, **values)
    return cls(settings, LIMITER)


def test_built_in_notes_are_the_templates(tmp_path: Path) -> None:
    note = sink(ZendeskSink, None).render_note(EVENT, JOURNEY)
    assert note.template is None and note.warning is None
    assert note.body == render_html(EVENT, JOURNEY)
    assert "<li><strong>UTM source:</strong> producthunt</li>" in note.body
    assert note.body.endswith(f"<p><small>{EVENT.marker}</small></p>")


def test_a_sink_template_overrides_that_sink_only(tmp_path: Path) -> None:
    (tmp_path / "zendesk.html.j2").write_text(
        "<p>Came from {{ first_touch }}, score {{ score|int }}</p><p>{{ marker }}</p>"
    )
    zendesk = sink(ZendeskSink, tmp_path).render_note(EVENT, JOURNEY)
    assert zendesk.body == f"<p>Came from producthunt, score 81</p><p>{EVENT.marker}</p>"
    assert zendesk.template == "zendesk.html.j2"
    hubspot = sink(HubSpotSink, tmp_path).render_note(EVENT, JOURNEY)
    assert hubspot.template is None and "UTM source" in hubspot.body


def test_note_html_overrides_every_html_sink(tmp_path: Path) -> None:
    (tmp_path / "note.html.j2").write_text("<b>{{ title }}</b> {{ marker }}")
    for cls in (ZendeskSink, HubSpotSink):
        note = sink(cls, tmp_path).render_note(EVENT, JOURNEY)
        assert note.body.startswith("<b>Visitor journey from DataFast for ada@acme.io</b>")


def test_html_templates_escape_values(tmp_path: Path) -> None:
    (tmp_path / "zendesk.html.j2").write_text("<p>{{ event.name }}</p>{{ marker }}")
    evil = EVENT.model_copy(update={"name": "<script>alert(1)</script>"})
    note = sink(ZendeskSink, tmp_path).render_note(evil, JOURNEY)
    assert "<script>" not in note.body and "&lt;script&gt;" in note.body


def test_a_rule_may_name_any_template(tmp_path: Path) -> None:
    (tmp_path / "short.html.j2").write_text("<p>{{ journey.visit_count }} visits</p>{{ marker }}")
    note = sink(ZendeskSink, tmp_path).render_note(EVENT, JOURNEY, "short.html.j2")
    assert note.body == f"<p>3 visits</p>{EVENT.marker}" and note.template == "short.html.j2"


def test_a_user_template_replaces_the_slack_blocks_text(tmp_path: Path) -> None:
    slack = sink(SlackSink, tmp_path)
    assert slack.render_note(EVENT, JOURNEY).template is None  # Block Kit, built in code
    (tmp_path / "slack.mrkdwn.j2").write_text("*{{ title }}* {{ marker }}")
    note = slack.render_note(EVENT, JOURNEY)
    assert note.template == "slack.mrkdwn.j2" and note.body.startswith("*Visitor journey")


@pytest.mark.parametrize(
    "attack",
    [
        "{{ event.__class__.__mro__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ journey.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set x = sections.append(1) %}{{ x }}",
        "{{ event.model_config.update({'frozen': False}) }}",
    ],
)
def test_sandbox_escapes_fail_and_fall_back(tmp_path: Path, attack: str) -> None:
    (tmp_path / "zendesk.html.j2").write_text(attack)
    note = sink(ZendeskSink, tmp_path).render_note(EVENT, JOURNEY)
    assert note.template is None
    assert note.warning is not None and note.warning.startswith("template zendesk.html.j2 failed")
    assert "the built-in note was posted instead" in note.warning
    assert note.body == render_html(EVENT, JOURNEY)


def test_undefined_values_fail_instead_of_printing_nothing(tmp_path: Path) -> None:
    (tmp_path / "zendesk.html.j2").write_text("{{ journey.no_such_field }}")
    note = sink(ZendeskSink, tmp_path).render_note(EVENT, JOURNEY)
    assert note.warning is not None and "UndefinedError" in note.warning


def test_render_raises_template_failed(tmp_path: Path) -> None:
    (tmp_path / "bad.txt.j2").write_text("{{ 1 / 0 }}")
    with pytest.raises(TemplateFailed, match="ZeroDivisionError"):
        NoteTemplates(str(tmp_path)).render("bad.txt.j2", EVENT, JOURNEY)


def test_syntax_errors_stop_start_up_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "zendesk.html.j2").write_text("<p>\n{% if found %}\n{{ title }\n")
    with pytest.raises(TemplatesError) as caught:
        NoteTemplates(str(tmp_path)).check()
    assert "zendesk.html.j2, line 3" in str(caught.value)
    settings = load_settings(_env_file=None, templates_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"zendesk\.html\.j2, line 3"):
        load_routing(settings)


def test_templates_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(TemplatesError, match="is not a directory"):
        NoteTemplates(str(tmp_path / "missing")).check()
    (tmp_path / "a.html.j2").write_text("ok")
    assert NoteTemplates(str(tmp_path)).check() == ["a.html.j2"]
