"""Several DataFast websites (``DATAFAST_WEBSITES``): parsing, the key each event's website
uses, one rate limit per key, unknown websites refused at the door; and emails the sender's
app accepted are accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fakes import full_profile
from fastapi.testclient import TestClient
from harness import TEST_SECRET, sign

from config import ConfigError, load_settings
from worker.errors import Rejected
from worker.integrations.datafast import DataFastSource
from worker.ratelimit import SharedRateLimiter
from worker.web import create_app

VID = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
WEBSITES = "shop=df_shopkey,blog=dft_accounttoken:site-9"


def test_websites_parse_and_bad_values_name_the_variable() -> None:
    settings = load_settings(_env_file=None, datafast_websites=WEBSITES)
    shop, blog = settings.websites.values()
    assert (shop.name, shop.api_key.get_secret_value(), shop.website_id) == (
        "shop",
        "df_shopkey",
        None,
    )
    assert (blog.name, blog.website_id) == ("blog", "site-9")
    assert (
        "df_shopkey" in settings.secret_values() and "dft_accounttoken" in settings.secret_values()
    )
    for bad, words in [
        ("shop", "entry 1 must be name=df_key"),
        ("shop=sk_live_S3CRET", "shop: the key must be a df_ website key"),
        ("blog=dft_T0KEN", "blog: a dft_ account token needs :websiteId"),
        ("a=df_1,a=df_2", "a: named twice"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(_env_file=None, datafast_websites=bad)
        assert "DATAFAST_WEBSITES" in str(caught.value) and words in str(caught.value)
        assert "S3CRET" not in str(caught.value) and "T0KEN" not in str(caught.value)


@pytest.fixture
def seen() -> list[httpx.Request]:
    return []


@pytest.fixture
def source(seen: list[httpx.Request], redis_client: redis.Redis, key_prefix: str) -> DataFastSource:
    settings = load_settings(
        _env_file=None,
        redis_key_prefix=key_prefix,
        datafast_api_key="df_defaultkey",
        datafast_websites=WEBSITES,
        datafast_base_url="http://fake.local",
        datafast_rate_limit="2",
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "data": full_profile()})

    src = DataFastSource(settings, SharedRateLimiter(redis_client, key_prefix))
    transport = httpx.Client(transport=httpx.MockTransport(handler))
    for client in [src.http, *src.websites.values()]:
        client._client = transport
    return src


def test_each_website_uses_its_own_key(source: DataFastSource, seen: list[httpx.Request]) -> None:
    source.fetch_journey(VID)
    source.fetch_journey(VID, "shop")
    source.fetch_journey(VID, "blog")
    auth = [r.headers["authorization"] for r in seen]
    assert auth == ["Bearer df_defaultkey", "Bearer df_shopkey", "Bearer dft_accounttoken"]
    assert [r.url.params.get("websiteId") for r in seen] == [None, None, "site-9"]
    with pytest.raises(
        Rejected, match="unknown website 'nope'; DATAFAST_WEBSITES names shop, blog"
    ):
        source.fetch_journey(VID, "nope")


def test_the_rate_limit_is_per_key(
    source: DataFastSource, seen: list[httpx.Request], redis_client: redis.Redis, key_prefix: str
) -> None:
    # Two requests a second per key: two on each of three keys go out without waiting.
    for website in (None, "shop", "blog", None, "shop", "blog"):
        source.fetch_journey(VID, website)
    assert len(seen) == 6
    services = {c.service for c in [source.http, *source.websites.values()]}
    assert services == {"datafast", "datafast:shop", "datafast:blog"}
    limiter_keys = {k.decode() for k in redis_client.scan_iter(f"{key_prefix}*")}
    for service in services:
        assert any(service in key for key in limiter_keys), (service, limiter_keys)


def test_the_realtime_poll_reads_every_website(
    source: DataFastSource, seen: list[httpx.Request]
) -> None:
    def realtime(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        key = request.headers["authorization"].removeprefix("Bearer ")
        visitor = {"visitorId": f"v-{key}", "currentUrl": "/pricing"}
        return httpx.Response(200, json={"status": "success", "data": {"visitors": [visitor]}})

    transport = httpx.Client(transport=httpx.MockTransport(realtime))
    for client in [source.http, *source.websites.values()]:
        client._client = transport
    snapshot = source.fetch_realtime()
    assert [v.visitor_id for v in snapshot.visitors] == [
        "v-df_defaultkey",
        "v-df_shopkey",
        "v-dft_accounttoken",
    ]


# At the door --------------------------------------------------------------------------------


@pytest.fixture
def client(key_prefix: str, redis_client: redis.Redis) -> Iterator[TestClient]:
    settings = load_settings(
        _env_file=None,
        redis_key_prefix=key_prefix,
        celery_queue=f"{key_prefix}queue",
        webhook_secret=TEST_SECRET,
        datafast_api_key="df_defaultkey",
        datafast_websites=WEBSITES,
        rocketchat_webhook_token="rc-token",
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    redis_client.delete(f"{key_prefix}queue")


def post(client: TestClient, payload: dict[str, Any], event_id: str) -> httpx.Response:
    body = json.dumps(payload).encode()
    return client.post("/v1/events", content=body, headers=sign(body, msg_id=event_id))


def test_an_event_names_a_known_website_or_is_refused(client: TestClient) -> None:
    ok = post(client, {"type": "signup", "datafast_visitor_id": VID, "website": "shop"}, "w1")
    assert ok.status_code == 202
    status = ok.json()
    assert status["data"]["state"] == "queued"
    bad = post(client, {"type": "signup", "datafast_visitor_id": VID, "website": "nope"}, "w2")
    assert bad.status_code == 422
    assert bad.json()["error"]["message"] == ("website: unknown website 'nope'; known: blog, shop")


def test_a_webhook_path_may_name_the_website(client: TestClient) -> None:
    payload = {
        "_id": "room-1",
        "type": "LivechatSessionStart",
        "visitor": {"_id": "lv-1", "customFields": {"datafast_visitor_id": VID}},
    }
    headers = {"x-rocketchat-livechat-token": "rc-token"}
    bad = client.post("/v1/webhooks/rocketchat?website=nope", json=payload, headers=headers)
    assert bad.status_code == 422 and "unknown website 'nope'" in bad.json()["error"]["message"]
    ok = client.post("/v1/webhooks/rocketchat?website=blog", json=payload, headers=headers)
    assert ok.status_code == 200 and ok.json()["data"]["state"] == "queued"
    stored = client.app.state.runtime.store.load_event("rc:room-1")  # type: ignore[attr-defined]
    assert stored.website == "blog"


@pytest.mark.parametrize(
    "email", ["qa@shop.test", "ops@intranet.local", "first.last+tag@xn--bcher-kva.example"]
)
def test_emails_the_sender_accepted_are_accepted(client: TestClient, email: str) -> None:
    payload = {"type": "signup", "datafast_visitor_id": VID, "email": email}
    answer = post(client, payload, f"mail-{email}")
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize(
    ("email", "words"),
    [
        ("no-at-sign", "email: "),
        ("two@@signs.test", "email: "),
        ("@nolocal.test", "email: "),
        ("nodomain@", "email: "),
        ("with space@x.test", "email: "),
        ("a" * 250 + "@x.test", "email: "),
    ],
)
def test_emails_that_are_not_addresses_are_refused(
    client: TestClient, email: str, words: str
) -> None:
    payload = {"type": "signup", "datafast_visitor_id": VID, "email": email}
    answer = post(client, payload, f"bad-{len(email)}-{email[:5]}")
    assert answer.status_code == 422
    assert answer.json()["error"]["message"].startswith(words)
