"""Pin the output of every sink's renderer and of ``worker/formats.py`` (no network, no
settings)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from worker.events import Event
from worker.integrations.hubspot import (
    HUBSPOT_PROPERTIES,
    HUBSPOT_PROPERTY_GROUP,
    hubspot_contact_properties,
    render_hubspot_note_html,
)
from worker.integrations.hubspot import NOTE_MAX_CHARS as HUBSPOT_NOTE_MAX_CHARS
from worker.integrations.rocketchat import MESSAGE_MAX_CHARS as ROCKETCHAT_MAX_CHARS
from worker.integrations.rocketchat import render_rocketchat_message
from worker.integrations.slack import render_slack_alert
from worker.journey import (
    FirstTouch,
    Goal,
    IdentifiedProfile,
    JourneyContext,
    Location,
    PageVisit,
    Prediction,
    Technology,
)
from worker.templates import render_html, render_markdown, render_text
from worker.text import format_datetime

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
MARKER = "visitor-enrich:evt_123"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def event() -> Event:
    return Event(
        id="evt_123",
        type="signup",
        visitor_id=VISITOR,
        email="ada@example.com",
        name="Ada Lovelace",
    )


@pytest.fixture
def full() -> JourneyContext:
    return JourneyContext(
        provider="datafast",
        visitor_id=VISITOR,
        first_touch=FirstTouch(
            referrer="https://www.google.com/",
            utm_source="google",
            utm_medium="cpc",
            utm_campaign="spring_sale",
            ref="producthunt",
            via="ada",
            ad_click_ids={"gclid": "Cj0K", "fbclid": "IwAR"},
        ),
        location=Location(
            country="France", country_code="FR", region="Île-de-France", city="Paris"
        ),
        technology=Technology(
            device="desktop",
            device_vendor="Apple",
            device_model="MacBook Pro",
            browser="Chrome",
            browser_version="120.0",
            os="Mac OS",
            os_version="14.1",
        ),
        first_visit_at=at(20, 9),
        last_visit_at=at(22, 9, 55),
        visit_count=3,
        pageview_count=8,
        current_url="https://example.com/signup",
        recent_pages=[
            PageVisit(url="https://example.com/signup", at=at(22, 9, 58), title="Sign up"),
            PageVisit(url="https://example.com/pricing", at=at(22, 9, 56)),
            PageVisit(url="/docs/api"),
        ],
        goals=[
            Goal(name="newsletter_signup", type="custom", origin="manual", at=at(21, 12)),
            Goal(
                name="checkout_completed",
                type="payment",
                origin="payment_provider",
                at=at(22, 9, 59),
            ),
        ],
        profile=IdentifiedProfile(
            user_id="user_123", metadata={"plan": "pro", "seats": 5}, identified_at=at(22, 10)
        ),
        prediction=Prediction(
            score=72, conversion_rate=0.0138, expected_value=3.09, confidence=0.831
        ),
    )


@pytest.fixture
def estimated(full: JourneyContext) -> JourneyContext:
    prediction = Prediction(
        score=41.5,
        expected_value=12,
        estimated=True,
        reasons=["visited /pricing twice", "3 visits in 2 days"],
    )
    return full.model_copy(update={"prediction": prediction})


@pytest.fixture
def missing() -> JourneyContext:
    return JourneyContext.not_found("datafast", VISITOR, "no pageviews for this visitor")


@pytest.fixture
def sparse() -> JourneyContext:
    """Only a few fields known: nothing else may show up, least of all "None"."""
    return JourneyContext(
        provider="datafast",
        visitor_id=VISITOR,
        location=Location(country_code="US"),
        technology=Technology(browser="Chrome"),
        visit_count=1,
        recent_pages=[PageVisit(url="/pricing")],
        profile=IdentifiedProfile(user_id="u1", metadata={"plan": None, "note": ""}),
        prediction=Prediction(score=10),
    )


def slack_text(payload: dict[str, Any]) -> str:
    """Every mrkdwn text of a Slack payload (the plain_text header is shown literally)."""
    parts = [payload["text"]]
    for block in payload["blocks"]:
        if "text" in block and block["text"]["type"] == "mrkdwn":
            parts.append(block["text"]["text"])
        parts += [f["text"] for f in block.get("fields", [])]
        parts += [e["text"] for e in block.get("elements", [])]
    return "\n".join(parts)


RENDERERS: list[Callable[[Event, JourneyContext], str]] = [
    render_text,
    render_html,
    render_hubspot_note_html,
    render_rocketchat_message,
    lambda e, c: slack_text(render_slack_alert(e, c)),
]
RENDERER_IDS = ["text", "zendesk", "hubspot", "rocketchat", "slack"]


# --------------------------------------------------------------------------- shared helpers


def test_format_datetime_is_utc_minutes() -> None:
    assert format_datetime(at(22, 10)) == "2026-11-22 10:00 UTC"
    paris = timezone(timedelta(hours=1))
    assert format_datetime(datetime(2026, 11, 22, 11, 0, 59, tzinfo=paris)) == (
        "2026-11-22 10:00 UTC"
    )
    assert format_datetime(datetime(2026, 11, 22, 10, 0)) == "2026-11-22 10:00 UTC"


# --------------------------------------------------------------------------- text snapshots


def test_text_full_snapshot(event: Event, full: JourneyContext) -> None:
    assert (
        render_text(event, full)
        == """\
