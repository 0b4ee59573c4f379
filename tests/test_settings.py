"""Settings: defaults, rate parsing, and start-up errors that name the bad variable."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from config.settings import ConfigError, Rate, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "df_live_verysecretkey_123456"
WEBHOOK = "whsec_" + "c3VwZXItc2VjcmV0LXdlYmhvb2sta2V5"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Only what a test sets is in the environment; no .env file is read (cwd is empty)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.webhook_secret is None
    assert s.allow_unsigned is False
    assert s.max_body_bytes == 64 * 1024
    assert s.source == "datafast"
    assert s.datafast_api_key is None
    assert str(s.datafast_base_url).rstrip("/") == "https://datafa.st"
    assert s.datafast_rate_limit == Rate(5, 1)
    assert str(s.hubspot_base_url).rstrip("/") == "https://api.hubapi.com"
    assert s.hubspot_token is None
    assert s.zendesk_base_url is None and s.zendesk_api_token is None
    assert s.slack_webhook_url is None
    assert s.lead_alert_min_score == 70
    assert s.postmetric_rate_limit == Rate(100, 60)
    assert s.rocketchat_visitor_field == "datafast_visitor_id"
    assert s.realtime_poll_seconds == 60
    assert s.hot_path_list == ["/pricing", "/checkout"]
    assert s.hot_visitor_cooldown == 86400
    assert s.alert_on_payments is False
    assert s.sentry_dsn is None
    assert s.max_retries == 5
    # Every countdown must stay well inside the broker's visibility timeout.
    assert s.retry_backoff_max < s.broker_visibility_timeout / 2
    assert s.max_countdown == s.broker_visibility_timeout / 2


def test_env_example_names_every_setting_and_its_values_are_the_defaults(tmp_path: Path) -> None:
    """.env.example is where an operator finds what can be set: every variable is in it
    (with its default, or commented out where the default depends on other settings), and
    copying it as .env changes nothing."""
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    assert {name.upper() for name in Settings.model_fields} - named == set()
    defaults = load_settings()
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    assert load_settings() == defaults


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.5:6380/2")
    monkeypatch.setenv("DATAFAST_API_KEY", SECRET_KEY)
    monkeypatch.setenv("DATAFAST_RATE_LIMIT", "100/minute")
    monkeypatch.setenv("LEAD_ALERT_MIN_SCORE", "55")
    monkeypatch.setenv("HOT_PATHS", "/pricing, /demo ,")
    monkeypatch.setenv("ALERT_ON_PAYMENTS", "true")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "")  # empty means unset
    s = load_settings()
    assert s.redis_url == "redis://10.0.0.5:6380/2"
    assert s.datafast_api_key is not None
    assert s.datafast_api_key.get_secret_value() == SECRET_KEY
    assert s.datafast_rate_limit == Rate(100, 60)
    assert s.lead_alert_min_score == 55
    assert s.hot_path_list == ["/pricing", "/demo"]
    assert s.alert_on_payments is True
    assert s.slack_webhook_url is None


def test_dft_token_with_website_id_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFAST_API_KEY", "dft_account_token")
    monkeypatch.setenv("DATAFAST_WEBSITE_ID", "665f0b3c4d2e1a0012345678")
    assert load_settings().datafast_website_id == "665f0b3c4d2e1a0012345678"


def test_complete_zendesk_group_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZENDESK_BASE_URL", "https://acme.zendesk.com")
    monkeypatch.setenv("ZENDESK_EMAIL", "agent@acme.com")
    monkeypatch.setenv("ZENDESK_API_TOKEN", "zd-token")
    assert load_settings().zendesk_email == "agent@acme.com"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DATAFAST_API_KEY": "sk_live_nope"}, ["DATAFAST_API_KEY"]),
        ({"DATAFAST_API_KEY": "dft_account_token"}, ["DATAFAST_WEBSITE_ID"]),
        ({"WEBHOOK_SECRET": "plain-secret"}, ["WEBHOOK_SECRET"]),
        ({"WEBHOOK_SECRET": "whsec_"}, ["WEBHOOK_SECRET"]),
        ({"ZENDESK_BASE_URL": "https://acme.zendesk.com"}, ["ZENDESK_EMAIL", "ZENDESK_API_TOKEN"]),
        (
            {"ZENDESK_EMAIL": "a@acme.com", "ZENDESK_API_TOKEN": "t"},
            ["ZENDESK_BASE_URL"],
        ),
        ({"DATAFAST_RATE_LIMIT": "fast"}, ["DATAFAST_RATE_LIMIT"]),
        ({"DATAFAST_RATE_LIMIT": "0"}, ["DATAFAST_RATE_LIMIT"]),
        ({"HUBSPOT_RATE_LIMIT": "10/fortnight"}, ["HUBSPOT_RATE_LIMIT"]),
        ({"POSTMETRIC_RATE_LIMIT": "-3"}, ["POSTMETRIC_RATE_LIMIT"]),
        ({"SOURCE": "google"}, ["SOURCE"]),
        ({"SOURCE": "postmetric"}, ["POSTMETRIC_API_KEY", "POSTMETRIC_BASE_URL"]),
        ({"LEAD_ALERT_MIN_SCORE": "150"}, ["LEAD_ALERT_MIN_SCORE"]),
        ({"SLACK_WEBHOOK_URL": "hooks.slack.com/services/x"}, ["SLACK_WEBHOOK_URL"]),
        ({"HUBSPOT_BASE_URL": "not a url"}, ["HUBSPOT_BASE_URL"]),
        ({"HOT_PATHS": "/pricing,checkout"}, ["HOT_PATHS"]),
        ({"MAX_BODY_BYTES": "10"}, ["MAX_BODY_BYTES"]),
        (
            {"RETRY_BACKOFF_MAX": "40", "BROKER_VISIBILITY_TIMEOUT": "60"},
            ["RETRY_BACKOFF_MAX"],
        ),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    for name in names:
        assert name in message, message


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFAST_API_KEY", "sk_wrong")
    monkeypatch.setenv("WEBHOOK_SECRET", "nope")
    monkeypatch.setenv("DATAFAST_RATE_LIMIT", "lots")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    for name in ("DATAFAST_API_KEY", "WEBHOOK_SECRET", "DATAFAST_RATE_LIMIT"):
        assert name in message, message


# Rates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "amount", "seconds"),
    [
        ("5", 5, 1),
        (" 5 ", 5, 1),
        ("1", 1, 1),
        ("5.0", 5, 1),
        ("0.5", 30, 60),
        ("1.5", 90, 60),
        ("0.001", 1, 60),
        ("100/minute", 100, 60),
        ("100 / Minute", 100, 60),
        ("100/minutes", 100, 60),
        ("100/min", 100, 60),
        ("10/second", 10, 1),
        ("10/s", 10, 1),
        ("3600/hour", 3600, 3600),
        ("7/h", 7, 3600),
    ],
)
def test_rate_parse(text: str, amount: int, seconds: int) -> None:
    rate = Rate.parse(text)
    assert (rate.amount, rate.seconds) == (amount, seconds)


def test_fractional_rate_keeps_its_speed() -> None:
    assert Rate.parse("0.5").per_second == pytest.approx(0.5)
    assert Rate.parse("100/minute").per_second == pytest.approx(100 / 60)


@pytest.mark.parametrize(
    "text", ["", "fast", "0", "-1", "0/minute", "nan", "inf", "5/fortnight", "5/", "/minute"]
)
def test_rate_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Rate.parse(text)


# Secrets --------------------------------------------------------------------------------


def test_secrets_stay_out_of_repr_and_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "DATAFAST_API_KEY": SECRET_KEY,
        "WEBHOOK_SECRET": WEBHOOK,
        "HUBSPOT_TOKEN": "pat-na1-hubspot-secret-token",
        "ZENDESK_BASE_URL": "https://acme.zendesk.com",
        "ZENDESK_EMAIL": "agent@acme.com",
        "ZENDESK_API_TOKEN": "zendesk-secret-token-xyz",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/slacksecretpart",
        "SENTRY_DSN": "https://sentrysecretkey@o1.ingest.sentry.io/1",
        "ROCKETCHAT_WEBHOOK_TOKEN": "rocket-secret-token",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    shown = " ".join([repr(s), str(s), repr(s.model_dump())])
    for key, value in secrets.items():
        if key in ("ZENDESK_BASE_URL", "ZENDESK_EMAIL"):
            continue
        assert value not in shown, key
        assert value in s.secret_values()


def test_a_bad_secret_is_not_echoed_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFAST_API_KEY", "sk_live_topsecretvalue")
    monkeypatch.setenv("WEBHOOK_SECRET", "hunter2-webhook-secret")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "topsecretvalue" not in message
    assert "hunter2" not in message
