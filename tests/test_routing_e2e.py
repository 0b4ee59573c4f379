"""Routing rules and templates through the real web and worker processes: cold signups go
only to HubSpot, hot ones from Product Hunt to Slack too; a custom Zendesk template for one
ticket; a broken template falls back to the built-in note with the reason in the status."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fakes import FakeUpstream, full_profile
from harness import REDIS_URL, TEST_SECRET, Service, cleanup_redis, new_prefix, new_queue

from worker.integrations.hubspot import HUBSPOT_PROPERTIES

pytestmark = pytest.mark.e2e

ROUTES = """\
rules:
  - name: cold-signups
    when: {type: signup, score_below: 70}
    send_to: [hubspot]
  - name: hot-producthunt
    when:
      type: signup
      score_at_least: 70
      utm_source: producthunt
    send_to: [hubspot, slack]
  - name: vip-tickets
    when: {type: support_ticket, email_domain_in: [vip.example]}
    send_to:
      - sink: zendesk
        template: vip.html.j2
  - name: broken-template-tickets
    when: {type: support_ticket, email_domain_in: [broken.example]}
    send_to:
      - sink: zendesk
        template: broken.html.j2
  - name: tickets
    when: {type: support_ticket}
    send_to: [zendesk]
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.define_contact_properties([str(p["name"]) for p in HUBSPOT_PROPERTIES])
        yield server


@pytest.fixture(scope="module")
def svc(
    fake: FakeUpstream, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    folder: Path = tmp_path_factory.mktemp("routing")
    (folder / "routes.yaml").write_text(ROUTES)
    templates = folder / "templates"
    templates.mkdir()
    (templates / "vip.html.j2").write_text(
        "<p><strong>VIP</strong> came from {{ first_touch }} after "
        "{{ journey.visit_count }} visits</p><p><small>{{ marker }}</small></p>"
    )
    # Compiles, fails when rendered: the fallback path.
    (templates / "broken.html.j2").write_text("<p>{{ journey.no_such_field }}</p>{{ marker }}")
    client = redis.Redis.from_url(redis_server)
    prefix, queue = new_prefix(), new_queue()
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "WEBHOOK_SECRET": TEST_SECRET,
        **fake.env(),
        "ROUTES_FILE": str(folder / "routes.yaml"),
        "TEMPLATES_DIR": str(templates),
        "LOG_LEVEL": "INFO",
    }
    service = Service(env, folder, workers=1, redis_client=client)
    try:
        with service:
            yield service
    finally:
        cleanup_redis(client, prefix, queue)
        client.close()


def send(svc: Service, payload: dict[str, Any]) -> dict[str, Any]:
    event_id = f"evt_{uuid.uuid4().hex[:16]}"
    response = svc.send_event(payload, event_id=event_id)
    assert response.status_code == 202, response.text
    return svc.wait_for_state(event_id, {"delivered", "partially_delivered", "failed", "dead"})


def visitor(fake: FakeUpstream, *, score: float, utm_source: str) -> str:
    return fake.add_visitor(full_profile(score=score, utm_source=utm_source))


def test_cold_signups_go_only_to_hubspot_and_hot_producthunt_ones_to_slack_too(
    svc: Service, fake: FakeUpstream
) -> None:
    cold = visitor(fake, score=20, utm_source="producthunt")
    hot = visitor(fake, score=90, utm_source="producthunt")
    hot_elsewhere = visitor(fake, score=90, utm_source="google")
    cold_email, hot_email = "cold@acme.example", "hot@acme.example"

    cold_status = send(svc, {"type": "signup", "datafast_visitor_id": cold, "email": cold_email})
    hot_status = send(svc, {"type": "signup", "datafast_visitor_id": hot, "email": hot_email})
    other_status = send(
        svc, {"type": "signup", "datafast_visitor_id": hot_elsewhere, "email": "x@acme.example"}
    )

    assert cold_status["state"] == "delivered"
    sinks = cold_status["sinks"]
    assert sinks["hubspot"]["state"] == "delivered"
    assert sinks["hubspot"]["rule"] == "cold-signups"
    assert sinks["slack"] == {**sinks["slack"], "state": "skipped"}
    assert sinks["slack"]["reason"] == "no routing rule sends this event here"
    assert fake.slack_messages(contains=cold) == []

    assert hot_status["state"] == "delivered"
    assert hot_status["sinks"]["hubspot"]["rule"] == "hot-producthunt"
    assert hot_status["sinks"]["slack"]["rule"] == "hot-producthunt"
    assert hot_status["sinks"]["slack"]["state"] == "delivered"
    assert len(fake.slack_messages(contains=hot)) == 1

    # Hot, but not from Product Hunt: no rule sends it to Slack, and none to HubSpot either.
    assert other_status["sinks"]["slack"]["state"] == "skipped"
    assert other_status["sinks"]["hubspot"]["state"] == "skipped"
    assert fake.slack_messages(contains=hot_elsewhere) == []
    assert len(fake.hubspot_notes(contains=cold)) == 1
    assert len(fake.hubspot_notes(contains=hot)) == 1


def _text(comment: dict[str, Any]) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", comment["html_body"]))


def test_a_custom_template_for_one_ticket_and_the_built_in_note_for_others(
    svc: Service, fake: FakeUpstream
) -> None:
    vid = visitor(fake, score=50, utm_source="newsletter")
    fake.add_ticket("7001")
    fake.add_ticket("7002")
    vip = send(
        svc,
        {
            "type": "support_ticket",
            "datafast_visitor_id": vid,
            "email": "boss@vip.example",
            "ticket_id": "7001",
        },
    )
    plain = send(
        svc,
        {
            "type": "support_ticket",
            "datafast_visitor_id": vid,
            "email": "someone@acme.example",
            "ticket_id": "7002",
        },
    )
    assert vip["state"] == "delivered" and plain["state"] == "delivered"
    assert vip["sinks"]["zendesk"]["rule"] == "vip-tickets"
    assert vip["sinks"]["zendesk"]["template"] == "vip.html.j2"
    (vip_comment,) = fake.zendesk_comments("7001")
    assert " ".join(_text(vip_comment).split()).startswith(
        "VIP came from newsletter / social / black-friday after 17 visits"
    )
    assert vip_comment["public"] is False
    (plain_comment,) = fake.zendesk_comments("7002")
    assert "Visitor journey from DataFast" in _text(plain_comment)
    assert plain["sinks"]["zendesk"]["rule"] == "tickets"


def test_a_broken_template_falls_back_and_says_why(svc: Service, fake: FakeUpstream) -> None:
    vid = visitor(fake, score=50, utm_source="newsletter")
    fake.add_ticket("7003")
    status = send(
        svc,
        {
            "type": "support_ticket",
            "datafast_visitor_id": vid,
            "email": "x@broken.example",
            "ticket_id": "7003",
        },
    )
    assert status["state"] == "delivered"
    record = status["sinks"]["zendesk"]
    assert record["rule"] == "broken-template-tickets"
    assert record["warning"].startswith("template broken.html.j2 failed: UndefinedError")
    assert "the built-in note was posted instead" in record["warning"]
    failed = [s for s in status["steps"] if s["step"] == "template_failed"]
    assert len(failed) == 1 and failed[0]["sink"] == "zendesk"
    (comment,) = fake.zendesk_comments("7003")
    assert "Visitor journey from DataFast" in _text(comment)