Visitor journey from DataFast for Ada Lovelace <ada@example.com>

Visitor ID: a3ab2331-989f-4cfa-91c6-2461c9e3c6bd
First touch: google / cpc / spring_sale
Referrer: https://www.google.com/
UTM source: google
UTM medium: cpc
UTM campaign: spring_sale
Ref: producthunt
Via: ada
Ad click IDs: fbclid: IwAR, gclid: Cj0K
Location: Paris, Île-de-France, France
Device: desktop (Apple MacBook Pro)
Browser: Chrome 120.0
OS: Mac OS 14.1
First visit: 2026-11-20 09:00 UTC
Last visit: 2026-11-22 09:55 UTC
Visits: 3
Pageviews: 8

Last pages (newest first):
- 2026-11-22 09:58 UTC https://example.com/signup (Sign up)
- 2026-11-22 09:56 UTC https://example.com/pricing
- /docs/api

Goals:
- 2026-11-21 12:00 UTC newsletter_signup (custom)

Payments:
- 2026-11-22 09:59 UTC checkout_completed (payment)

Identify profile:
User ID: user_123
Identified: 2026-11-22 10:00 UTC
plan: pro
seats: 5

Prediction:
Lead score: 72/100
Conversion rate: 1.38%
Expected value: 3.09 USD
Confidence: 83.1%

visitor-enrich:evt_123"""
    )


def test_text_estimated_prediction_snapshot(event: Event, estimated: JourneyContext) -> None:
    text = render_text(event, estimated)
    assert text.endswith("""
Prediction:
Lead score: 41.5/100 (estimate)
Expected value: 12.00 USD
Estimated by visitor-enrich, not by DataFast: DataFast gave no prediction for this visitor. \
Based on:
- visited /pricing twice
- 3 visits in 2 days

visitor-enrich:evt_123""")


def test_text_sparse_snapshot(event: Event, sparse: JourneyContext) -> None:
    assert (
        render_text(event, sparse)
        == """\
Visitor journey from DataFast for Ada Lovelace <ada@example.com>

Visitor ID: a3ab2331-989f-4cfa-91c6-2461c9e3c6bd
First touch: direct
Location: US
Browser: Chrome
Visits: 1

Last pages (newest first):
- /pricing

Identify profile:
User ID: u1

Prediction:
Lead score: 10/100

