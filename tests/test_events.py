"""Inbound event parsing: visitor-id extraction, UUID validation and every rejection."""

from __future__ import annotations

from typing import Any

import pytest

from worker.events import (
    EventRejected,
    InboundEvent,
    extract_visitor_id,
    is_uuid,
    parse_event,
    visitor_id_from_cookie,
)

VID = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
OTHER = "0b7f1a52-3c1d-4e8a-9f00-112233445566"


def parse(payload: Any, header_id: str | None = "evt_hdr", **kwargs: Any):
    return parse_event(payload, header_id=header_id, **kwargs)


# Cookie parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"datafast_visitor_id={VID}", VID),
        (f"_ga=GA1.2.3; datafast_visitor_id={VID}; datafast_session_id=s-1", VID),
        (f"datafast_session_id={OTHER}; datafast_visitor_id={VID}", VID),
        (f'datafast_visitor_id="{VID}"', VID),
        (f"  datafast_visitor_id = {VID} ;", VID),
        # Malformed neighbours must not hide ours (SimpleCookie gives up on these).
        (f"broken; ===; a=b=c; datafast_visitor_id={VID}; x", VID),
        (f'weird"name=1; {{json}}={{"a":1}}; datafast_visitor_id={VID}', VID),
        (f"datafast_visitor_id={VID};datafast_visitor_id={OTHER}", VID),
        # Look-alike names are other cookies.
        (f"xdatafast_visitor_id={OTHER}; datafast_visitor_id_old={OTHER}", None),
        (f"DATAFAST_VISITOR_ID={OTHER}", None),
        ("datafast_visitor_id=", None),
        ('datafast_visitor_id=""', None),
        ("", None),
        (";;;", None),
        ("datafast_visitor_id", None),
    ],
)
def test_visitor_id_from_cookie(header: str, expected: str | None) -> None:
    assert visitor_id_from_cookie(header) == expected


def test_extract_prefers_datafast_visitor_id_then_alias_then_cookie() -> None:
    cookie = f"datafast_visitor_id={OTHER}"
    both = InboundEvent.model_validate(
        {"type": "signup", "datafast_visitor_id": VID, "visitorId": OTHER, "cookie": cookie}
    )
    assert extract_visitor_id(both) == VID
    alias = InboundEvent.model_validate({"type": "signup", "visitorId": VID, "cookie": cookie})
    assert extract_visitor_id(alias) == VID
    only_cookie = InboundEvent.model_validate({"type": "signup", "cookie": f"a=1; {cookie}"})
    assert extract_visitor_id(only_cookie) == OTHER
    blank = InboundEvent.model_validate(
        {"type": "signup", "datafast_visitor_id": "  ", "visitorId": VID}
    )
    assert extract_visitor_id(blank) == VID
    nothing = InboundEvent.model_validate({"type": "signup", "cookie": "a=1; b=2"})
    assert extract_visitor_id(nothing) is None


# UUIDs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [VID, VID.upper(), VID.replace("-", ""), "00000000-0000-4000-8000-000000000000"],
)
def test_is_uuid_accepts(value: str) -> None:
    assert is_uuid(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        VID[:-1],
        VID + "0",
        VID.replace("a", "g", 1),
        "{" + VID + "}",
        "urn:uuid:" + VID,
        "12345",
        f"{VID}; drop table",
        VID + "\n",
        # hyphens out of their places, and digits that are not ASCII
        VID.replace("-", "")[:10] + "-" + VID.replace("-", "")[10:] + "---",
        "\u0663" * 8 + VID[8:],
    ],
)
def test_is_uuid_refuses(value: str) -> None:
    assert not is_uuid(value)


# parse_event: accepted -------------------------------------------------------------------


