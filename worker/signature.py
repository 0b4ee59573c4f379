"""The Standard Webhooks signature check of inbound events.

``webhook-signature`` holds space-separated ``v1,<base64 HMAC-SHA256>`` entries over
``"{webhook-id}.{webhook-timestamp}.{body}"``; the key is the base64 part of ``whsec_...``;
a timestamp more than five minutes off is refused (replay).

Written here instead of calling ``standardwebhooks.Webhook.verify`` on each request: that
function decodes the body to text and back, copies and lower-cases every header and builds
datetimes, which made it 15 % of the web process's CPU per event (bench/README.md). The
library still decodes the secret (so a secret it refuses is refused here too), and
``tests/test_signature.py`` checks that both give the same verdict on the same inputs.

Several secrets may be in force at once (``WEBHOOK_SECRET`` lists them comma-separated while
one is rotated): an event passes when any of its signatures matches any of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence

from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

TOLERANCE_SECONDS = 5 * 60


def matches_any(given: str | None, secrets: Sequence[SecretStr]) -> bool:
    """Whether ``given`` (a token sent as it is: a bearer token, Rocket.Chat's header) is one
    of ``secrets``, in constant time: every secret is compared, so the time taken tells
    neither which one matched (the old or the new, during a rotation) nor how much of it."""
    if not given or not secrets:
        return False
    candidate = given.encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(candidate, secret.get_secret_value().encode())
    return matched


class SignatureError(Exception):
    """The event's signature headers are missing, malformed, stale or do not match."""


class SignatureCheck:
    """Verifies ``body`` and its headers against one secret, or each of several."""

    def __init__(self, secret: str | Iterable[str], tolerance: float = TOLERANCE_SECONDS) -> None:
        secrets = [secret] if isinstance(secret, str) else list(secret)
        if not secrets:
            raise ValueError("a signature check needs at least one secret")
        self._keys = tuple(Webhook(s)._whsecret for s in secrets)
        self._tolerance = tolerance

    def verify(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> None:
        """Return when one ``v1`` signature matches; raise ``SignatureError`` otherwise.

        ``headers`` is looked up by lower-case name (Starlette's ``Headers`` ignores case).
        """
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signatures = headers.get("webhook-signature")
        if not (msg_id and timestamp and signatures):
            raise SignatureError("Missing required headers")
        try:
            sent_at = float(timestamp)
        except ValueError:
            raise SignatureError("Invalid Signature Headers") from None
        now = time.time() if now is None else now
        # Whole seconds, as the scheme signs them; NaN and infinities fail both comparisons.
        if not sent_at >= now - self._tolerance:
            raise SignatureError("Message timestamp too old")
        if not sent_at <= now + self._tolerance:
            raise SignatureError("Message timestamp too new")
        signed = f"{msg_id}.{int(sent_at)}.".encode() + body
        # Each entry is compared whole with the ``v1,<base64>`` it should be, as the library
        # does: an entry that is malformed, of another version or signed with another secret
        # is passed over, and one that matches is enough.
        expected = [
            b"v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256))
            for key in self._keys
        ]
        for entry in signatures.split(" "):
            given = entry.encode()
            # Compared with every key, not stopping at a match, so the time taken does not
            # tell which of the secrets (the old or the new one) signed the event.
            matched = False
            for want in expected:
                matched |= hmac.compare_digest(want, given)
            if matched:
                return
        raise SignatureError("No matching signature found")
