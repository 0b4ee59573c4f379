"""Discord, Microsoft Teams and Telegram alerts: what they say (one ``Alert`` model, escaped
for each markup, within each channel's limits), against a fake speaking their formats (429s
and ``retry_after`` obeyed), and end to end through the real web and worker processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from channel_fakes import TELEGRAM_CHAT, ChannelFake
from fakes import FakeUpstream, full_profile
from harness import REDIS_URL, TEST_SECRET, Service, cleanup_redis, new_prefix, new_queue

from config import load_settings
from worker.alert import lead_alert, realtime_alert
from worker.errors import AuthFailed, RateLimited
from worker.events import Event, Payment
from worker.integrations.discord import DiscordSink, render_message
from worker.integrations.teams import TeamsSink, render_card
from worker.integrations.telegram import MESSAGE_MAX, TelegramSink, render_text
from worker.journey import (
    ActiveVisitor,
    FirstTouch,
    HotVisitor,
    JourneyContext,
    PageVisit,
    Prediction,
)
from worker.ratelimit import SharedRateLimiter
from worker.sink import AlertSink

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
EVENT = Event(id="evt_a1", type="signup", visitor_id=VISITOR, email="ada@acme.io", name="Ada")
JOURNEY = JourneyContext(
    provider="datafast",
    visitor_id=VISITOR,
    first_touch=FirstTouch(utm_source="producthunt", utm_medium="launch"),
    visit_count=4,
    recent_pages=[PageVisit(url=f"https://shop.example/p{i}") for i in range(8)],
    prediction=Prediction(score=88),
)
HOT = HotVisitor(
    ActiveVisitor(
        visitor_id="v-1",
        location="Paris, FR",
        device="desktop · Chrome",
        current_url="https://shop.example/pricing",
        profile={"name": "Grace", "plan": "pro"},
        score=91,
    ),
    ("on /pricing now",),
    "v-1",
)


# What an alert says -------------------------------------------------------------------------


def test_the_alert_model_has_the_key_facts() -> None:
    alert = lead_alert(EVENT, JOURNEY)
    assert alert.headline == "Hot lead: Ada"
    assert alert.person == "Ada <ada@acme.io>"
    assert alert.visitor == f"DataFast visitor {VISITOR}"
    labels = [f.label for f in alert.facts]
    assert labels[:2] == ["Lead score", "First touch"] and "Visitor ID" not in labels
    assert alert.pages[0] == "https://shop.example/p0" and len(alert.pages) == 5
    assert alert.summary == "Hot lead: Ada, lead score 88/100, first touch producthunt / launch"
    assert alert.marker == EVENT.marker


def test_a_payment_alert_says_what_was_bought_for_how_much() -> None:
    payment = EVENT.model_copy(
        update={
            "type": "payment",
            "payment": Payment(amount=49.0, currency="usd", description="Pro plan"),
        }
    )
    alert = lead_alert(payment, JOURNEY)
    assert alert.headline == "New payment: Ada"
    facts = {f.label: f.value for f in alert.facts}
    assert facts["Paid"] == "49.00 USD" and facts["Bought"] == "Pro plan"
    assert "first touch producthunt / launch" in alert.summary and "paid 49.00 USD" in alert.summary


def test_discord_embed_escapes_and_stays_within_limits() -> None:
    evil = EVENT.model_copy(update={"name": "**@everyone** [x](http://e.vil)" + "y" * 300})
    message = render_message(lead_alert(evil, JOURNEY))
    embed = message["embeds"][0]
    assert message["allowed_mentions"] == {"parse": []}
    assert len(embed["title"]) <= 256
    assert "\\*\\*@everyone\\*\\* \\[x\\](http://e.vil)" in embed["description"]
    assert embed["footer"]["text"] == EVENT.marker
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Lead score"] == "88/100"
    assert fields["Key pages"].startswith("• https://shop.example/p0")
    realtime = render_message(realtime_alert(HOT))["embeds"][0]
    assert realtime["title"] == "Hot visitor on the site now: Grace"
    assert realtime["footer"]["text"] == "visitor-enrich:realtime:v-1"


def test_teams_card_is_the_documented_envelope() -> None:
    message = render_card(lead_alert(EVENT, JOURNEY))
    (attachment,) = message["attachments"]
    card = attachment["content"]
    assert message["type"] == "message"
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    facts = next(b for b in card["body"] if b["type"] == "FactSet")["facts"]
    assert {"title": "Lead score", "value": "88/100"} in facts
    assert card["body"][-1]["text"] == EVENT.marker
    assert len(json.dumps(message)) < 28 * 1024


def test_telegram_html_escapes_everything_and_fits_4096() -> None:
    evil = EVENT.model_copy(update={"name": "<b>Eve</b> & <a href='x'>co</a>"})
    text = render_text(lead_alert(evil, JOURNEY))
    assert "&lt;b&gt;Eve&lt;/b&gt; &amp; &lt;a href='x'&gt;co&lt;/a&gt;" in text
    assert text.endswith(f"<code>{EVENT.marker}</code>")
    huge = JOURNEY.model_copy(
        update={"recent_pages": [PageVisit(url="https://x.example/" + "p" * 900)] * 10}
    )
    assert len(render_text(lead_alert(EVENT, huge))) <= MESSAGE_MAX


# Against the fake ----------------------------------------------------------------------------


@pytest.fixture
def channels() -> Iterator[ChannelFake]:
    with ChannelFake() as fake:
        yield fake


def sinks(
    channels: ChannelFake, redis_client: redis.Redis, key_prefix: str, **extra: Any
) -> dict[str, AlertSink]:
    values = {k.lower(): v for k, v in channels.env().items()} | extra
    settings = load_settings(_env_file=None, redis_key_prefix=key_prefix, **values)
    limiter = SharedRateLimiter(redis_client, key_prefix)
    built = [cls(settings, limiter) for cls in (DiscordSink, TeamsSink, TelegramSink)]
    return {s.name: s for s in built}


def test_each_channel_takes_an_alert_and_a_realtime_alert(
    channels: ChannelFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    built = sinks(channels, redis_client, key_prefix)
    for sink in built.values():
        note = sink.render_note(EVENT, JOURNEY)
        assert note.template is None  # built in code
        sink.deliver(EVENT, JOURNEY, note)
        sink.post_realtime_alert(HOT)
    (discord, realtime) = channels.messages("discord")
    assert discord["embeds"][0]["footer"]["text"] == EVENT.marker and discord["id"]
    assert realtime["embeds"][0]["footer"]["text"] == "visitor-enrich:realtime:v-1"
    assert len(channels.messages("teams", contains=EVENT.marker)) == 1
    (telegram, _) = channels.messages("telegram")
    assert telegram["parse_mode"] == "HTML" and telegram["chat_id"] == TELEGRAM_CHAT
    assert "Hot lead: Ada" in telegram["text"]
    assert "leads_bot" in built["telegram"].check()
    assert "channel 555" in built["discord"].check()
    assert "secret-token" not in built["telegram"].check() + built["discord"].check()


def test_discord_and_telegram_flood_control_is_obeyed(
    channels: ChannelFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    built = sinks(channels, redis_client, key_prefix)
    channels.discord_limited = 1
    channels.telegram_limited = 1
    for name in ("discord", "telegram"):
        sink = built[name]
        with pytest.raises(RateLimited) as caught:
            sink.deliver(EVENT, JOURNEY, sink.render_note(EVENT, JOURNEY))
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 1
        # Everyone waits: the next call is held until the pause is over, then goes through.
        sink.deliver(EVENT, JOURNEY, sink.render_note(EVENT, JOURNEY))
        first, second = channels.arrivals[name][-2:]
        assert second - first >= 0.4
    assert len(channels.messages("discord")) == 1 and len(channels.messages("telegram")) == 1


def test_a_wrong_telegram_token_is_an_auth_error(
    channels: ChannelFake, redis_client: redis.Redis, key_prefix: str
) -> None:
    sink = sinks(channels, redis_client, key_prefix, telegram_bot_token="1:wrong")["telegram"]
    with pytest.raises(AuthFailed) as caught:
        sink.deliver(EVENT, JOURNEY, sink.render_note(EVENT, JOURNEY))
    assert "401 Unauthorized" in str(caught.value) and "wrong" not in str(caught.value)


# End to end ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_hot_signup_reaches_every_channel_once(
    channels: ChannelFake, redis_server: str, tmp_path: Any
) -> None:
    client = redis.Redis.from_url(redis_server)
    prefix, queue = new_prefix(), new_queue()
    with FakeUpstream() as upstream:
        visitor = upstream.add_visitor(full_profile(score=92))
        cold = upstream.add_visitor(full_profile(score=12))
        env = {
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "CELERY_QUEUE": queue,
            "WEBHOOK_SECRET": TEST_SECRET,
            "DATAFAST_API_KEY": upstream.datafast_key,
            "DATAFAST_BASE_URL": upstream.base_url("datafast"),
            **channels.env(),
        }
        channels.discord_limited = 1  # the first try is refused: retried, posted once
        try:
            with Service(env, tmp_path, workers=1, redis_client=client) as svc:
                hot_id, cold_id = f"evt_{uuid.uuid4().hex[:12]}", f"evt_{uuid.uuid4().hex[:12]}"
                for event_id, vid in ((hot_id, visitor), (cold_id, cold)):
                    payload = {"type": "signup", "datafast_visitor_id": vid, "email": "a@b.co"}
                    assert svc.send_event(payload, event_id=event_id).status_code == 202
                hot = svc.wait_for_state(hot_id, {"delivered"})
                cold_status = svc.wait_for_state(cold_id, {"delivered"})
                again = svc.send_event(
                    {"type": "signup", "datafast_visitor_id": visitor}, event_id=hot_id
                )
                assert again.json()["data"]["state"] == "duplicate"
        finally:
            cleanup_redis(client, prefix, queue)
            client.close()
    for name in ("discord", "teams", "telegram"):
        assert hot["sinks"][name]["state"] == "delivered", hot["sinks"][name]
        assert len(channels.messages(name, contains=hot_id)) == 1, name
        assert channels.messages(name, contains=cold_id) == []
        assert cold_status["sinks"][name]["state"] == "skipped"
    assert hot["sinks"]["discord"]["attempts"] >= 1