def test_parse_support_ticket_with_every_field() -> None:
    event = parse(
        {
            "id": "evt_body",
            "type": "support_ticket",
            "datafast_visitor_id": f"  {VID}  ",
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "user_id": 77,
            "ticket_id": 12345,
            "occurred_at": "2026-11-22T10:00:00Z",
            "unknown_field": "ignored",
        }
    )
    assert event.id == "evt_body"  # the body id wins over the webhook-id header
    assert event.type == "support_ticket"
    assert event.visitor_id == VID
    assert event.email == "ada@example.com"
    assert event.ticket_id == "12345"  # numeric ids become text
    assert event.user_id == "77"
    assert event.occurred_at is not None and event.occurred_at.year == 2026
    assert event.marker == "visitor-enrich:evt_body"


def test_parse_uses_header_id_then_fallback() -> None:
    assert parse({"type": "signup", "visitorId": VID}).id == "evt_hdr"
    event = parse({"type": "signup", "visitorId": VID}, header_id=None, fallback_id="evt_fb")
    assert event.id == "evt_fb"


def test_parse_reads_the_cookie() -> None:
    event = parse({"type": "signup", "cookie": f"theme=dark; datafast_visitor_id={VID}"})
    assert event.visitor_id == VID


def test_livechat_may_name_only_the_chat_visitor() -> None:
    event = parse({"type": "livechat", "livechat_visitor_id": "lcv-1", "room_id": "room-1"})
    assert event.visitor_id is None
    assert event.livechat_visitor_id == "lcv-1"


def test_non_uuid_accepted_when_the_source_does_not_require_it() -> None:
    event = parse({"type": "signup", "visitorId": "pm-visitor-1"}, require_uuid=False)
    assert event.visitor_id == "pm-visitor-1"


# parse_event: rejected -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        ([{"type": "signup"}], 422, "object"),
        ("signup", 422, "object"),
        (None, 422, "object"),
        ({"datafast_visitor_id": VID}, 422, "type"),
        ({"type": "purchase", "datafast_visitor_id": VID}, 422, "type"),
        ({"type": "signup"}, 422, "datafast_visitor_id"),
        ({"type": "signup", "datafast_visitor_id": ""}, 422, "datafast_visitor_id"),
        ({"type": "signup", "cookie": "a=1; b=2"}, 422, "datafast_visitor_id"),
        ({"type": "signup", "datafast_visitor_id": "abc"}, 400, "uuid"),
        ({"type": "signup", "visitorId": "1234"}, 400, "uuid"),
        ({"type": "signup", "cookie": "datafast_visitor_id=zzz"}, 400, "uuid"),
        ({"type": "support_ticket", "datafast_visitor_id": VID}, 422, "ticket_id"),
        ({"type": "support_ticket", "datafast_visitor_id": VID, "ticket_id": ""}, 422, "ticket"),
        ({"type": "signup", "datafast_visitor_id": VID, "email": "not-an-email"}, 422, "email"),
        ({"type": "signup", "datafast_visitor_id": 12345}, 422, "datafast_visitor_id"),
        ({"type": "signup", "datafast_visitor_id": "x" * 500}, 422, "datafast_visitor_id"),
        ({"type": "livechat", "datafast_visitor_id": VID}, 422, "room_id"),
        ({"type": "livechat", "room_id": "r1"}, 422, "datafast_visitor_id"),
    ],
)
def test_rejections(payload: Any, status: int, words: str) -> None:
    with pytest.raises(EventRejected) as caught:
        parse(payload)
    assert caught.value.status_code == status
    assert words.lower() in caught.value.message.lower()


def test_missing_id_everywhere_is_422() -> None:
    with pytest.raises(EventRejected) as caught:
        parse({"type": "signup", "visitorId": VID}, header_id=None)
    assert caught.value.status_code == 422
    assert "id" in caught.value.message


def test_rejection_message_does_not_echo_a_huge_id() -> None:
    with pytest.raises(EventRejected) as caught:
        parse({"type": "signup", "visitorId": "y" * 150})
    assert caught.value.status_code == 400
    assert len(caught.value.message) < 150
