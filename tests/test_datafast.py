"""DataFast visitor profile (seed 000): parsing, mapping into JourneyContext, failure mapping.

Parsing and mapping are pure. The few tests of the source over HTTP send requests to an httpx
MockTransport; their shared limiter sits on the real Redis under a unique key prefix.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis
from fakes import full_profile, seed_000_profile

from config import Rate
from config.settings import load_settings
from worker.errors import AuthFailed, BadResponse, Unavailable, VisitorNotFound
from worker.http import UpstreamResponse
from worker.integrations.datafast import DataFastSource, VisitorProfile, to_journey
from worker.journey import RECENT_PAGES
from worker.ratelimit import SharedRateLimiter
from worker.source import parse_envelope

VID = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def response(body: Any, status: int = 200) -> UpstreamResponse:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return UpstreamResponse(
        service="datafast", status_code=status, headers=httpx.Headers(), content=content
    )


def journey(data: dict[str, Any]):
    return to_journey(parse_envelope(response({"status": "success", "data": data}), VisitorProfile))


# Seed 000 ---------------------------------------------------------------------------------


def test_seed_000_example_maps() -> None:
    ctx = journey(seed_000_profile())
    assert ctx.found
    assert ctx.provider == "DataFast"
    assert ctx.visitor_id == VID
    assert ctx.location.country == "US"
    assert ctx.technology.browser == "Chrome"
    assert ctx.technology.device == "desktop"
    assert ctx.visit_count == 3
    assert ctx.pageview_count == 8
    assert ctx.goals == [] and ctx.recent_pages == []
    assert ctx.profile is not None
    assert ctx.profile.user_id == "user_123"
    assert ctx.profile.metadata == {"plan": "pro"}
    assert ctx.profile.identified_at == datetime(2026, 5, 21, tzinfo=UTC)
    assert ctx.prediction is not None
    assert ctx.score == 72
    assert ctx.prediction.conversion_rate == pytest.approx(0.0138)
    assert ctx.prediction.expected_value == pytest.approx(3.09)
    assert ctx.prediction.confidence == pytest.approx(0.831)
    assert not ctx.prediction.estimated
    assert ctx.first_touch.is_empty
    assert ctx.first_touch.label == "direct"


# Every documented field ----------------------------------------------------------------------


def test_full_profile_maps_every_field() -> None:
    data = full_profile(VID, score=88, pages=13)
    ctx = journey(data)
    touch = ctx.first_touch
    assert touch.referrer == "https://news.ycombinator.com/"
    assert touch.utm_source == "hn-launch-week"
    assert touch.utm_medium == "social"
    assert touch.utm_campaign == "black-friday"
    assert touch.utm_term == "journey analytics"
    assert touch.utm_content == "banner-a"
    assert touch.ref == "producthunt"
    assert touch.via == "partner-42"
    assert touch.ad_click_ids == {"gclid": "Cj0KCQ-test-gclid", "fbclid": "IwAR-test-fbclid"}
    assert touch.label == "hn-launch-week / social / black-friday"

    assert ctx.location.country == "Germany"
    assert ctx.location.country_code == "DE"
    assert ctx.location.region == "Berlin"
    assert ctx.location.city == "Berlin"
    tech = ctx.technology
    assert (tech.browser, tech.browser_version) == ("Firefox", "133.0")
    assert (tech.os, tech.os_version) == ("Mac OS", "14.6")
    assert (tech.device, tech.device_vendor, tech.device_model) == ("desktop", "Apple", "Macintosh")

    assert ctx.visit_count == 17
    assert ctx.pageview_count == 42
    assert ctx.first_visit_at == datetime(2026, 11, 17, 9, 15, tzinfo=UTC)
    assert ctx.last_visit_at == datetime(2026, 11, 20, 14, 0, tzinfo=UTC)
    assert ctx.current_url == "https://example.com/pricing"

    # 13 pages in, the newest 10 out, newest first.
    assert len(ctx.recent_pages) == RECENT_PAGES == 10
    expected = sorted(data["activity"]["visitedPages"], key=lambda p: p["timestamp"])[::-1][:10]
    assert [p.url for p in ctx.recent_pages] == [p["url"] for p in expected]
    assert ctx.recent_pages[0].url == "https://example.com/pricing"
    assert all(a.at >= b.at for a, b in zip(ctx.recent_pages, ctx.recent_pages[1:], strict=False))
    assert "https://example.com/page-0" not in [p.url for p in ctx.recent_pages]

    assert [g.name for g in ctx.goals] == ["newsletter_signup", "trial_started", "Payment"]
    assert [g.name for g in ctx.payments] == ["trial_started", "Payment"]
    assert [g.name for g in ctx.conversion_goals] == ["newsletter_signup"]
    payment = ctx.goals[2]
    assert (payment.type, payment.origin) == ("payment", "payment_provider")
    assert payment.at == datetime(2026, 11, 20, 13, 0, tzinfo=UTC)

    assert ctx.profile is not None and ctx.profile.metadata == {"plan": "team", "seats": 5}
    assert ctx.score == 88
    assert ctx.prediction is not None and ctx.prediction.expected_value == pytest.approx(129.5)


def test_pages_sorted_newest_first_even_when_sent_shuffled() -> None:
    data = full_profile(VID, pages=12)
    pages = data["activity"]["visitedPages"]
    data["activity"]["visitedPages"] = pages[5:] + pages[:5][::-1]
    ctx = journey(data)
    stamps = [p.at for p in ctx.recent_pages]
    assert stamps == sorted(stamps, reverse=True)
    assert ctx.recent_pages[0].url == "https://example.com/pricing"


def test_subscription_goals_count_as_payments() -> None:
    data = full_profile(VID)
    data["activity"]["completedGoals"] = [
        {"name": "subscribed", "origin": "manual", "type": "subscription_started"},
        {"name": "clicked_cta", "origin": "manual", "type": "custom"},
    ]
    ctx = journey(data)
    assert [g.name for g in ctx.payments] == ["subscribed"]


def test_utm_params_are_case_insensitive_and_ref_is_a_fallback_label() -> None:
    data = full_profile(VID)
    data["identity"]["params"] = {"UTM_SOURCE": "Newsletter"}
    assert journey(data).first_touch.utm_source == "Newsletter"
    data["identity"]["params"] = {"ref": "producthunt"}
    del data["identity"]["referrer"]
    ctx = journey(data)
    assert ctx.first_touch.label == "producthunt"
    assert ctx.first_touch.referrer is None


# Nulls and unknowns ----------------------------------------------------------------------


def test_nulls_everywhere_do_not_crash() -> None:
    data = {
        "visitorId": VID,
        "identity": None,
        "activity": {
            "visitCount": None,
            "pageViewCount": None,
            "timeSinceFirstVisit": None,
            "timeSinceCurrentVisit": None,
            "firstVisitAt": None,
            "lastVisitAt": None,
            "currentUrl": None,
            "completedGoals": None,
            "visitedPages": None,
        },
        "profile": None,
        "prediction": None,
    }
    ctx = journey(data)
    assert ctx.found
    assert ctx.visit_count is None and ctx.first_visit_at is None
    assert ctx.recent_pages == [] and ctx.goals == []
    assert ctx.profile is None and ctx.prediction is None and ctx.score is None
    assert ctx.first_touch.label == "direct"


def test_null_identity_parts_and_fields() -> None:
    data = full_profile(VID)
    data["identity"] = {
        "country": None,
        "countryCode": None,
        "params": None,
        "adClickIds": None,
        "browser": None,
        "os": {"name": None, "version": None},
        "device": None,
        "viewport": {"width": None, "height": None},
    }
    data["activity"] = None
    data["profile"] = {"userId": "u1", "metadata": None, "identifiedAt": None}
    ctx = journey(data)
    assert ctx.technology.browser is None
    assert ctx.first_touch.ad_click_ids == {}
    assert ctx.profile is not None and ctx.profile.metadata == {}
    assert ctx.visit_count is None


def test_zero_session_fields_of_a_cookieless_visitor() -> None:
    data = {"visitorId": VID, "activity": {"visitCount": 0, "pageViewCount": 0}}
    ctx = journey(data)
    assert ctx.visit_count == 0 and ctx.pageview_count == 0


def test_minimal_data_only_visitor_id() -> None:
    ctx = journey({"visitorId": VID})
    assert ctx.visitor_id == VID and ctx.recent_pages == []


def test_unknown_fields_are_tolerated() -> None:
    data = full_profile(VID)
    data["brandNewSection"] = {"anything": [1, 2, 3]}
    data["identity"]["browser"]["engine"] = "Gecko"
    data["identity"]["language"] = "de-DE"
    data["activity"]["bounceRate"] = 0.3
    data["activity"]["visitedPages"][0]["title"] = "Home"
    data["activity"]["completedGoals"][0]["metadata"] = {"k": "v"}
    data["prediction"]["model"] = "v2"
    ctx = journey(data)
    assert ctx.visit_count == 17
    assert ctx.score == 85


def test_pages_without_url_or_time_are_handled() -> None:
    data = full_profile(VID, pages=2)
    data["activity"]["visitedPages"] += [{"url": "", "timestamp": None}, {"url": "/no-time"}]
    ctx = journey(data)
    urls = [p.url for p in ctx.recent_pages]
    assert "" not in urls
    assert "/no-time" in urls


# Bodies that are not the envelope ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Maintenance</body></html>",
        b"",
        b"null",
        b"[1, 2, 3]",
        b'"success"',
        json.dumps({"visitorId": VID, "identity": {}}).encode(),  # data without the envelope
        json.dumps({"status": "error", "error": {"code": 500, "message": "x"}}).encode(),
        json.dumps({"status": "success"}).encode(),
        json.dumps({"status": "success", "data": None}).encode(),
        json.dumps({"status": "success", "data": [seed_000_profile()]}).encode(),
        json.dumps({"status": "success", "data": {"identity": {}}}).encode(),  # no visitorId
        json.dumps(
            {"status": "success", "data": {**seed_000_profile(), "activity": {"visitCount": "x"}}}
        ).encode(),
        json.dumps(
            {"status": "success", "data": {**seed_000_profile(), "prediction": {"score": None}}}
        ).encode(),
    ],
)
def test_not_the_envelope_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(BadResponse) as caught:
        parse_envelope(response(body), VisitorProfile)
    assert not caught.value.retryable
    assert caught.value.service == "datafast"
    assert "datafast" in str(caught.value)


# The source over HTTP (scripted transport) -------------------------------------------------


@pytest.fixture
def source_with(
    key_prefix: str, redis_client: redis.Redis, redis_server: str
) -> Callable[..., DataFastSource]:
    """A DataFastSource whose requests go to ``handler``; the shared limiter and circuit
    breaker use the real Redis under this test's own key prefix."""

    def make(handler: Callable[[httpx.Request], httpx.Response], **env: Any) -> DataFastSource:
        settings = load_settings(
            _env_file=None,
            redis_url=redis_server,
            redis_key_prefix=key_prefix,
            datafast_api_key=env.pop("key", "df_website_key"),
            datafast_base_url="http://fake.local/datafast",
            datafast_rate_limit=Rate(100, 1),
            **env,
        )
        limiter = SharedRateLimiter(redis_client, key_prefix)
        source = DataFastSource(settings, limiter)
        source.http._client = httpx.Client(transport=httpx.MockTransport(handler))
        return source

    return make