visitor-enrich:evt_123"""
    )


def test_text_not_found_snapshot(event: Event, missing: JourneyContext) -> None:
    assert render_text(event, missing) == (
        "No visitor journey found for visitor a3ab2331-989f-4cfa-91c6-2461c9e3c6bd at DataFast: "
        "no pageviews for this visitor.\n\nvisitor-enrich:evt_123"
    )


def test_text_not_found_without_reason(event: Event) -> None:
    ctx = JourneyContext(provider="postmetric", visitor_id="v1", found=False)
    assert render_text(event, ctx) == (
        "No visitor journey found for visitor v1 at PostMetric.\n\nvisitor-enrich:evt_123"
    )


def test_title_without_name_or_email(full: JourneyContext) -> None:
    anonymous = Event(id="evt_9", type="livechat", room_id="r1", visitor_id=VISITOR)
    assert render_text(anonymous, full).startswith("Visitor journey from DataFast\n\n")


# --------------------------------------------------------------------------- all renderers


@pytest.mark.parametrize("render", RENDERERS, ids=RENDERER_IDS)
@pytest.mark.parametrize("which", ["full", "estimated", "missing", "sparse"])
def test_marker_in_every_output(
    render: Callable[[Event, JourneyContext], str],
    which: str,
    event: Event,
    request: pytest.FixtureRequest,
) -> None:
    ctx: JourneyContext = request.getfixturevalue(which)
    assert MARKER in render(event, ctx)


@pytest.mark.parametrize("render", RENDERERS, ids=RENDERER_IDS)
def test_not_found_is_short_and_honest(
    render: Callable[[Event, JourneyContext], str], event: Event, missing: JourneyContext
) -> None:
    out = render(event, missing)
    assert f"No visitor journey found for visitor {VISITOR} at DataFast" in out
    assert "no pageviews for this visitor" in out
    assert "Lead score" not in out
    assert len(out) < 1_000


@pytest.mark.parametrize("render", RENDERERS, ids=RENDERER_IDS)
def test_sparse_context_prints_no_none(
    render: Callable[[Event, JourneyContext], str], event: Event, sparse: JourneyContext
) -> None:
    out = render(event, sparse)
    assert "None" not in out
    assert "null" not in out
    for absent in (
        "Referrer",
        "UTM",
        "Last visit",
        "Pageviews",
        "Expected value",
        "Goals",
        "Payments",
        "plan",
        "note:",
    ):
        assert absent not in out


@pytest.mark.parametrize("render", RENDERERS, ids=RENDERER_IDS)
def test_estimated_score_says_estimate(
    render: Callable[[Event, JourneyContext], str], event: Event, estimated: JourneyContext
) -> None:
    out = render(event, estimated)
    assert "estimate" in out.lower()
    if render is not render_hubspot_note_html and render is not render_html:
        assert "Estimated by visitor-enrich, not by DataFast" in out
    assert "visited /pricing twice" in out


# --------------------------------------------------------------------------- HTML


def test_zendesk_html_names_every_fact(event: Event, full: JourneyContext) -> None:
    out = render_html(event, full)
    for fragment in (
        "<p><strong>Visitor journey from DataFast for Ada Lovelace &lt;ada@example.com&gt;"
        "</strong></p>",
        "<li><strong>Referrer:</strong> https://www.google.com/</li>",
        "<li><strong>UTM source:</strong> google</li>",
        "<li><strong>UTM medium:</strong> cpc</li>",
        "<li><strong>UTM campaign:</strong> spring_sale</li>",
        "<li><strong>Ref:</strong> producthunt</li>",
        "<li><strong>Via:</strong> ada</li>",
        "<li><strong>Ad click IDs:</strong> fbclid: IwAR, gclid: Cj0K</li>",
        "<li><strong>Location:</strong> Paris, Île-de-France, France</li>",
        "<li><strong>Device:</strong> desktop (Apple MacBook Pro)</li>",
        "<li><strong>Browser:</strong> Chrome 120.0</li>",
        "<li><strong>OS:</strong> Mac OS 14.1</li>",
        "<li><strong>First visit:</strong> 2026-11-20 09:00 UTC</li>",
        "<li><strong>Last visit:</strong> 2026-11-22 09:55 UTC</li>",
        "<li><strong>Visits:</strong> 3</li>",
        "<li><strong>Pageviews:</strong> 8</li>",
        "<p><strong>Last pages (newest first)</strong></p><ol>"
        "<li>2026-11-22 09:58 UTC https://example.com/signup (Sign up)</li>"
        "<li>2026-11-22 09:56 UTC https://example.com/pricing</li><li>/docs/api</li></ol>",
        "<p><strong>Goals</strong></p><ul>"
        "<li>2026-11-21 12:00 UTC newsletter_signup (custom)</li></ul>",
        "<p><strong>Payments</strong></p><ul>"
        "<li>2026-11-22 09:59 UTC checkout_completed (payment)</li></ul>",
        "<li><strong>User ID:</strong> user_123</li>",
        "<li><strong>plan:</strong> pro</li><li><strong>seats:</strong> 5</li>",
        "<li><strong>Lead score:</strong> 72/100</li>",
        "<li><strong>Conversion rate:</strong> 1.38%</li>",
        "<li><strong>Expected value:</strong> 3.09 USD</li>",
        "<li><strong>Confidence:</strong> 83.1%</li>",
    ):
        assert fragment in out
    assert out.endswith("<p><small>visitor-enrich:evt_123</small></p>")
    assert "\n" not in out


def test_zendesk_html_estimate(event: Event, estimated: JourneyContext) -> None:
    out = render_html(event, estimated)
    assert "<li><strong>Lead score:</strong> 41.5/100 (estimate)</li>" in out
    assert (
        "<p><em>Estimated by visitor-enrich, not by DataFast: DataFast gave no prediction "
        "for this visitor. Based on:</em></p>"
        "<ul><li>visited /pricing twice</li><li>3 visits in 2 days</li></ul>"
    ) in out


def test_zendesk_shows_at_most_ten_pages(event: Event, full: JourneyContext) -> None:
    pages = [PageVisit(url=f"/p{i}", at=at(23, 9, i)) for i in range(15)]
    out = render_html(event, full.model_copy(update={"recent_pages": pages}))
    assert out.count("<li>2026-11-23 09:") == 10
    assert "/p9</li>" in out
    assert "/p10<" not in out


def test_not_found_html(event: Event, missing: JourneyContext) -> None:
    expected = (
        f"<p>No visitor journey found for visitor {VISITOR} at DataFast: no pageviews for this "
        "visitor.</p><p><small>visitor-enrich:evt_123</small></p>"
    )
    assert render_html(event, missing) == expected
    assert render_hubspot_note_html(event, missing) == expected


@pytest.mark.parametrize("render", [render_html, render_hubspot_note_html])
def test_html_escapes_provider_and_user_text(
    render: Callable[[Event, JourneyContext], str], full: JourneyContext
) -> None:
    event = Event(id="evt_123", type="signup", visitor_id=VISITOR, name="<b>Eve</b> & co")
    ctx = full.model_copy(
        update={
            "recent_pages": [PageVisit(url="https://x.test/?q=<script>alert(1)</script>")],
            "profile": IdentifiedProfile(
                user_id='u"1', metadata={"<img src=x>": "<script>alert('m')</script>"}
            ),
        }
    )
    out = render(event, ctx)
    assert "<script>" not in out
    assert "<img" not in out
    assert "<b>" not in out
    assert "https://x.test/?q=&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;script&gt;alert(&#39;m&#39;)&lt;/script&gt;" in out
    assert "<strong>&lt;img src=x&gt;:</strong>" in out
    assert "&lt;b&gt;Eve&lt;/b&gt; &amp; co" in out
    assert "u&#34;1" in out


def test_html_escapes_marker() -> None:
    event = Event(id="a<b>&c", type="signup", visitor_id=VISITOR)
    ctx = JourneyContext(provider="datafast", visitor_id=VISITOR)
    assert "<small>visitor-enrich:a&lt;b&gt;&amp;c</small>" in render_html(event, ctx)


# --------------------------------------------------------------------------- Markdown


def test_markdown_names_every_section_and_numbers_pages(event: Event, full: JourneyContext) -> None:
    out = render_markdown(event, full)
    assert out.startswith(
        "**Visitor journey from DataFast for Ada Lovelace \\<ada@example.com\\>**"
    )
    assert "- **First touch:** " in out
    assert f"- **Visitor ID:** {VISITOR}" in out
    assert "**Last pages (newest first)**" in out
    assert "\n1. " in out and "\n2. " in out
    # The marker stays verbatim (a code span), so a sink can search for it.
    assert out.endswith(f"`{MARKER}`")


def test_markdown_escapes_provider_and_user_text(full: JourneyContext) -> None:
    event = Event(id="evt_123", type="signup", visitor_id=VISITOR, name="*Eve* [x](http://e.vil)")
    ctx = full.model_copy(update={"recent_pages": [PageVisit(url="https://x.test/_a_")]})
    out = render_markdown(event, ctx)
    assert "\\*Eve\\* \\[x\\](http://e.vil)" in out
    assert "https://x.test/\\_a\\_" in out
    assert "[x](" not in out


def test_markdown_not_found(event: Event, missing: JourneyContext) -> None:
    out = render_markdown(event, missing)
    assert out.startswith("No visitor journey found for visitor")
    assert out.endswith(f"`{MARKER}`")


# --------------------------------------------------------------------------- HubSpot note


def test_hubspot_note_keeps_a_single_10k_value(event: Event, full: JourneyContext) -> None:
    big = "x" * 10_000
    profile = IdentifiedProfile(user_id="user_123", metadata={"bio": big})
    out = render_hubspot_note_html(event, full.model_copy(update={"profile": profile}))
    assert big in out
    assert out == render_html(event, full.model_copy(update={"profile": profile}))


def test_hubspot_note_truncates_large_metadata(event: Event, full: JourneyContext) -> None:
    metadata = {f"field_{i}": f"{i}:" + "y" * 10_000 for i in range(10)}
    pages = [
        PageVisit(url="https://example.com/" + "p" * 5_000, at=at(22, 9, i)) for i in range(10)
    ]
    ctx = full.model_copy(
        update={
            "profile": IdentifiedProfile(user_id="user_123", metadata=metadata),
            "recent_pages": pages,
        }
    )
    assert len(render_html(event, ctx)) > HUBSPOT_NOTE_MAX_CHARS

    out = render_hubspot_note_html(event, ctx)
    assert len(out) <= HUBSPOT_NOTE_MAX_CHARS
    assert out.endswith("<p><small>visitor-enrich:evt_123</small></p>")
    assert "<li><strong>field_0:</strong> 0:yyy" in out
    assert "…</li>" in out
    assert "<li><strong>User ID:</strong> user_123</li>" in out
    assert "<li><strong>Lead score:</strong> 72/100</li>" in out


def test_hubspot_note_survives_absurd_sizes(event: Event, full: JourneyContext) -> None:
    metadata = {f"k{i}-" + "k" * 500: "v" * 10_000 for i in range(2_000)}
    goals = [Goal(name="g" * 1_000, type="custom") for _ in range(2_000)]
    prediction = Prediction(score=50, estimated=True, reasons=["r" * 5_000] * 500)
    ctx = full.model_copy(
        update={
            "profile": IdentifiedProfile(user_id="u", metadata=metadata),
            "goals": goals,
            "prediction": prediction,
        }
    )
    out = render_hubspot_note_html(event, ctx)
    assert len(out) <= HUBSPOT_NOTE_MAX_CHARS
    assert out.endswith("<p><small>visitor-enrich:evt_123</small></p>")
    assert "more</li>" in out  # "… N more" stands in for what was left out
    assert "(estimate)" in out


# --------------------------------------------------------------------------- HubSpot properties


def test_hubspot_property_definitions() -> None:
    assert HUBSPOT_PROPERTY_GROUP["name"] == "visitor_enrich"
    assert HUBSPOT_PROPERTY_GROUP["label"] == "Visitor journey (visitor-enrich)"
    names = [p["name"] for p in HUBSPOT_PROPERTIES]
    assert len(names) == len(set(names))
    assert set(names) == {
        "ve_visitor_id",
        "ve_first_touch",
        "ve_referrer",
        "ve_utm_source",
        "ve_utm_medium",
        "ve_utm_campaign",
        "ve_first_visit_at",
        "ve_last_visit_at",
        "ve_visit_count",
        "ve_pageview_count",
        "ve_lead_score",
        "ve_lead_score_estimated",
        "ve_expected_value",
        "ve_country",
        "ve_last_page",
    }
    valid = {
        ("string", "text"),
        ("number", "number"),
        ("datetime", "date"),
        ("enumeration", "booleancheckbox"),
    }
    for prop in HUBSPOT_PROPERTIES:
        assert {"name", "label", "type", "fieldType", "groupName", "description"} <= set(prop)
        assert prop["groupName"] == "visitor_enrich"
        assert (prop["type"], prop["fieldType"]) in valid
        assert prop["label"] and prop["description"]
    by_name = {p["name"]: p for p in HUBSPOT_PROPERTIES}
    assert by_name["ve_first_visit_at"]["type"] == "datetime"
    assert by_name["ve_visit_count"]["type"] == "number"
    flag = by_name["ve_lead_score_estimated"]
    assert flag["type"] == "enumeration"
    assert [o["value"] for o in flag["options"]] == ["true", "false"]


def test_hubspot_contact_properties_full(event: Event, full: JourneyContext) -> None:
    assert hubspot_contact_properties(event, full) == {
        "ve_visitor_id": VISITOR,
        "ve_first_touch": "google / cpc / spring_sale",
        "ve_referrer": "https://www.google.com/",
        "ve_utm_source": "google",
        "ve_utm_medium": "cpc",
        "ve_utm_campaign": "spring_sale",
        "ve_first_visit_at": "2026-11-20T09:00:00.000Z",
        "ve_last_visit_at": "2026-11-22T09:55:00.000Z",
        "ve_visit_count": "3",
        "ve_pageview_count": "8",
        "ve_lead_score": "72",
        "ve_lead_score_estimated": "false",
        "ve_expected_value": "3.09",
        "ve_country": "France",
        "ve_last_page": "https://example.com/signup",
    }


def test_hubspot_contact_properties_estimated(event: Event, estimated: JourneyContext) -> None:
    props = hubspot_contact_properties(event, estimated)
    assert props["ve_lead_score"] == "41.5"
    assert props["ve_lead_score_estimated"] == "true"
    assert props["ve_expected_value"] == "12"


def test_hubspot_contact_properties_omit_unknowns(
    event: Event, sparse: JourneyContext, missing: JourneyContext
) -> None:
    assert hubspot_contact_properties(event, sparse) == {
        "ve_visitor_id": VISITOR,
        "ve_first_touch": "direct",
        "ve_visit_count": "1",
        "ve_lead_score": "10",
        "ve_lead_score_estimated": "false",
        "ve_country": "US",
        "ve_last_page": "/pricing",
    }
    assert hubspot_contact_properties(event, missing) == {"ve_visitor_id": VISITOR}
    known = {p["name"] for p in HUBSPOT_PROPERTIES}
    assert all(isinstance(v, str) for v in hubspot_contact_properties(event, sparse).values())
    assert set(hubspot_contact_properties(event, sparse)) <= known


# --------------------------------------------------------------------------- Slack

SLACK_BLOCK_TYPES = {"header", "section", "context", "divider", "actions"}


def assert_valid_slack(payload: dict[str, Any]) -> None:
    assert set(payload) == {"text", "blocks"}
    assert isinstance(payload["text"], str) and payload["text"]
    assert isinstance(payload["blocks"], list) and payload["blocks"]
    assert len(payload["blocks"]) <= 50
    for block in payload["blocks"]:
        assert isinstance(block, dict)
        assert block["type"] in SLACK_BLOCK_TYPES
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] == "mrkdwn"
                assert 0 < len(block["text"]["text"]) <= 3000
            fields = block.get("fields", [])
            assert len(fields) <= 10
            assert all(f["type"] == "mrkdwn" and 0 < len(f["text"]) <= 2000 for f in fields)
        if block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
            assert all(0 < len(e["text"]) <= 3000 for e in block["elements"])


def test_slack_alert_full(event: Event, full: JourneyContext) -> None:
    payload = render_slack_alert(event, full)
    assert_valid_slack(payload)
    assert payload["text"] == (
        "Hot lead: Ada Lovelace &lt;ada@example.com&gt;, lead score 72/100, "
        "first touch google / cpc / spring_sale · visitor-enrich:evt_123"
    )
    blocks = payload["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Hot lead: Ada Lovelace"},
    }
    assert blocks[1]["text"]["text"] == (
        f"*Ada Lovelace* · <mailto:ada@example.com|ada@example.com>\nDataFast visitor `{VISITOR}`"
    )
    fields = [f["text"] for f in blocks[2]["fields"]]
    assert fields == [
        "*Lead score*\n72/100",
        "*Expected value*\n3.09 USD",
        "*First touch*\ngoogle / cpc / spring_sale",
        "*Location*\nParis, Île-de-France, France",
        "*Device*\ndesktop · Chrome · Mac OS",
        "*First visit*\n2026-11-20 09:00 UTC",
        "*Last visit*\n2026-11-22 09:55 UTC",
        "*Activity*\n3 visits, 8 pageviews",
    ]
    assert blocks[3]["text"]["text"] == (
        "*Key pages*\n• 2026-11-22 09:58 UTC https://example.com/signup (Sign up)\n"
        "• 2026-11-22 09:56 UTC https://example.com/pricing\n• /docs/api"
    )
    assert blocks[-1] == {"type": "context", "elements": [{"type": "mrkdwn", "text": MARKER}]}


def test_slack_alert_estimate_and_key_pages(event: Event, estimated: JourneyContext) -> None:
    pages = [PageVisit(url=f"/p{i}") for i in range(10)]
    payload = render_slack_alert(event, estimated.model_copy(update={"recent_pages": pages}))
    assert_valid_slack(payload)
    assert "lead score 41.5/100 (estimate)" in payload["text"]
    text = slack_text(payload)
    assert "*Lead score*\n41.5/100 (estimate)" in text
    assert (
        "Estimated by visitor-enrich, not by DataFast: DataFast gave no prediction for this "
        "visitor. Based on: visited /pricing twice; 3 visits in 2 days"
    ) in text
    key_pages = next(
        b for b in payload["blocks"] if b.get("text", {}).get("text", "").startswith("*Key pages*")
    )
    assert key_pages["text"]["text"].count("•") == 5


def test_slack_escapes_user_text(full: JourneyContext) -> None:
    event = Event(
        id="evt_123", type="signup", visitor_id=VISITOR, name="<!channel> & <@U1>", email="a@b.co"
    )
    ctx = full.model_copy(
        update={
            "recent_pages": [PageVisit(url="https://x.test/?a=1&b=<script>")],
            "first_touch": FirstTouch(utm_source="<https://evil.test|click>"),
        }
    )
    payload = render_slack_alert(event, ctx)
    assert_valid_slack(payload)
    text = slack_text(payload)
    assert "<!channel>" not in text
    assert "<@U1>" not in text
    assert "<https://evil.test" not in text
    assert "&lt;!channel&gt; &amp; &lt;@U1&gt;" in text
    assert "https://x.test/?a=1&amp;b=&lt;script&gt;" in text
    assert "<mailto:a@b.co|a@b.co>" in text
    # Only our own link keeps its angle brackets.
    assert set(re.findall(r"<[^>]*>", text)) == {"<mailto:a@b.co|a@b.co>"}
    # The header is plain_text, which Slack shows as is: no escaping there.
    assert payload["blocks"][0]["text"] == {
        "type": "plain_text",
        "text": "Hot lead: <!channel> & <@U1>",
    }


def test_slack_limits_hold_for_huge_values(event: Event, full: JourneyContext) -> None:
    ctx = full.model_copy(
        update={
            "recent_pages": [PageVisit(url="https://x.test/" + "&" * 5_000) for _ in range(10)],
            "first_touch": FirstTouch(utm_source="<" * 5_000),
            "prediction": Prediction(score=90, estimated=True, reasons=["&" * 4_000] * 20),
        }
    )
    big = event.model_copy(update={"name": "N" * 500})
    payload = render_slack_alert(big, ctx)
    assert_valid_slack(payload)
    assert payload["text"].endswith(MARKER)
    assert len(payload["text"]) <= 3000
    # Cutting never leaves half an entity behind.
    for piece in slack_text(payload).split("\n"):
        assert not re.search(r"&(a|am|amp|l|lt|g|gt)?…", piece)


def test_slack_not_found(event: Event, missing: JourneyContext) -> None:
    payload = render_slack_alert(event, missing)
    assert_valid_slack(payload)
    assert payload["text"] == (
        f"No visitor journey found for visitor {VISITOR} at DataFast: no pageviews for this "
        "visitor. · visitor-enrich:evt_123"
    )


# --------------------------------------------------------------------------- Rocket.Chat


def test_rocketchat_snapshot(event: Event, full: JourneyContext) -> None:
    assert (
        render_rocketchat_message(event, full)
        == f"""\
