"""The inbound signature check (worker/signature.py) gives the standardwebhooks library's
verdict on the same inputs: valid, tampered, stale, future, malformed and multi-signature."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from worker.signature import SignatureCheck, SignatureError

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another secret, another sender!!").decode()
NOW = time.time()


def library_accepts(body: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(SECRET).verify(body, headers, json_parse=False)
    except Exception:
        return False
    return True


def ours_accepts(body: bytes, headers: dict[str, str]) -> bool:
    try:
        SignatureCheck(SECRET).verify(body, headers)
    except SignatureError:
        return False
    return True


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return Webhook(secret).sign(msg_id, when, body.decode())


def headers(msg_id: str, timestamp: str, signatures: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signatures}


ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
bodies = st.text(max_size=300).map(str.encode)
# Offsets from now in seconds: inside and outside the 5-minute tolerance, at least 10 s from
# its edge, since the two verifiers read the clock at two instants (the edge itself is tested
# below with a fixed ``now``).
offsets = st.one_of(st.integers(-290, 290), st.integers(310, 100_000), st.integers(-100_000, -310))
entries = st.sampled_from(["good", "other-secret", "tampered", "v2", "garbage", "no-comma"])


@settings(max_examples=300, deadline=None)
@given(ids, bodies, offsets, st.lists(entries, min_size=1, max_size=3))
def test_same_verdict_as_the_library(
    msg_id: str, body: bytes, offset: int, kinds: list[str]
) -> None:
    # The clock now, not the module's NOW: a long suite reaches this test minutes after import.
    timestamp = int(time.time()) + offset
    good = signature(SECRET, msg_id, timestamp, body)
    made = {
        "good": good,
        "other-secret": signature(OTHER, msg_id, timestamp, body),
        "tampered": signature(SECRET, msg_id, timestamp, body + b"x"),
        "v2": "v2," + good.split(",", 1)[1],
        "garbage": "v1,@@not-base64@@",
        "no-comma": "v1" + good.split(",", 1)[1],
    }
    sent = headers(msg_id, str(timestamp), " ".join(made[k] for k in kinds))
    assert ours_accepts(body, sent) == library_accepts(body, sent)


@pytest.mark.parametrize(
    ("timestamp", "signatures", "accepted"),
    [
        ("{now}", "{good}", True),
        ("{now}", "v1,AAAA {good}", True),  # any one matching entry will do
        ("{now}", "v1,@@not-base64@@ v1{good} {good}", True),  # malformed ones are passed over
        ("{now}", "v1,@@not-base64@@", False),
        ("{now}.0", "{good}", True),
        ("", "{good}", False),
        ("yesterday", "{good}", False),
        ("nan", "{good}", False),
        ("inf", "{good}", False),
        ("{now}", "", False),
        ("{now}", "v1,", False),
        ("{now}", "{good},extra", False),
    ],
)
def test_edge_cases_match_the_library(timestamp: str, signatures: str, accepted: bool) -> None:
    now = int(time.time())
    body = b'{"type":"signup"}'
    good = signature(SECRET, "msg_1", now, body)
    sent = headers("msg_1", timestamp.format(now=now), signatures.format(good=good))
    assert library_accepts(body, sent) is accepted
    assert ours_accepts(body, sent) is accepted


def test_missing_headers_and_stale_timestamps_say_why() -> None:
    check = SignatureCheck(SECRET)
    body = b"{}"
    with pytest.raises(SignatureError, match="Missing"):
        check.verify(body, {"webhook-id": "m", "webhook-timestamp": "1"})
    old = int(NOW) - 301
    with pytest.raises(SignatureError, match="too old"):
        check.verify(body, headers("m", str(old), signature(SECRET, "m", old, body)), now=NOW)
    new = int(NOW) + 301
    with pytest.raises(SignatureError, match="too new"):
        check.verify(body, headers("m", str(new), signature(SECRET, "m", new, body)), now=NOW)
    # ``now=NOW``: the module's NOW is minutes old by the time a long suite gets here.
    with pytest.raises(SignatureError, match="No matching"):
        check.verify(
            body + b" ",
            headers("m", str(int(NOW)), signature(SECRET, "m", int(NOW), body)),
            now=NOW,
        )
