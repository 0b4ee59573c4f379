"""PostMetric (seed 001) into the journey context, its error envelopes, and the explainable
lead score used when a provider gives none."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from seed_fakes import POSTMETRIC_KEY, SeedFake, postmetric_seed_001

from config import load_settings
from worker.errors import AuthFailed, Rejected, VisitorNotFound
from worker.integrations import SOURCES
from worker.integrations.postmetric import PostMetricSource, PostMetricVisitor, to_journey
from worker.integrations.rocketchat import render_rocketchat_message
from worker.integrations.slack import render_slack_alert
from worker.journey import Goal, JourneyContext, PageVisit
from worker.ratelimit import SharedRateLimiter
from worker.score import ScoreWeights, estimate_score, hot_path_of
from worker.templates import render_text

NOW = datetime(2024, 1, 20, 16, 22, tzinfo=UTC)
TIMES = "\N{MULTIPLICATION SIGN}"


# Mapping -----------------------------------------------------------------------------------


def test_seed_001_maps_onto_the_journey() -> None:
    data = postmetric_seed_001()
    data["pageViews"].append(
        {
            "path": "/pricing?utm_source=ignored-not-first",
            "title": "Pricing",
            "timestamp": "2024-01-20T14:20:00Z",
            "referrer": None,
        }
    )
    ctx = to_journey(PostMetricVisitor.model_validate(data))
    assert ctx.provider == "PostMetric"
    assert ctx.visitor_id == "visitor_123"
    assert ctx.found and ctx.prediction is None
    assert ctx.first_touch.referrer == "https://google.com"
    assert ctx.first_touch.utm_source is None  # from the earliest pageview only
    assert ctx.technology.device == "desktop"
    assert ctx.technology.browser == "chrome"
    assert ctx.technology.os == "windows"
    assert ctx.location.country_code == "US"
    assert ctx.visit_count == 5
    assert ctx.pageview_count == 42
    assert ctx.first_visit_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert ctx.last_visit_at == datetime(2024, 1, 20, 14, 22, tzinfo=UTC)
    assert [(p.url, p.title) for p in ctx.recent_pages] == [
        ("/pricing?utm_source=ignored-not-first", "Pricing"),
        ("/", "Homepage"),
    ]
    assert ctx.current_url == "/pricing?utm_source=ignored-not-first"


def test_latest_session_and_utm_of_the_first_page() -> None:
    data = postmetric_seed_001()
    data["sessions"].append(
        {
            "sessionId": "s2",
            "firstVisitAt": "2024-01-20T14:00:00Z",
            "lastSeenAt": "2024-01-20T14:22:00Z",
            "device": "mobile",
            "browser": "safari",
            "os": "ios",
            "country": "FR",
        }
    )
    data["pageViews"][0]["path"] = "/?utm_source=newsletter&utm_medium=email"
    ctx = to_journey(PostMetricVisitor.model_validate(data))
    assert (ctx.technology.device, ctx.location.country_code) == ("mobile", "FR")
    assert ctx.first_touch.utm_source == "newsletter"
    assert ctx.first_touch.label == "newsletter / email"


def test_nulls_and_unknown_fields_are_tolerated() -> None:
    data: dict[str, Any] = {
        "visitorId": "v-9",
        "sessionCount": None,
        "pageViewCount": None,
        "firstVisit": None,
        "lastVisit": None,
        "sessions": None,
        "pageViews": [
            {"path": None, "title": None, "timestamp": None, "referrer": None},
            {"path": "/docs", "timestamp": "2024-02-01T09:00:00Z", "extra": {"x": 1}},
        ],
        "somethingNew": True,
    }
    ctx = to_journey(PostMetricVisitor.model_validate(data))
    assert ctx.visit_count is None
    assert ctx.pageview_count == 1
    assert [p.url for p in ctx.recent_pages] == ["/docs"]
    assert ctx.last_visit_at == datetime(2024, 2, 1, 9, tzinfo=UTC)


def test_recent_pages_are_newest_first_and_at_most_ten() -> None:
    data = postmetric_seed_001()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    data["pageViews"] = [
        {"path": f"/p{i}", "title": f"P{i}", "timestamp": (start + timedelta(hours=i)).isoformat()}
        for i in range(15)
    ]
    ctx = to_journey(PostMetricVisitor.model_validate(data))
    assert [p.url for p in ctx.recent_pages] == [f"/p{i}" for i in range(14, 4, -1)]


def test_postmetric_is_registered_without_uuid_rule() -> None:
    assert SOURCES["postmetric"] is PostMetricSource
    assert PostMetricSource.requires_uuid is False


# Errors against a fake PostMetric ------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[SeedFake]:
    with SeedFake() as server:
        server.postmetric_visitors["visitor_123"] = postmetric_seed_001()
        yield server


def _source(fake: SeedFake, prefix: str, key: str = POSTMETRIC_KEY) -> PostMetricSource:
    settings = load_settings(
        _env_file=None,
        redis_url="redis://127.0.0.1:6379/0",
        redis_key_prefix=prefix,
        source="postmetric",
        postmetric_api_key=key,
        postmetric_base_url=f"{fake.url}/postmetric",
    )
    client = redis.Redis.from_url(settings.redis_url)
    return PostMetricSource(settings, SharedRateLimiter(client, prefix))


def test_fetches_with_bearer_key(fake: SeedFake, key_prefix: str) -> None:
    ctx = _source(fake, key_prefix).fetch_journey("visitor_123")
    assert ctx.visit_count == 5
    (request,) = fake.seen("postmetric")
    assert request.headers["authorization"] == f"Bearer {POSTMETRIC_KEY}"
    assert request.query == {"visitorId": "visitor_123"}


def test_401_is_a_clear_auth_failure(fake: SeedFake, key_prefix: str) -> None:
    with pytest.raises(AuthFailed) as caught:
        _source(fake, key_prefix, key="pm_wrong").fetch_journey("visitor_123")
    assert "Unauthorized. Invalid or missing API key." in str(caught.value)
    assert "POSTMETRIC_API_KEY" in str(caught.value)
    assert not caught.value.retryable


def test_400_missing_id_is_rejected_not_not_found(fake: SeedFake, key_prefix: str) -> None:
    with pytest.raises(Rejected) as caught:
        _source(fake, key_prefix).fetch_journey("")
    assert not isinstance(caught.value, VisitorNotFound)
    assert "visitorId parameter is required" in str(caught.value)


def test_unknown_visitor_is_not_found(fake: SeedFake, key_prefix: str) -> None:
    with pytest.raises(VisitorNotFound) as caught:
        _source(fake, key_prefix).fetch_journey("visitor_nope")
    assert "Visitor not found" in str(caught.value)


def test_check_reports_reachability(fake: SeedFake, key_prefix: str) -> None:
    assert "answered" in _source(fake, key_prefix).check()
    with pytest.raises(AuthFailed):
        _source(fake, key_prefix, key="pm_wrong").check()


# The score ---------------------------------------------------------------------------------


def _ctx(**values: Any) -> JourneyContext:
    return JourneyContext(provider="PostMetric", visitor_id="v1", **values)


def _pricing_views(n: int, other: int = 2) -> list[PageVisit]:
    pages = [PageVisit(url=f"https://example.com/pricing?x={i}") for i in range(n)]
    return pages + [PageVisit(url=f"/blog/{i}") for i in range(other)]


def test_reasons_and_estimate_flag() -> None:
    ctx = _ctx(
        recent_pages=_pricing_views(3),
        visit_count=4,
        pageview_count=12,
        first_visit_at=NOW - timedelta(days=7),
        last_visit_at=NOW - timedelta(hours=2),
        goals=[Goal(name="signup", type="custom")],
    )
    p = estimate_score(ctx, ScoreWeights(), NOW)
    assert p.estimated is True
    assert 0 <= p.score <= 100
    text = " | ".join(p.reasons)
    assert f"visited /pricing 3{TIMES}" in text
    assert "4 visits in 7 days" in text
    assert "last visit 2 h ago" in text
    assert "completed goal signup" in text
    assert "12 pageviews" in text


def test_bounds_and_empty_journey() -> None:
    assert estimate_score(_ctx(), ScoreWeights(), NOW).score == 0
    huge = ScoreWeights(hot_page=100, visit=100, goal=100, recency=100, pageviews=100)
    busy = _ctx(
        recent_pages=_pricing_views(10, 0),
        visit_count=50,
        pageview_count=500,
        last_visit_at=NOW,
        goals=[Goal(name="a"), Goal(name="b")],
    )
    assert estimate_score(busy, huge, NOW).score == 100


def test_monotonic_in_pricing_visits() -> None:
    scores = [
        estimate_score(_ctx(recent_pages=_pricing_views(n), visit_count=2), ScoreWeights(), NOW)
        for n in range(5)
    ]
    values = [s.score for s in scores]
    assert values == sorted(values)
    assert values[3] > values[0]


def test_payment_means_a_customer() -> None:
    ctx = _ctx(goals=[Goal(name="Payment", type="payment", origin="payment_provider")])
    p = estimate_score(ctx, ScoreWeights(), NOW)
    assert p.score == 100 and p.estimated and "already paid" in p.reasons[0]


def test_weights_come_from_settings() -> None:
    settings = load_settings(
        _env_file=None, score_weight_hot_page=30, hot_paths="/demo", score_weight_recency=0
    )
    weights = ScoreWeights.from_settings(settings)
    assert weights.hot_page == 30 and weights.hot_paths == ("/demo",)
    p = estimate_score(_ctx(recent_pages=[PageVisit(url="/demo/book")]), weights, NOW)
    assert p.score == 30


def test_hot_path_matching() -> None:
    paths = ("/pricing", "/checkout")
    assert hot_path_of("/pricing", paths) == "/pricing"
    assert hot_path_of("https://a.example/pricing/team?plan=pro#x", paths) == "/pricing"
    assert hot_path_of("/pricing-old", paths) is None
    assert hot_path_of("/blog?next=/pricing", paths) is None
    assert hot_path_of(None, paths) is None
    assert hot_path_of("/", ("/",)) == "/" and hot_path_of("/x", ("/",)) is None


def test_renderers_say_estimate() -> None:
    from worker.events import Event

    ctx = _ctx(recent_pages=_pricing_views(3), visit_count=4, last_visit_at=NOW)
    ctx = ctx.model_copy(update={"prediction": estimate_score(ctx, ScoreWeights(), NOW)})
    event = Event(id="e1", type="signup", email="ada@example.com", room_id="r1")
    for text in (
        render_text(event, ctx),
        render_rocketchat_message(event, ctx),
        str(render_slack_alert(event, ctx)),
    ):
        assert "(estimate)" in text
        assert "not by PostMetric" in text
        assert f"visited /pricing 3{TIMES}" in text
