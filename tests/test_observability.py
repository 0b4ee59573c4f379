"""Secrets and email addresses never reach log output or Sentry events."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import sentry_sdk
from sentry_sdk.transport import Transport

from config import load_settings
from worker.observability import KeyValueFormatter, Scrubber, ScrubFilter, make_before_send

SECRETS = {
    "datafast_api_key": "df_live_secret_key_123456",
    "hubspot_token": "pat-na1-abcdef-secret",
    "zendesk_base_url": "https://acme.zendesk.com",
    "zendesk_email": "agent@acme.test",
    "zendesk_api_token": "zendesk-token-98765",
    "slack_webhook_url": "https://hooks.slack.test/services/T000/B000/XXXXsecret",
    "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


def test_scrubber_masks_secrets_bearer_tokens_and_emails() -> None:
    scrubber = Scrubber(["df_live_secret_key_123456"])
    text = scrubber.text(
        "calling with df_live_secret_key_123456 for ada@example.com; "
        "Authorization: Bearer some.opaque-token"
    )
    assert "df_live_secret_key_123456" not in text
    assert "ada@example.com" not in text
    assert "some.opaque-token" not in text
    assert text.count("[redacted]") == 3


def test_scrubber_masks_sensitive_keys_in_nested_data() -> None:
    data = Scrubber([]).data(
        {"headers": {"Authorization": "Basic abc", "X-Api-Key": "k"}, "items": [{"token": "t"}]}
    )
    assert data == {
        "headers": {"Authorization": "[redacted]", "X-Api-Key": "[redacted]"},
        "items": [{"token": "[redacted]"}],
    }


def test_log_records_are_scrubbed_including_extras_and_tracebacks() -> None:
    settings = load_settings(**SECRETS)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter("%(levelname)s %(message)s"))
    handler.addFilter(ScrubFilter(Scrubber(settings.secret_values())))
    logger = logging.getLogger("test.scrub")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError(f"upstream said no to {SECRETS['hubspot_token']}")
        except RuntimeError:
            logger.exception(
                "failed %s",
                SECRETS["datafast_api_key"],
                extra={"url": SECRETS["slack_webhook_url"], "email": "x@y.co"},
            )
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "RuntimeError" in output  # the traceback is kept...
    for secret in SECRETS.values():
        if secret.startswith("https://acme"):
            continue  # a base URL is not a secret
        assert secret not in output  # ...without any secret in it
    assert "x@y.co" not in output


class CapturingTransport(Transport):
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[str] = []

    def capture_envelope(self, envelope: Any) -> None:
        self.envelopes.append(envelope.serialize().decode("utf-8", "replace"))


def test_sentry_events_carry_no_secret_and_no_email() -> None:
    settings = load_settings(**SECRETS)
    transport = CapturingTransport()
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        before_send=make_before_send(settings),
        send_default_pii=False,
        default_integrations=False,
    )
    try:
        token = SECRETS["zendesk_api_token"]
        headers = {"Authorization": f"Bearer {SECRETS['hubspot_token']}"}
        try:
            raise ValueError(f"zendesk refused {token} for agent@acme.test {json.dumps(headers)}")
        except ValueError as exc:
            sentry_sdk.capture_exception(exc)
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    assert transport.envelopes, "the event should have been captured"
    payload = "\n".join(transport.envelopes)
    assert "ValueError" in payload
    for secret in SECRETS.values():
        if secret.startswith("https://acme"):
            continue
        assert secret not in payload
    assert "agent@acme.test" not in payload


def test_access_log_keeps_its_arguments_and_loses_the_key_in_the_url() -> None:
    from uvicorn.logging import AccessFormatter

    from worker.observability import ArgsScrubFilter

    settings = load_settings(_env_file=None, crisp_webhook_key="plugin-secret-1,website-key-22")
    assert {"plugin-secret-1", "website-key-22"} <= set(settings.secret_values())
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/v1/webhooks/crisp?key=website-key-22", "1.1", 200),
        None,
    )
    assert ArgsScrubFilter(Scrubber(settings.secret_values())).filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line == '127.0.0.1:5000 - "POST /v1/webhooks/crisp?key=[redacted] HTTP/1.1" 200 OK'
