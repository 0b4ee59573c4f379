"""Sandbox mode and the first run: the sample source, the console sink, ``visitor-enrich init``
and ``visitor-enrich send`` against the real web process and worker."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from harness import TEST_SECRET, Service
from operator_support import running_service

from config import ConfigError, Rate, load_settings
from worker.errors import Rejected
from worker.events import Event
from worker.firstrun import first_run_env, write_first_run_env
from worker.integrations import SINKS
from worker.integrations.console import ConsoleSink
from worker.integrations.datafast import DataFastSource
from worker.ratelimit import SharedRateLimiter
from worker.sandbox import SandboxRequestRefused, sample_profile, sandbox_client
from worker.sink import Note
from worker.store import EventStore

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def test_sandbox_is_refused_with_a_real_provider_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(sandbox=True, datafast_api_key="df_live", hubspot_token="pat-1")
    message = str(caught.value)
    assert "SANDBOX" in message and "DATAFAST_API_KEY" in message and "HUBSPOT_TOKEN" in message
    assert "df_live" not in message
    assert load_settings(sandbox=True).sandbox is True


# Secrets that only check what others send us (or reach no provider): sandbox keeps them.
INBOUND_OR_OWN_SECRETS = {
    "webhook_secret",
    "rocketchat_webhook_token",
    "zendesk_webhook_secret",
    "intercom_client_secret",
    "helpscout_webhook_secret",
    "freshdesk_webhook_token",
    "crisp_webhook_key",
    "plain_webhook_secret",
    "stripe_webhook_secret",
    "clerk_webhook_secret",
    "hubspot_app_secret",
    "outbound_webhook_secret",
    "sentry_dsn",
    "console_password",
    "metrics_token",
    "api_token",
}


def test_every_outbound_secret_is_refused_in_sandbox_mode() -> None:
    # A new system's credential must be placed: refused in sandbox mode, or listed above.
    from config.settings import SANDBOX_REFUSES, Settings

    secrets = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    assert secrets - INBOUND_OR_OWN_SECRETS <= set(SANDBOX_REFUSES)
    assert set(SANDBOX_REFUSES) <= set(Settings.model_fields)


def test_the_sample_journey_is_datafast_shaped_and_stable_per_visitor() -> None:
    from worker.integrations.datafast import VisitorProfile, to_journey

    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    visitor = str(uuid.uuid4())
    first, again = sample_profile(visitor, now), sample_profile(visitor, now)
    assert first == again
    journey = to_journey(VisitorProfile.model_validate(first))
    assert journey.found and journey.visitor_id == visitor
    assert journey.provider == "DataFast"
    assert journey.recent_pages and journey.visit_count and journey.prediction is not None
    assert journey.location.country and journey.technology.browser


def test_in_sandbox_mode_datafast_is_answered_in_process(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    settings = load_settings(sandbox=True, redis_key_prefix=key_prefix)
    assert DataFastSource.configured(settings)
    source = DataFastSource(settings, SharedRateLimiter(redis_client, key_prefix))
    visitor = str(uuid.uuid4())
    journey = source.fetch_journey(visitor)
    assert journey.found and journey.visitor_id == visitor and journey.provider == "DataFast"
    with pytest.raises(Rejected, match="404"):
        source.http.request("GET", "visitors")  # anything else: DataFast's 404 envelope
    assert not DataFastSource.configured(load_settings())


def test_sandbox_clients_never_open_a_connection(redis_client: redis.Redis) -> None:
    settings = load_settings(sandbox=True)
    client = sandbox_client("sandbox", settings, SharedRateLimiter(redis_client, "t:"), Rate(5, 1))
    with pytest.raises(SandboxRequestRefused):
        client.request("GET", "visitors/x")


def test_first_run_env_sets_the_secret_password_and_sandbox(tmp_path: Path) -> None:
    example = "# c\nWEBHOOK_SECRET=\nSANDBOX=false\nREDIS_URL=redis://x\n"
    text = first_run_env(example, {"WEBHOOK_SECRET": "whsec_a\\b", "SANDBOX": "true", "NEW": "1"})
    assert text == "# c\nWEBHOOK_SECRET=whsec_a\\b\nSANDBOX=true\nREDIS_URL=redis://x\nNEW=1\n"

    target = tmp_path / ".env"
    values = write_first_run_env(ROOT / ".env.example", target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    written = target.read_text()
    assert f"WEBHOOK_SECRET={values['WEBHOOK_SECRET']}\n" in written
    assert "SANDBOX=true\n" in written
    assert (
        values["WEBHOOK_SECRET"]
        != write_first_run_env(ROOT / ".env.example", tmp_path / "b")["WEBHOOK_SECRET"]
    )


def _clean_env(**extra: str) -> dict[str, str]:
    from config.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    return {**{k: v for k, v in os.environ.items() if k.upper() not in names}, **extra}


def test_init_creates_env_once_and_the_settings_load(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    env = _clean_env()
    made = subprocess.run(
        [str(BIN / "visitor-enrich"), "init"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert "sandbox mode on" in made.stdout and "/console" in made.stdout
    again = subprocess.run(
        [str(BIN / "visitor-enrich"), "init"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert again.returncode == 1 and ".env exists already" in again.stderr
    # The .env made works as it is: every process reads it at start-up.
    check = subprocess.run(
        [sys.executable, "-c", "from config import load_settings as l; s=l(); print(s.sandbox)"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "True", check.stderr


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(
        tmp_path_factory,
        "sandbox",
        WEBHOOK_SECRET=TEST_SECRET,
        SANDBOX="true",
        CONSOLE_PASSWORD="pw-for-tests",
    ) as service:
        yield service


@pytest.mark.e2e
def test_send_posts_a_signed_event_that_is_delivered_to_the_console_sink(svc: Service) -> None:
    started = time.monotonic()
    sent = subprocess.run(
        [str(BIN / "visitor-enrich"), "send", "--type", "support_ticket", "--url", svc.url],
        env=_clean_env(**{k: v for k, v in svc.env.items() if k.isupper()}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    match = re.search(r"sent (evt_\w+) \(support_ticket\): queued", sent.stdout)
    assert match, sent.stdout
    event_id = match.group(1)
    assert f"{svc.url}/console/events/{event_id}" in sent.stdout
    status = svc.wait_for_state(event_id, timeout=5 + (time.monotonic() - started))
    assert status["state"] == "delivered"
    assert status["sinks"]["console"]["state"] == "delivered"
    notes = ConsoleSink.kept(EventStore(svc.redis, svc.prefix, 3600), event_id)
    assert [n.sink for n in notes] == sorted(s.name for s in SINKS if s.name != "console")
    zendesk = next(n for n in notes if n.sink == "zendesk")
    assert f"visitor-enrich:{event_id}" in zendesk.body and "Visitor journey" in zendesk.body
    for name in ("worker0", "web"):
        lines = [line for line in svc.log(name).splitlines() if line.startswith("20")]
        assert lines and all(line.endswith("sandbox=true") for line in lines), name


@pytest.mark.e2e
def test_send_with_a_wrong_secret_is_refused(svc: Service) -> None:
    env = _clean_env(**{k: v for k, v in svc.env.items() if k.isupper()})
    env["WEBHOOK_SECRET"] = "whsec_" + "b3RoZXItc2VjcmV0"
    sent = subprocess.run(
        [str(BIN / "visitor-enrich"), "send", "--url", svc.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 1
    assert "refused: 401" in sent.stderr


def test_the_console_sink_keeps_a_note_per_format_with_the_event(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    from worker.journey import JourneyContext

    settings = load_settings(sandbox=True, redis_key_prefix=key_prefix)
    store = EventStore(redis_client, key_prefix, 3600)
    sink = ConsoleSink(settings, SharedRateLimiter(redis_client, key_prefix))
    context = JourneyContext.not_found("DataFast", "v1", "no such visitor")
    events = {}
    for event_id in ("evt_keep", "evt_erase", "evt_scrub"):
        event = Event(id=event_id, type="signup", visitor_id="v1", email="a@b.co")
        store.accept(event)
        events[event_id] = event
        assert sink.already_delivered(event) is False
        result = sink.deliver(event, context, Note(""))
        assert result.external_id == f"console:{event_id}"
        assert sink.already_delivered(event) is True
    kept = ConsoleSink.kept(store, "evt_keep")
    assert {n.sink for n in kept} == {s.name for s in SINKS if s.name != "console"}
    assert all("no such visitor" in n.body for n in kept if n.sink == "zendesk")
    # Personal data: erased and scrubbed with the event.
    store.erase_events({"evt_erase": events["evt_erase"]})
    store.scrub_event("evt_scrub")
    assert ConsoleSink.kept(store, "evt_erase") == [] == ConsoleSink.kept(store, "evt_scrub")
    ConsoleSink.set_failing(redis_client, key_prefix, True)
    from worker.errors import Unavailable

    with pytest.raises(Unavailable):
        sink.deliver(events["evt_keep"], context, Note(""))