*Visitor journey from DataFast for Ada Lovelace <ada@example.com>*
*Visitor ID:* {VISITOR}
*First touch:* google / cpc / spring_sale
*Location:* Paris, Île-de-France, France
*Device:* desktop · Chrome · Mac OS
*First visit:* 2026-11-20 09:00 UTC
*Last visit:* 2026-11-22 09:55 UTC
*Activity:* 3 visits, 8 pageviews
*Last pages (newest first):*
• 2026-11-22 09:58 UTC https://example.com/signup (Sign up)
• 2026-11-22 09:56 UTC https://example.com/pricing
• /docs/api
*Goals:* 2026-11-21 12:00 UTC newsletter_signup (custom)
*Payments:* 2026-11-22 09:59 UTC checkout_completed (payment)
*Identify profile:* User ID: user_123 · Identified: 2026-11-22 10:00 UTC · plan: pro · seats: 5
*Prediction:* Lead score: 72/100 · Conversion rate: 1.38% · Expected value: 3.09 USD · \
Confidence: 83.1%
visitor-enrich:evt_123"""
    )


def test_rocketchat_estimate(event: Event, estimated: JourneyContext) -> None:
    assert render_rocketchat_message(event, estimated).endswith("""
*Prediction:* Lead score: 41.5/100 (estimate) · Expected value: 12.00 USD
_Estimated by visitor-enrich, not by DataFast: DataFast gave no prediction for this visitor. \
Based on:_
• visited /pricing twice
• 3 visits in 2 days
visitor-enrich:evt_123""")


def test_rocketchat_not_found(event: Event, missing: JourneyContext) -> None:
    assert render_rocketchat_message(event, missing) == (
        f"No visitor journey found for visitor {VISITOR} at DataFast: no pageviews for this "
        "visitor.\nvisitor-enrich:evt_123"
    )


def test_rocketchat_stays_compact(event: Event, full: JourneyContext) -> None:
    ctx = full.model_copy(
        update={
            "profile": IdentifiedProfile(metadata={f"k{i}": "v" * 10_000 for i in range(50)}),
            "recent_pages": [PageVisit(url="/" + "p" * 3_000) for _ in range(10)],
        }
    )
    out = render_rocketchat_message(event, ctx)
    assert len(out) <= ROCKETCHAT_MAX_CHARS
    assert out.endswith("\n" + MARKER)
    assert "*Lead score:*" not in out  # journey facts are bold; prediction stays on one line
    assert "Lead score: 72/100" in out
