"""The inbound web app in-process (FastAPI TestClient) on the real Redis: every bad input of
issue 2 gets its status and the JSON error envelope and leaves the Celery queue empty; a good
event is queued exactly once."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from harness import bearer, queue_length, send_event, sign, web_settings

from config import Settings
from worker.web import create_app

VID = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret").decode()


def make_settings(prefix: str, queue: str, **overrides: Any) -> Settings:
    return web_settings(prefix, queue, **overrides)


@pytest.fixture
def web(isolation: tuple[str, str], redis_server: str) -> Iterator[Callable[..., TestClient]]:
    prefix, queue = isolation
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        # Every request carries the status API's token; the tests of the token itself
        # (tests/test_privacy.py) send their own.
        client = TestClient(create_app(make_settings(prefix, queue, **overrides)), headers=bearer())
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(web: Callable[..., TestClient]) -> TestClient:
    return web()


@pytest.fixture
def queue(isolation: tuple[str, str]) -> str:
    return isolation[1]


@pytest.fixture
def queued(redis_client: redis.Redis, queue: str) -> Callable[[], int]:
    return lambda: queue_length(redis_client, queue)


def ticket(**extra: Any) -> dict[str, Any]:
    return {
        "type": "support_ticket",
        "datafast_visitor_id": VID,
        "email": "ada@example.com",
        "ticket_id": "4711",
        **extra,
    }


def assert_error(response: Any, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == status
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    for word in words:
        assert word.lower() in message.lower(), message
    return body


def new_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


# Bad input: nothing enqueued ------------------------------------------------------------------


def test_malformed_json_is_400(client: TestClient, queued: Callable[[], int]) -> None:
    response = send_event(client, None, event_id=new_id(), raw_body=b'{"type": "signup",')
    assert_error(response, 400, "json")
    assert queued() == 0


def test_non_object_json_is_422(client: TestClient, queued: Callable[[], int]) -> None:
    response = send_event(client, [ticket()], event_id=new_id())
    assert_error(response, 422)
    assert queued() == 0


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "no_signature",
        "no_timestamp",
        "no_id",
        "wrong_secret",
        "tampered",
        "garbage",
        "other_id",
    ],
)
def test_missing_or_bad_signature_is_401(
    client: TestClient, queued: Callable[[], int], case: str
) -> None:
    event_id = new_id()
    body = json.dumps(ticket()).encode()
    headers = sign(body, msg_id=event_id)
    if case == "missing":
        headers = {}
    elif case == "no_signature":
        del headers["webhook-signature"]
    elif case == "no_timestamp":
        del headers["webhook-timestamp"]
    elif case == "no_id":
        del headers["webhook-id"]
    elif case == "wrong_secret":
        headers = sign(body, msg_id=event_id, secret=OTHER_SECRET)
    elif case == "tampered":
        body = json.dumps(ticket(ticket_id="9999")).encode()
    elif case == "garbage":
        headers["webhook-signature"] = "not-a-signature"
    elif case == "other_id":
        headers["webhook-id"] = new_id()
    response = client.post(
        "/v1/events", content=body, headers={"content-type": "application/json", **headers}
    )
    assert_error(response, 401, "signature")
    assert queued() == 0


def test_one_good_signature_among_several_is_enough(
    client: TestClient, queued: Callable[[], int]
) -> None:
    event_id = new_id()
    body = json.dumps(ticket()).encode()
    headers = sign(body, msg_id=event_id)
    rotated = sign(body, msg_id=event_id, secret=OTHER_SECRET)["webhook-signature"]
    headers["webhook-signature"] = f"{rotated} {headers['webhook-signature']}"
    response = client.post("/v1/events", content=body, headers=headers)
    assert response.status_code == 202, response.text
    assert queued() == 1


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(hours=-2)])
def test_stale_timestamp_is_401(
    client: TestClient, queued: Callable[[], int], offset: timedelta
) -> None:
    response = send_event(client, ticket(), event_id=new_id(), timestamp=datetime.now(UTC) + offset)
    assert_error(response, 401)
    assert queued() == 0


@pytest.mark.parametrize("offset", [timedelta(minutes=6), timedelta(days=1)])
def test_future_timestamp_is_401(
    client: TestClient, queued: Callable[[], int], offset: timedelta
) -> None:
    response = send_event(client, ticket(), event_id=new_id(), timestamp=datetime.now(UTC) + offset)
    assert_error(response, 401)
    assert queued() == 0


def test_timestamp_inside_the_tolerance_is_accepted(
    client: TestClient, queued: Callable[[], int]
) -> None:
    earlier = datetime.now(UTC) - timedelta(minutes=4)
    assert send_event(client, ticket(), event_id=new_id(), timestamp=earlier).status_code == 202
    later = datetime.now(UTC) + timedelta(minutes=4)
    assert send_event(client, ticket(), event_id=new_id(), timestamp=later).status_code == 202
    assert queued() == 2


def test_unsigned_is_refused_when_no_secret_is_set(
    web: Callable[..., TestClient], queued: Callable[[], int]
) -> None:
    client = web(webhook_secret=None)
    response = send_event(client, ticket(), event_id=new_id(), secret=None)
    assert_error(response, 401, "WEBHOOK_SECRET")
    # A correctly signed event cannot be accepted either: there is nothing to check it with.
    assert send_event(client, ticket(), event_id=new_id()).status_code == 401
    assert queued() == 0


def test_unsigned_is_accepted_in_dev_mode(
    web: Callable[..., TestClient], queued: Callable[[], int]
) -> None:
    client = web(webhook_secret=None, allow_unsigned=True)
    response = client.post("/v1/events", json=ticket())
    assert response.status_code == 202, response.text
    assert response.json()["data"]["eventId"]  # an id was made up for it
    assert queued() == 1


def test_body_over_64_kib_is_413(client: TestClient, queued: Callable[[], int]) -> None:
    payload = ticket(name="x" * (64 * 1024))
    response = send_event(client, payload, event_id=new_id())  # validly signed
    assert_error(response, 413)
    assert queued() == 0


def test_streamed_body_over_64_kib_is_413(client: TestClient, queued: Callable[[], int]) -> None:
    """Without Content-Length (chunked), the cap holds while reading."""
    chunks = [b'{"type": "signup", "name": "'] + [b"y" * 8192] * 9 + [b'"}']
    response = client.post("/v1/events", content=iter(chunks), headers=sign(b"", msg_id=new_id()))
    assert_error(response, 413)
    assert queued() == 0


def test_streamed_body_in_several_pieces_is_read_whole(
    client: TestClient, queued: Callable[[], int]
) -> None:
    body = json.dumps(ticket(cookie="theme=" + "n" * 15_000)).encode()
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    assert len(chunks) > 1
    response = client.post("/v1/events", content=iter(chunks), headers=sign(body, msg_id=new_id()))
    assert response.status_code == 202, response.text
    assert queued() == 1


def test_body_at_the_limit_is_not_413(client: TestClient, queued: Callable[[], int]) -> None:
    base = json.dumps(ticket(name="")).encode()
    payload = ticket(name="z" * (64 * 1024 - len(base)))
    body = json.dumps(payload).encode()
    assert len(body) == 64 * 1024
    response = send_event(client, None, event_id=new_id(), raw_body=body)
    # Not refused for size; the name is too long for the schema instead.
    assert response.status_code != 413, response.text


@pytest.mark.parametrize(
    ("payload", "status", "word"),
    [
        ({"type": "signup", "email": "a@b.co"}, 422, "visitor"),
        ({"type": "signup", "cookie": "theme=dark; lang=en"}, 422, "visitor"),
        ({"type": "signup", "datafast_visitor_id": "not-a-uuid"}, 400, "uuid"),
        ({"type": "signup", "cookie": "datafast_visitor_id=12345"}, 400, "uuid"),
        ({"type": "signup", "visitorId": VID + "00"}, 400, "uuid"),
        ({"type": "purchase", "datafast_visitor_id": VID}, 422, "type"),
        ({"datafast_visitor_id": VID}, 422, "type"),
        ({"type": "support_ticket", "datafast_visitor_id": VID}, 422, "ticket_id"),
        ({"type": "signup", "datafast_visitor_id": VID, "email": "nope"}, 422, "email"),
    ],
)
def test_schema_errors(
    client: TestClient, queued: Callable[[], int], payload: dict[str, Any], status: int, word: str
) -> None:
    response = send_event(client, payload, event_id=new_id())
    assert_error(response, status, word)
    assert queued() == 0


def test_rejected_event_ids_are_not_remembered(
    client: TestClient, queued: Callable[[], int]
) -> None:
    """A refused event does not burn its id: the corrected resend is accepted."""
    event_id = new_id()
    bad = send_event(client, {"type": "support_ticket", "visitorId": VID}, event_id=event_id)
    assert bad.status_code == 422
    assert client.get(f"/v1/events/{event_id}").status_code == 404
    good = send_event(client, ticket(), event_id=event_id)
    assert good.status_code == 202
    assert queued() == 1


# Good events ------------------------------------------------------------------------------


def _queued_messages(redis_client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis_client.lrange(queue, 0, -1)]


def test_good_event_is_queued_once_and_a_duplicate_is_not(
    client: TestClient, queued: Callable[[], int], redis_client: redis.Redis, queue: str
) -> None:
    event_id = new_id()
    first = send_event(client, ticket(), event_id=event_id)
    assert first.status_code == 202, first.text
    assert first.json() == {"status": "success", "data": {"eventId": event_id, "state": "queued"}}
    assert queued() == 1
    message = _queued_messages(redis_client, queue)[0]
    assert message["headers"]["task"] == "visitor_enrich.enrich_event"
    args = json.loads(base64.b64decode(message["body"]))[0]
    assert args == [event_id]

    again = send_event(client, ticket(), event_id=event_id)
    assert again.status_code == 200, again.text
    assert again.json() == {
        "status": "success",
        "data": {"eventId": event_id, "state": "duplicate"},
    }
    # A sender's retry comes with a new timestamp and signature: still a duplicate.
    later = send_event(
        client, ticket(), event_id=event_id, timestamp=datetime.now(UTC) + timedelta(seconds=30)
    )
    assert later.status_code == 200 and later.json()["data"]["state"] == "duplicate"
    assert queued() == 1


def test_body_id_wins_over_the_header_id(client: TestClient, queued: Callable[[], int]) -> None:
    body_id = new_id()
    first = send_event(client, ticket(id=body_id), event_id=new_id())
    assert first.status_code == 202
    assert first.json()["data"]["eventId"] == body_id
    second = send_event(client, ticket(id=body_id), event_id=new_id())
    assert second.status_code == 200
    assert second.json()["data"]["state"] == "duplicate"
    assert queued() == 1


def test_visitor_id_from_alias_and_cookie(client: TestClient, queued: Callable[[], int]) -> None:
    by_alias = new_id()
    assert (
        send_event(client, {"type": "signup", "visitorId": VID}, event_id=by_alias).status_code
        == 202
    )
    by_cookie = new_id()
    cookie = f"_ga=GA1.1.1; datafast_visitor_id={VID}; datafast_session_id=abc"
    assert (
        send_event(client, {"type": "signup", "cookie": cookie}, event_id=by_cookie).status_code
        == 202
    )
    for event_id in (by_alias, by_cookie):
        assert client.get(f"/v1/events/{event_id}").json()["data"]["visitorId"] == VID
    assert queued() == 2


def test_get_event_status(client: TestClient) -> None:
    event_id = new_id()
    send_event(client, ticket(), event_id=event_id)
    response = client.get(f"/v1/events/{event_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    data = body["data"]
    assert data["eventId"] == event_id
    assert data["type"] == "support_ticket"
    assert data["visitorId"] == VID
    assert data["state"] == "queued"
    assert [s["step"] for s in data["steps"]] == ["accepted"]


def test_unknown_event_is_404(client: TestClient) -> None:
    assert_error(client.get(f"/v1/events/{new_id()}"), 404)


def test_health_and_ready(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "success"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "success"


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/events"), 405)


# Redis down -------------------------------------------------------------------------------


def test_redis_down_is_503_and_quick(
    web: Callable[..., TestClient], queued: Callable[[], int]
) -> None:
    client = web(redis_url="redis://127.0.0.1:1/0")
    assert client.get("/healthz").status_code == 200  # the process is up all the same

    started = time.monotonic()
    assert_error(client.get("/readyz"), 503, "redis")
    assert time.monotonic() - started < 2

    started = time.monotonic()
    response = send_event(client, ticket(), event_id=new_id())
    assert time.monotonic() - started < 2
    assert_error(response, 503)

    assert_error(client.get(f"/v1/events/{new_id()}"), 503)
    assert queued() == 0


def test_queue_refusing_the_task_is_503_and_keeps_nothing(
    client: TestClient, queued: Callable[[], int], redis_client: redis.Redis, queue: str
) -> None:
    """Redis refuses the push (the queue key holds a string): 503, the event is not recorded,
    and the sender's retry of the same id is accepted (not answered "duplicate" and lost)."""
    event_id = new_id()
    redis_client.set(queue, "not a list")
    assert_error(send_event(client, ticket(), event_id=event_id), 503, "retry")
    assert client.get(f"/v1/events/{event_id}").status_code == 404
    redis_client.delete(queue)

    retry = send_event(client, ticket(), event_id=event_id)
    assert retry.status_code == 202, retry.text
    assert queued() == 1


