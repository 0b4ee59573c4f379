"""The helpers the helpdesk integrations share (worker/inbound.py, worker/sink.py,
worker/http.py): signatures under rotating secrets, signed timestamps, the marker search
over pages of notes, the 404-tolerant lookup and its Completion, and credential hints."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from config import Rate, load_settings
from worker.errors import AuthFailed, Rejected
from worker.events import Event
from worker.http import ServiceClient
from worker.inbound import (
    object_field,
    require_fresh_timestamp,
    secret_matches,
    signed_by_any,
)
from worker.ratelimit import SharedRateLimiter
from worker.signature import SignatureError
from worker.sink import looked_up, marker_in_pages, unless_missing

BODY = b'{"id": 1}'


def _mac(secret: str, digest: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), BODY, getattr(hashlib, digest)).digest()


def test_signed_by_any_accepts_any_secret_of_a_rotation_in_its_encoding() -> None:
    secrets = ["old", "new"]
    assert signed_by_any(secrets, BODY, _mac("new").hex())
    assert signed_by_any(secrets, BODY, _mac("old").hex().upper())  # hex in either case
    b64 = base64.b64encode(_mac("new", "sha1")).decode()
    assert signed_by_any(secrets, BODY, b64, digest="sha1", encoding="base64")
    assert not signed_by_any(secrets, BODY, b64, digest="sha256", encoding="base64")
    assert not signed_by_any(["other"], BODY, _mac("new").hex())
    assert not signed_by_any(secrets, BODY + b" ", _mac("new").hex())
    assert not signed_by_any(secrets, BODY, "")
    assert not signed_by_any([], BODY, _mac("new").hex())


def test_secret_matches_refuses_empty_and_unknown() -> None:
    assert secret_matches("b", ["a", "b"])
    assert not secret_matches("", ["", "a"])
    assert not secret_matches("c", ["a", "b"])


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("1700000000", True),  # unix seconds
        ("1700000000000", True),  # milliseconds
        ("2023-11-14T22:13:20Z", True),  # ISO 8601 (Zendesk)
        ("1699990000", False),  # 10,000 s before "now"
        ("2023-11-15T22:13:20Z", False),  # a day in the future
        ("", False),
        ("yesterday", False),
        ("nan", False),
        ("inf", False),
    ],
)
def test_require_fresh_timestamp(value: str, ok: bool) -> None:
    now = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC).timestamp()
    if ok:
        require_fresh_timestamp(value, 300, now=now)
    else:
        with pytest.raises(SignatureError):
            require_fresh_timestamp(value, 300, now=now)


def test_require_fresh_timestamp_defaults_to_the_clock() -> None:
    require_fresh_timestamp(str(int(time.time())), 5)


def test_marker_in_pages_reads_lazily_and_gives_up_after_max_pages() -> None:
    read: list[int] = []

    def pages(count: int, hit_on: int | None) -> Iterator[list[dict[str, Any]]]:
        for number in range(count):
            read.append(number)
            text = "... visitor-enrich:evt_1 ..." if number == hit_on else "other"
            yield [{"entry": {"text": text}}, "not an object"]  # type: ignore[list-item]

    assert marker_in_pages(pages(5, 1), "visitor-enrich:evt_1", ["entry.text"])
    assert read == [0, 1]  # stopped at the hit
    assert not marker_in_pages(pages(5, 4), "visitor-enrich:evt_1", ["entry.text"], max_pages=3)
    assert not marker_in_pages([[{"body": None}]], "visitor-enrich:evt_1", ["body"])


def test_unless_missing_is_none_only_for_a_404() -> None:
    assert unless_missing(lambda: {"a": 1}) == {"a": 1}

    def refuse(status: int) -> Any:
        error = AuthFailed if status in (401, 403) else Rejected
        raise error(f"{status} no", service="x", status_code=status)

    assert unless_missing(lambda: refuse(404)) is None
    for status in (400, 401):
        with pytest.raises(Rejected):
            unless_missing(lambda status=status: refuse(status))


def test_looked_up_keeps_the_webhooks_own_email_and_says_why_when_missing() -> None:
    event = Event(id="e", type="support_ticket", ticket_id="1", email="from@webhook.example")
    found = looked_up(event, "v-1", missing="no field", found="ticket 1", email="api@x.example")
    assert found.missing is None and found.detail == "ticket 1"
    assert (found.event.visitor_id, found.event.email) == ("v-1", "from@webhook.example")
    bare = looked_up(
        event.model_copy(update={"email": None}),
        None,
        missing="no field",
        found="-",
        email="api@x.example",
        name="Ada",
    )
    assert bare.missing == "no field" and bare.event.email == "api@x.example"
    assert bare.event.name == "Ada"


def test_object_field() -> None:
    assert object_field({"a": 1}) == {"a": 1}
    assert object_field([1]) == {} and object_field(None) == {}


def test_auth_hint_names_the_variables_on_401_and_on_a_refused_token(
    key_prefix: str, redis_client: Any
) -> None:

    class RefusingAuth(httpx.Auth):
        def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
            raise AuthFailed("token endpoint answered 401", service="x", status_code=401)
            yield request  # pragma: no cover - a generator that refuses first

    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={"message": "no"}))
    settings = load_settings(_env_file=None, redis_key_prefix=key_prefix)
    limiter = SharedRateLimiter(redis_client, key_prefix)

    def client(auth: httpx.Auth | None) -> ServiceClient:
        return ServiceClient(
            "x",
            "http://x.test",
            settings=settings,
            limiter=limiter,
            rate=Rate(100, 1),
            client=httpx.Client(transport=transport),
            auth=auth,
            auth_hint="check X_TOKEN",
        )

    for auth in (None, RefusingAuth()):
        with pytest.raises(AuthFailed, match=r"\(check X_TOKEN\)"):
            client(auth).request("GET", "me")
