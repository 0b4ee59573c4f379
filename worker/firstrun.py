"""The first run's ``.env``: ``.env.example`` with a fresh ``WEBHOOK_SECRET``, a console
password and sandbox mode on, so ``make run`` on a fresh clone shows the product working."""

from __future__ import annotations

import base64
import re
import secrets
from pathlib import Path

FIRST_RUN_VALUES = ("WEBHOOK_SECRET", "CONSOLE_PASSWORD", "SANDBOX")


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def first_run_env(example: str, values: dict[str, str]) -> str:
    """``example`` with each ``NAME=`` line of ``values`` set (appended when absent)."""
    text = example
    for name, value in values.items():
        line = f"{name}={value}"
        pattern = re.compile(rf"^{re.escape(name)}=.*$", re.MULTILINE)
        # A function, not a replacement string: a value may hold backslashes.
        text, count = pattern.subn(lambda _match: line, text)  # noqa: B023 - used at once
        if count == 0:
            text = text.rstrip("\n") + f"\n{line}\n"
    return text


def write_first_run_env(example: Path, target: Path) -> dict[str, str]:
    """Create ``target`` from ``example``; returns the values it set. The file is readable by
    its owner only: it holds secrets."""
    values = {
        "WEBHOOK_SECRET": new_webhook_secret(),
        "CONSOLE_PASSWORD": secrets.token_urlsafe(12),
        "SANDBOX": "true",
    }
    target.touch(mode=0o600, exist_ok=False)
    target.write_text(first_run_env(example.read_text("utf-8"), values), "utf-8")
    return values
