"""The visitor-enrich command line against the fake upstreams and the real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from crm_fakes import CrmFake
from fakes import FakeUpstream, full_profile, running_fake

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with running_fake() as upstream:
        yield upstream


@pytest.fixture
def env(fake: FakeUpstream) -> Iterator[dict[str, str]]:
    from config.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    prefix = f"test-cli-{uuid.uuid4().hex[:8]}:"
    base = {k: v for k, v in os.environ.items() if k.upper() not in names}
    yield {**base, **fake.env(), "REDIS_KEY_PREFIX": prefix, "CELERY_QUEUE": prefix + "q"}
    client = redis.Redis()
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "visitor-enrich"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_each_configured_system(env: dict[str, str]) -> None:
    result = run(env, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("settings", "redis", "source DataFast", "sink hubspot", "sink zendesk"):
        assert f"ok    {name}" in result.stdout


def test_check_fails_with_a_bad_key_and_names_the_variable(env: dict[str, str]) -> None:
    result = run({**env, "DATAFAST_API_KEY": "sk_wrong"}, "check")
    assert result.returncode == 2
    assert "DATAFAST_API_KEY" in result.stderr
    assert "sk_wrong" not in result.stderr + result.stdout


def test_check_reports_an_unreachable_api(env: dict[str, str], fake: FakeUpstream) -> None:
    result = run({**env, "DATAFAST_API_KEY": "df_not_the_right_key"}, "check")
    assert result.returncode == 1
    assert "FAIL  source DataFast" in result.stdout and "401" in result.stdout


def test_enrich_dry_run_prints_the_journey_and_posts_nothing(
    env: dict[str, str], fake: FakeUpstream
) -> None:
    visitor = fake.add_visitor(full_profile())
    result = run(env, "enrich", visitor, "--email", "ada@example.com", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert visitor in result.stdout and "would post to hubspot" in result.stdout
    assert fake.requests_to("hubspot") == [] and fake.slack_messages() == []


def test_enrich_posts_to_the_sinks(env: dict[str, str], fake: FakeUpstream) -> None:
    visitor = fake.add_visitor(full_profile())
    fake.add_ticket("4242")
    result = run(env, "enrich", visitor, "--type", "support_ticket", "--ticket-id", "4242")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    zendesk" in result.stdout
    assert len(fake.zendesk_comments("4242")) == 1


def test_hubspot_setup_creates_properties_once(env: dict[str, str], fake: FakeUpstream) -> None:
    first = run(env, "hubspot-setup")
    assert first.returncode == 0, first.stderr
    assert "contacts.ve_visitor_id" in first.stdout and "notes.ve_event_id" in first.stdout
    assert "ve_visitor_id" in fake.contact_properties
    second = run(env, "hubspot-setup")
    assert second.returncode == 0
    assert "ve_visitor_id" not in second.stdout.replace("all properties exist already", "")


def test_crm_setup_commands_create_the_journey_fields_once(env: dict[str, str]) -> None:
    assert run(env, "attio-setup").returncode == 2  # no ATTIO_API_KEY: says so
    with CrmFake() as crm:
        crm_env = {**env, **crm.env()}
        for command, created in (
            ("attio-setup", "ve_first_touch"),
            ("pipedrive-setup", "VE First touch"),
            ("salesforce-setup", "Lead.VE_First_Touch__c"),
        ):
            first = run(crm_env, command)
            assert first.returncode == 0, first.stdout + first.stderr
            assert first.stdout.startswith("created: ") and created in first.stdout
            second = run(crm_env, command)
            assert second.returncode == 0, second.stdout + second.stderr
            assert "all journey fields exist already" in second.stdout
        assert "field-level security" in first.stdout  # Salesforce: what is left to do
        crm.grant_salesforce_fields()
        check = run(crm_env, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    for sink in ("attio", "pipedrive", "salesforce"):
        (line,) = [x for x in check.stdout.splitlines() if x.startswith(f"ok    sink {sink}")]
        assert "all 15 journey fields exist" in line, line
    assert crm_env["ATTIO_API_KEY"] not in check.stdout + check.stderr


def test_dead_letters_list_show_and_purge(env: dict[str, str]) -> None:
    from worker.store import EventStore

    store = EventStore(redis.Redis(), env["REDIS_KEY_PREFIX"], 3600)
    store.add_dead_letter("evt_dead_1", "zendesk", "zendesk: 503 down (after 6 attempts)", 6)
    listed = run(env, "dead", "list")
    assert "evt_dead_1:zendesk" in listed.stdout and "503 down" in listed.stdout
    shown = run(env, "dead", "show", "evt_dead_1:zendesk")
    assert shown.returncode == 0 and '"sink": "zendesk"' in shown.stdout
    missing = run(env, "dead", "show", "nope")
    assert missing.returncode == 1
    assert run(env, "dead", "replay").returncode == 2  # neither an id nor --all
    purged = run(env, "dead", "purge", "--yes")
    assert "purged 1" in purged.stdout
    assert "no dead letters" in run(env, "dead", "list").stdout


def test_render_prints_the_note_and_posts_nothing(env: dict[str, str], fake: FakeUpstream) -> None:
    visitor = fake.add_visitor(full_profile())
    result = run(env, "render", visitor, "--sink", "zendesk", "--type", "support_ticket")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<p><strong>Visitor journey from DataFast")
    assert "# Zendesk, template built in" in result.stderr
    assert fake.requests_to("zendesk") == [] and fake.requests_to("hubspot") == []


def test_render_with_a_template_file(
    env: dict[str, str], fake: FakeUpstream, tmp_path: Path
) -> None:
    visitor = fake.add_visitor(full_profile())
    mine = tmp_path / "mine.html.j2"
    mine.write_text("<p>{{ journey.visit_count }} visits from {{ first_touch }}</p>{{ marker }}")
    result = run(env, "render", visitor, "--sink", "zendesk", "--template", str(mine))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<p>") and " visits from " in result.stdout
    broken = tmp_path / "broken.html.j2"
    broken.write_text("{{ journey.nothing_here }}")
    failed = run(env, "render", visitor, "--sink", "zendesk", "--template", str(broken))
    assert failed.returncode == 1
    assert "warning: template broken.html.j2 failed" in failed.stderr
    assert failed.stdout.startswith("<p><strong>Visitor journey")  # the built-in note
    unknown = run(env, "render", visitor, "--sink", "zendesk-typo")
    assert unknown.returncode == 2 and "unknown sink 'zendesk-typo'" in unknown.stderr


def test_check_reports_routes_and_refuses_a_bad_file(env: dict[str, str], tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("rules:\n  - name: all\n    send_to: [hubspot, zendesk]\n")
    result = run({**env, "ROUTES_FILE": str(routes)}, "check")
    assert f"ok    routes {routes}: 1 rules (all)" in result.stdout, result.stdout + result.stderr
    routes.write_text("rules:\n  - name: all\n    when: {score: 3}\n    send_to: [hubspot]\n")
    bad = run({**env, "ROUTES_FILE": str(routes)}, "check")
    assert bad.returncode == 2
    assert f"{routes}: line 3: rules.0.when.score: unknown key" in bad.stderr


def test_check_lists_the_sales_webhooks_and_the_outbound_one(
    env: dict[str, str], fake: FakeUpstream
) -> None:
    from sales_support import CLERK_SECRET, OUTBOUND_SECRET, STRIPE_SECRET

    sales = {
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "CLERK_WEBHOOK_SECRET": CLERK_SECRET,
        "HUBSPOT_APP_SECRET": "hubspot-client-secret",
        "OUTBOUND_WEBHOOK_URL": fake.base_url("webhook"),
        "OUTBOUND_WEBHOOK_SECRET": OUTBOUND_SECRET,
    }
    result = run({**env, **sales}, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("webhook stripe", "webhook clerk", "webhook hubspot", "sink webhook"):
        assert f"ok    {name}" in result.stdout
    assert "/v1/webhooks/stripe" in result.stdout
    assert fake.webhook_deliveries() == []  # check does not POST to the receiver
    for name, secret in sales.items():
        assert name.endswith("_URL") or secret not in result.stdout
    # The HubSpot webhook's events need the token for their lookup.
    without = run({**env, **sales, "HUBSPOT_TOKEN": ""}, "check")
    assert without.returncode == 1
    assert "FAIL  webhook hubspot: HUBSPOT_TOKEN is not set" in without.stdout
