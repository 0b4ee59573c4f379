"""Routing rules: parsing with errors that name the line and key, each condition, several
rules, no rule, and how ``plan`` uses them (the rule recorded per sink)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from config import ConfigError, load_settings
from worker.events import Event, Payment
from worker.journey import FirstTouch, Goal, JourneyContext, Location, PageVisit, Prediction
from worker.routing import FREE_MAIL_DOMAINS, Routes, RoutesError, load_routes, parse_routes
from worker.runtime import Runtime, build_runtime, load_routing
from worker.tasks import plan

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def event(**values: Any) -> Event:
    base: dict[str, Any] = {"id": "evt_1", "type": "signup", "visitor_id": VISITOR}
    return Event.model_validate(base | values)


def journey(**values: Any) -> JourneyContext:
    base: dict[str, Any] = {
        "provider": "datafast",
        "visitor_id": VISITOR,
        "first_touch": FirstTouch(
            referrer="https://www.news.ycombinator.com/item?id=1",
            utm_source="ProductHunt",
            utm_medium="social",
        ),
        "location": Location(country="France", country_code="FR"),
        "recent_pages": [PageVisit(url="https://shop.example/pricing/team?x=1")],
        "prediction": Prediction(score=80),
    }
    return JourneyContext.model_validate(base | values)


def rule(when: dict[str, Any], name: str = "r") -> Routes:
    return Routes((parse_routes_rule(name, when),))


def parse_routes_rule(name: str, when: dict[str, Any]) -> Any:
    import yaml

    text = yaml.safe_dump({"rules": [{"name": name, "when": when, "send_to": ["hubspot"]}]})
    return parse_routes(text).rules[0]


def matches(
    when: dict[str, Any], ev: Event | None = None, ctx: JourneyContext | None = None
) -> bool:
    return bool(rule(when).route(ev or event(), ctx or journey()))


# Each condition, holding and not ----------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "holds"),
    [
        ({"type": "signup"}, True),
        ({"type": ["payment", "support_ticket"]}, False),
        ({"inbound": "api"}, True),
        ({"inbound": ["intercom"]}, False),
        ({"score_at_least": 80}, True),
        ({"score_at_least": 80.5}, False),
        ({"score_below": 80.5}, True),
        ({"score_below": 80}, False),
        ({"country": "fr"}, True),
        ({"country": ["France"]}, True),
        ({"country": "DE"}, False),
        ({"utm_source": "producthunt"}, True),
        ({"utm_source": ["google", "bing"]}, False),
        ({"utm_medium": "SOCIAL"}, True),
        ({"utm_medium": "cpc"}, False),
        ({"referrer_domain": "ycombinator.com"}, True),
        ({"referrer_domain": "news.ycombinator.com"}, True),
        ({"referrer_domain": "combinator.com"}, False),
        ({"path_prefix": "/pricing"}, True),
        ({"path_prefix": ["/blog", "/docs"]}, False),
        ({"has_payment": False}, True),
        ({"has_payment": True}, False),
        ({"journey_found": True}, True),
    ],
)
def test_each_condition(when: dict[str, Any], holds: bool) -> None:
    assert matches(when) is holds


def test_email_domain_conditions_and_free_mail() -> None:
    work = event(email="ada@Acme.io")
    gmail = event(email="ada@gmail.com")
    none = event()
    assert matches({"email_domain_in": ["acme.io"]}, work)
    assert not matches({"email_domain_in": ["acme.io"]}, gmail)
    assert matches({"email_domain_not_in": ["gmail.com"]}, work)
    assert not matches({"email_domain_not_in": ["gmail.com"]}, gmail)
    assert not matches({"email_domain_not_in": ["gmail.com"]}, none)  # no email: not known
    assert matches({"free_mail": True}, gmail) and not matches({"free_mail": True}, work)
    assert matches({"free_mail": False}, work) and not matches({"free_mail": False}, gmail)
    assert {"gmail.com", "outlook.com", "yahoo.com", "proton.me"} <= FREE_MAIL_DOMAINS


def test_payments_from_the_journey_or_the_event() -> None:
    paid = journey(goals=[Goal(name="Pro plan", type="payment", at=datetime.now(UTC))])
    assert matches({"has_payment": True}, ctx=paid)
    purchase = event(type="payment", payment=Payment(amount=49, currency="usd"))
    assert matches({"has_payment": True}, purchase)


def test_no_score_matches_neither_score_condition() -> None:
    unscored = journey(prediction=None)
    assert not matches({"score_at_least": 0}, ctx=unscored)
    assert not matches({"score_below": 100}, ctx=unscored)


def test_several_rules_add_their_sinks_once_and_the_first_names_the_template() -> None:
    routes = parse_routes(
        """