def test_fetch_calls_the_documented_url_with_bearer(source_with) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "data": seed_000_profile()})

    ctx = source_with(handler).fetch_journey(VID)
    assert ctx.visit_count == 3
    assert seen[0].method == "GET"
    assert str(seen[0].url) == f"http://fake.local/datafast/api/v1/visitors/{VID}"
    assert seen[0].headers["authorization"] == "Bearer df_website_key"


def test_fetch_with_an_account_token_sends_website_id(source_with) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "data": seed_000_profile()})

    source_with(handler, key="dft_account", datafast_website_id="site-9").fetch_journey(VID)
    assert seen[0].url.params["websiteId"] == "site-9"
    assert seen[0].headers["authorization"] == "Bearer dft_account"


def _error(status: int, message: str) -> Callable[[httpx.Request], httpx.Response]:
    body = {"status": "error", "error": {"code": status, "message": message}}
    return lambda request: httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "message"),
    [(404, "No pageviews found for this visitor"), (400, "Visitor is a bot")],
)
def test_no_journey_answers_are_visitor_not_found(source_with, status: int, message: str) -> None:
    with pytest.raises(VisitorNotFound) as caught:
        source_with(_error(status, message)).fetch_journey(VID)
    assert caught.value.status_code == status
    assert message in str(caught.value)
    assert not caught.value.retryable


@pytest.mark.parametrize("status", [401, 403])
def test_auth_answers_are_auth_failed(source_with, status: int) -> None:
    with pytest.raises(AuthFailed) as caught:
        source_with(_error(status, "Invalid API key")).fetch_journey(VID)
    assert not isinstance(caught.value, VisitorNotFound)
    assert not caught.value.retryable


def test_500_is_retryable(source_with) -> None:
    with pytest.raises(Unavailable):
        source_with(_error(500, "Internal error")).fetch_journey(VID)


def test_source_does_not_mutate_its_input() -> None:
    data = full_profile(VID)
    before = copy.deepcopy(data)
    journey(data)
    assert data == before
