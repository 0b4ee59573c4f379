"""Logging and error reporting that never leak a secret.

Log lines are structured (``key=value`` after the message: event id, sink, attempt) and pass
through a filter that masks every configured secret, the Authorization header and email
addresses. Sentry is on only with ``SENTRY_DSN``; its ``before_send`` applies the same mask.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from config import Settings

MASK = "[redacted]"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_BEARER = re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_SENSITIVE_KEYS = re.compile(
    r"(?i)authorization|api[_-]?key|token|secret|password|cookie|dsn|email"
)
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message
}


class Scrubber:
    """Masks secrets and personal data in text and nested structures."""

    def __init__(self, secrets: list[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            value = value.replace(secret, MASK)
        value = _BEARER.sub(r"\1 " + MASK, value)
        return _EMAIL.sub(MASK, value)

    def data(self, value: Any, key: str = "") -> Any:
        if key and _SENSITIVE_KEYS.search(key) and isinstance(value, str | bytes):
            return MASK
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.data(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


class ScrubFilter(logging.Filter):
    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now so its text is scrubbed too.
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self.scrubber.text(message)
        record.args = None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS:
                setattr(record, name, self.scrubber.data(value, name))
        return True


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and v is not None
        ]
        return f"{base} {' '.join(extras)}" if extras else base


class SandboxTag(logging.Filter):
    """Marks every line ``sandbox=true`` in sandbox mode, so no log reader takes a sample
    journey for a real one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.sandbox = "true"
        return True


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(ScrubFilter(Scrubber(settings.secret_values())))
    if settings.sandbox:
        handler.addFilter(SandboxTag())
        # uvicorn's own loggers write through their own handlers; in sandbox mode they go
        # through this one too, so that every line says sandbox.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # httpx logs full URLs at INFO; a Slack webhook URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


class ArgsScrubFilter(logging.Filter):
    """Scrubs a record's %-style arguments where they are, for a formatter that reads them
    by position (uvicorn's access log: a request line with ``?key=`` in it, as Crisp's
    website hooks are sent)."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.scrubber.text(a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self.scrubber.text(record.msg)
        return True


def scrub_access_log(settings: Settings) -> None:
    """Scrub secrets from uvicorn's access log lines (URLs may carry a webhook key)."""
    access = logging.getLogger("uvicorn.access")
    for existing in [f for f in access.filters if isinstance(f, ArgsScrubFilter)]:
        access.removeFilter(existing)
    access.addFilter(ArgsScrubFilter(Scrubber(settings.secret_values())))


def scrub_logging_handlers(settings: Settings) -> None:
    """Add the scrub filter to every handler already installed (Celery's, uvicorn's)."""
    scrub = ScrubFilter(Scrubber(settings.secret_values()))
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(n) for n in logging.root.manager.loggerDict),
    ]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(scrub)


def make_before_send(settings: Settings) -> Any:
    scrubber = Scrubber(settings.secret_values())

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        request = event.get("request")
        if isinstance(request, dict):
            request.pop("cookies", None)
            request.pop("data", None)
        scrubbed: dict[str, Any] = scrubber.data(event)
        return scrubbed

    return before_send


def init_sentry(settings: Settings, *, component: str) -> bool:
    """Start Sentry when ``SENTRY_DSN`` is set; True when it was started."""
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        send_default_pii=False,
        before_send=make_before_send(settings),
        integrations=[CeleryIntegration(), StarletteIntegration(), FastApiIntegration()],
        server_name=component,
    )
    return True