rules:
  - name: every-signup
    when: {type: signup}
    send_to: [hubspot, {sink: zendesk, template: first.html.j2}]
  - name: hot
    when: {score_at_least: 70}
    send_to: [slack, {sink: zendesk, template: second.html.j2}]
  - name: never
    when: {country: JP}
    send_to: [rocketchat]
"""
    )
    routed = {r.sink: r for r in routes.route(event(), journey())}
    assert list(routed) == ["hubspot", "zendesk", "slack"]
    assert routed["zendesk"].rule == "every-signup"
    assert routed["zendesk"].template == "first.html.j2"
    assert routed["slack"].rule == "hot"
    assert routes.explain(event(), journey()) == {
        "every-signup": None,
        "hot": None,
        "never": "country",
    }
    assert routes.route(event(type="support_ticket", ticket_id="1"), journey(prediction=None)) == []


def test_an_empty_file_routes_nothing() -> None:
    assert parse_routes("").route(event(), journey()) == []
    assert parse_routes("rules: []").route(event(), journey()) == []


# Errors name the line and the key ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "rules:\n  - name: a\n    when:\n      scor_at_least: 70\n    send_to: [slack]\n",
            "line 4: rules.0.when.scor_at_least: unknown key",
        ),
        (
            "rules:\n  - name: a\n    when:\n      score_at_least: lots\n    send_to: [slack]\n",
            "line 4: rules.0.when.score_at_least:",
        ),
        (
            "rules:\n  - name: a\n    when: {type: webinar}\n    send_to: [slack]\n",
            "line 3: rules.0.when.type",
        ),
        ("rules:\n  - name: a\n    when: {}\n    send_to: []\n", "line 4: rules.0.send_to:"),
        ("rules:\n  - name: a\n    when: {}\n", "rules.0.send_to: Field required"),
        (
            "rules:\n  - name: a\n    send_to: [slack]\n  - name: a\n    send_to: [slack]\n",
            "line 4: rules.1.name: 'a' is used twice",
        ),
        (
            "rules:\n  - name: a\n    when: {path_prefix: pricing}\n    send_to: [slack]\n",
            "line 3: rules.0.when.path_prefix: 'pricing' must start with /",
        ),
        ("rules: [\n", "not valid YAML"),
        ("- just\n- a list\n", "line 1: the file must be a mapping"),
    ],
)
def test_errors_name_the_line_and_the_key(text: str, words: str) -> None:
    with pytest.raises(RoutesError) as caught:
        parse_routes(text, "routes.yaml")
    assert words in str(caught.value)
    assert str(caught.value).startswith("routes.yaml")
    assert isinstance(caught.value, ConfigError)


def test_unknown_and_unconfigured_sinks_are_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("rules:\n  - name: a\n    send_to: [hubspott]\n")
    settings = load_settings(_env_file=None, routes_file=str(path))
    with pytest.raises(RoutesError, match="unknown sink 'hubspott'; known sinks: hubspot"):
        load_routing(settings)
    path.write_text("rules:\n  - name: a\n    send_to: [slack]\n")
    with pytest.raises(RoutesError, match="sink 'slack' is not configured"):
        load_routing(settings)
    ok = settings.model_copy(update={"slack_webhook_url": "https://hooks.slack.invalid/x"})
    routes = load_routing(ok)
    assert routes is not None and [r.name for r in routes.rules] == ["a"]
    missing = settings.model_copy(update={"routes_file": str(tmp_path / "nope.yaml")})
    with pytest.raises(RoutesError, match="ROUTES_FILE: cannot read"):
        load_routing(missing)
    assert load_routes(None) is None


def test_a_template_named_by_a_rule_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "rules:\n  - name: a\n    send_to: [{sink: slack, template: nowhere.mrkdwn.j2}]\n"
    )
    settings = load_settings(
        _env_file=None, routes_file=str(path), slack_webhook_url="https://hooks.slack.invalid/x"
    )
    with pytest.raises(ConfigError, match=r"template 'nowhere\.mrkdwn\.j2' not found"):
        load_routing(settings)


# plan() with and without a routes file ----------------------------------------------------


@pytest.fixture
def runtime_for(tmp_path: Path, redis_client: redis.Redis, key_prefix: str) -> Iterator[Any]:
    runtimes: list[Runtime] = []

    def build(routes: str | None, templates_dir: Path | None = None) -> Runtime:
        values: dict[str, Any] = {
            "redis_key_prefix": key_prefix,
            "hubspot_token": "pat-x",
            "slack_webhook_url": "https://hooks.slack.invalid/x",
            "zendesk_base_url": "https://acme.zendesk.invalid",
            "zendesk_email": "a@acme.invalid",
            "zendesk_api_token": "z",
        }
        if templates_dir is not None:
            values["templates_dir"] = str(templates_dir)
        if routes is not None:
            path = tmp_path / "routes.yaml"
            path.write_text(routes)
            values["routes_file"] = str(path)
        rt = build_runtime(load_settings(_env_file=None, **values))
        runtimes.append(rt)
        return rt

    yield build
    for rt in runtimes:
        rt.redis.close()


def test_plan_without_routes_keeps_the_default_rule(runtime_for: Any) -> None:
    rt = runtime_for(None)
    planned, skipped = plan(rt, event(email="ada@acme.io"), journey())
    assert set(planned) == {"hubspot", "slack"}
    assert {r.rule for r in planned.values()} == {"default"}
    assert skipped == {"zendesk": "no ticket_id on the event"}
    cold = journey(prediction=Prediction(score=10))
    planned, skipped = plan(rt, event(email="ada@acme.io"), cold)
    assert set(planned) == {"hubspot"}
    assert skipped["slack"] == "score 10 below the alert threshold 70"


def test_plan_with_routes_records_the_rule_and_template(runtime_for: Any, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "vip.mrkdwn.j2").write_text("VIP {{ title }} {{ marker }}")
    rt = runtime_for(
        """