def test_an_unexpected_error_is_a_500_envelope_and_logged(
    client: TestClient,
    queued: Callable[[], int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """POST /v1/events is served ahead of FastAPI's error middleware: it answers a bug with
    the same envelope itself, and logs it (which is what reaches Sentry)."""
    import worker.web

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(worker.web, "parse_event", broken)
    assert_error(send_event(client, ticket(), event_id=new_id()), 500, "internal")
    assert queued() == 0
    assert any(r.levelname == "ERROR" for r in caplog.records)
    assert "RuntimeError: a bug" in caplog.text


def test_the_event_route_is_documented(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/events"]["post"]
    assert set(operation["responses"]) >= {"200", "202", "400", "401", "413", "422", "503"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert "datafast_visitor_id" in body["properties"]


def test_header_map_lower_cases_names_and_keeps_the_first_of_repeated_headers() -> None:
    from worker.web import header_map

    scope = {"headers": [(b"Webhook-Id", b"first"), (b"webhook-id", b"second"), (b"x-a", b"\xe9")]}
    assert header_map(scope) == {"webhook-id": "first", "x-a": "é"}


def test_the_web_process_settles_the_garbage_collector_once_started(
    isolation: tuple[str, str], redis_server: str
) -> None:
    import gc

    from worker.runtime import GC_YOUNG_THRESHOLD

    prefix, queue = isolation
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        app = create_app(make_settings(prefix, queue))
        assert gc.get_freeze_count() == 0  # building the app settles nothing yet
        with TestClient(app) as started:
            assert started.get("/healthz").status_code == 200
            # What start-up built is out of the collector's sight, and the young
            # generation is collected less often; the older ones keep their thresholds.
            assert gc.get_freeze_count() > 10_000
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