rules:
  - name: cold-signups
    when: {type: signup, score_below: 70}
    send_to: [hubspot]
  - name: hot-producthunt
    when: {type: signup, score_at_least: 70, utm_source: producthunt}
    send_to: [hubspot, {sink: slack, template: vip.mrkdwn.j2}]
""",
        templates,
    )
    assert rt.routes is not None
    hot = event(email="ada@acme.io")
    planned, skipped = plan(rt, hot, journey())
    assert planned["hubspot"].rule == "hot-producthunt"
    assert planned["slack"].rule == "hot-producthunt"
    assert planned["slack"].template == "vip.mrkdwn.j2"
    note = rt.sinks["slack"].render_note(hot, journey(), "vip.mrkdwn.j2")
    assert note.body == f"VIP Visitor journey from DataFast for ada@acme.io {hot.marker}"
    assert note.template == "vip.mrkdwn.j2" and note.warning is None
    assert skipped == {"zendesk": "no routing rule sends this event here"}
    cold = journey(prediction=Prediction(score=10))
    planned, skipped = plan(rt, hot, cold)
    assert list(planned) == ["hubspot"] and planned["hubspot"].rule == "cold-signups"
    assert skipped["slack"] == "no routing rule sends this event here"
    # A routed sink that cannot take the event says why, and names the rule.
    planned, skipped = plan(rt, event(), cold)
    assert "no email on the event" in skipped["hubspot"]
    assert "(rule 'cold-signups' sent it)" in skipped["hubspot"]
