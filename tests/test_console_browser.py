"""The operator console in a real browser (headless Chromium), against the real web process
and a real Celery worker in sandbox mode.

On a failure the page as it was is saved under tests/artifacts/; KEEP_SCREENSHOTS=1 saves
every page the tests look at.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import pytest
from browser_support import ARTIFACTS, launched, screenshot
from harness import Service
from operator_support import running_service
from playwright.sync_api import Browser, BrowserContext, Page, expect

from worker.integrations import SINKS

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
# Every sink's note is kept by the sandbox's console sink (its own excepted).
NOTE_SINKS = [s.name for s in SINKS if s.name != "console"]
KEEP = os.environ.get("KEEP_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(
        tmp_path_factory,
        "console",
        SANDBOX="true",
        CONSOLE_PASSWORD=PASSWORD,
        MAX_RETRIES="1",
        RETRY_BACKOFF_BASE="0.1",
        RETRY_BACKOFF_MAX="0.3",
    ) as service:
        yield service


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as browser:
        yield browser


def sign_in(page: Page, svc: Service, password: str = PASSWORD) -> None:
    page.goto(f"{svc.url}/console/login")
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")


@pytest.fixture(scope="module")
def signed_in_state(browser: Browser, svc: Service) -> dict[str, object]:
    """The cookies of one sign-in, shared by the tests (sign-in attempts are rate-limited
    per client address, as a browser on one machine would find)."""
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, svc)
    expect(page).to_have_url(re.compile(r"/console/events$"))
    state = context.storage_state()
    context.close()
    return dict(state)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def signed_in(
    browser: Browser,
    signed_in_state: dict[str, object],
    request: pytest.FixtureRequest,
    svc: Service,
) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        storage_state=signed_in_state,  # type: ignore[arg-type]
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    _keep_failure(page, request, svc)
    context.close()


def _keep_failure(page: Page, request: pytest.FixtureRequest, svc: Service) -> None:
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        path = screenshot(page, f"FAILED-{request.node.name}")
        print(f"screenshot of the failing page: {path}\n{svc.logs()[-3000:]}")


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest, svc: Service) -> Iterator[Page]:
    page = context.new_page()
    yield page
    _keep_failure(page, request, svc)


def look(page: Page, name: str) -> None:
    if KEEP:
        screenshot(page, name)


def send_from_sandbox(page: Page, svc: Service, event_type: str) -> str:
    page.goto(f"{svc.url}/console/sandbox")
    page.select_option("select[name=type]", event_type)
    page.click("#send-form button[type=submit]")
    page.wait_for_url(re.compile(r"/console/events/evt_"))
    return page.url.rsplit("/", 1)[1].split("?")[0]


def wait_for_row_state(page: Page, svc: Service, event_id: str, state: str) -> None:
    """Reload the events page until the event's row shows ``state`` (as an operator would)."""
    deadline = time.monotonic() + 20
    row = page.locator(f"tr[data-event='{event_id}'] .state").first
    while True:
        page.goto(f"{svc.url}/console/events")
        if row.count() and row.inner_text() == state:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{event_id} never showed {state!r}: {row.all_inner_texts()}")
        time.sleep(0.3)


def test_console_without_a_session_redirects_to_sign_in(page: Page, svc: Service) -> None:
    page.goto(f"{svc.url}/console/dead")
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/dead$"))
    expect(page.locator("#password")).to_be_visible()
    expect(page.locator("#sandbox-banner")).to_contain_text("SANDBOX")
    look(page, "sign-in")


def test_wrong_password_is_refused(page: Page, svc: Service) -> None:
    sign_in(page, svc, "not the password")
    expect(page.locator(".error")).to_have_text("Wrong password.")
    page.goto(f"{svc.url}/console/events")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_session_cookie_is_http_only_and_strict(signed_in: Page, svc: Service) -> None:
    (cookie,) = [c for c in signed_in.context.cookies() if c["name"] == "ve_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # 127.0.0.1: the only place it may travel without TLS


def test_a_form_post_without_its_csrf_token_is_refused(signed_in: Page, svc: Service) -> None:
    page = signed_in
    page.goto(f"{svc.url}/console/events")
    expect(page).to_have_url(re.compile(r"/console/events$"))  # signed in
    before = len(svc.redis.zrange(f"{svc.prefix}journeys", 0, -1))
    response = page.request.post(
        f"{svc.url}/console/sandbox/send", form={"type": "signup", "email": "x@example.com"}
    )
    assert response.status == 403
    assert "CSRF" in response.text()
    forged = page.request.post(
        f"{svc.url}/console/sandbox/send", form={"type": "signup", "csrf": "forged"}
    )
    assert forged.status == 403
    assert len(svc.redis.zrange(f"{svc.prefix}journeys", 0, -1)) == before


def test_a_sandbox_event_is_delivered_and_its_notes_are_shown(
    signed_in: Page, svc: Service
) -> None:
    page = signed_in
    event_id = send_from_sandbox(page, svc, "support_ticket")
    wait_for_row_state(page, svc, event_id, "delivered")
    row = page.locator(f"tr[data-event='{event_id}']")
    expect(row).to_contain_text("ada@example.com")
    expect(row).to_contain_text("support_ticket")
    look(page, "events")

    row.locator("a").first.click()
    expect(page.locator("#event-state")).to_have_text("delivered")
    expect(page.locator("tr[data-sink='console']")).to_contain_text(
        f"kept {len(NOTE_SINKS)} rendered notes"
    )
    expect(page.locator("#timeline")).to_contain_text("journey_found")
    expect(page.locator("#journey")).to_contain_text('"provider": "DataFast"')
    for sink in NOTE_SINKS:
        expect(page.locator(f"[data-note='{sink}']")).to_be_visible()
    for frame in page.locator(".note iframe").all():  # each HTML note shows, marker and all
        body = frame.content_frame.locator("body")
        expect(body).to_contain_text(f"visitor-enrich:{event_id}")
    zendesk = page.frame_locator("[data-note='zendesk'] iframe")
    expect(zendesk.locator("body")).to_contain_text("Visitor journey")
    # The frame is sized to its note: the whole note shows, without a long empty tail.
    frame_box = page.locator("[data-note='zendesk'] iframe").bounding_box()
    body_box = zendesk.locator("body").bounding_box()
    assert frame_box is not None and body_box is not None
    assert body_box["height"] <= frame_box["height"]
    assert frame_box["height"] <= 1.25 * body_box["height"] + 48
    expect(page.locator("[data-note='rocketchat'] pre")).to_contain_text(
        f"visitor-enrich:{event_id}"
    )
    look(page, "event")
    if KEEP:
        for sink in NOTE_SINKS:  # an element capture scrolls to it (a full page shows
            # frames below the first screen blank)
            note = page.locator(f"[data-note='{sink}']")
            note.screenshot(path=str(ARTIFACTS / f"note-{sink}.png"))

    page.goto(f"{svc.url}/console/events?type=signup")
    expect(page.locator(f"tr[data-event='{event_id}']")).to_have_count(0)
    page.goto(f"{svc.url}/console/events?who=ada@example&state=delivered")
    expect(page.locator(f"tr[data-event='{event_id}']")).to_have_count(1)


def test_a_failing_sink_goes_dead_and_is_replayed_from_dead_letters(
    signed_in: Page, svc: Service
) -> None:
    page = signed_in
    page.goto(f"{svc.url}/console/sandbox")
    page.click("#toggle-failure")
    expect(page.locator("#sink-mode")).to_have_text("failing every delivery")
    look(page, "sandbox")
    try:
        event_id = send_from_sandbox(page, svc, "signup")
        wait_for_row_state(page, svc, event_id, "dead")
        page.goto(f"{svc.url}/console/events/{event_id}")
        expect(page.locator("tr[data-sink='console']")).to_contain_text("set to fail")
        page.goto(f"{svc.url}/console/dead")
        letter = page.locator(f"tr[data-letter='{event_id}:console']")
        expect(letter).to_contain_text("set to fail")
        look(page, "dead-letters")
    finally:
        page.goto(f"{svc.url}/console/sandbox")
        if page.locator("#sink-mode").inner_text() != "delivering":
            page.click("#toggle-failure")
    expect(page.locator("#sink-mode")).to_have_text("delivering")

    page.goto(f"{svc.url}/console/dead")
    page.locator(f"tr[data-letter='{event_id}:console'] button").click()
    expect(page.locator(".flash")).to_contain_text(f"{event_id}:console: queued")
    expect(page.locator(f"tr[data-letter='{event_id}:console']")).to_have_count(0)
    wait_for_row_state(page, svc, event_id, "delivered")
    page.goto(f"{svc.url}/console/events/{event_id}")
    expect(page.locator("#timeline")).to_contain_text("replayed")
    expect(page.locator("[data-note='hubspot']")).to_be_visible()


def test_replay_all_and_purge_ask_for_confirmation(signed_in: Page, svc: Service) -> None:
    page = signed_in
    store_key = f"{svc.prefix}dead"
    letter = (
        '{"id":"evt_gone:console","event_id":"evt_gone","sink":"console","reason":"test",'
        '"attempts":2,"dead_at":"2026-12-01T10:00:00.000Z"}'
    )
    for action, verb in (("Replay all", "replay"), ("Purge", "purge")):
        svc.redis.hset(store_key, "evt_gone:console", letter)
        page.goto(f"{svc.url}/console/dead")
        page.get_by_role("link", name=re.compile(action)).click()
        expect(page.locator("h1")).to_contain_text(f"{verb.capitalize()} 1 dead letter?")
        look(page, f"confirm-{verb}")
        assert svc.redis.hexists(store_key, "evt_gone:console")  # not before the confirmation
        page.get_by_role("button", name=re.compile(f"Yes, {verb}")).click()
        expect(page.locator(".flash")).to_contain_text(
            "replayed 1" if verb == "replay" else "purged 1"
        )
        assert svc.redis.hlen(store_key) == 0


def test_health_shows_redis_queue_systems_and_workers(signed_in: Page, svc: Service) -> None:
    page = signed_in
    send_from_sandbox(page, svc, "signup")
    page.goto(f"{svc.url}/console/health")
    expect(page.locator("#redis")).to_have_text("up")
    expect(page.locator("#queue-depth")).to_have_text(re.compile(r"^\d+$"))
    assert int(page.locator("#workers").inner_text()) >= 1
    source_row = page.locator("tr[data-system='datafast']")
    expect(source_row).to_contain_text("closed")
    expect(source_row).to_contain_text(re.compile(r"[1-9]\d* / 300"))
    expect(page.locator("tr[data-system='console']")).to_be_visible()
    look(page, "health")


def test_sign_out_ends_the_session_even_for_a_copied_cookie(
    page: Page, context: BrowserContext, browser: Browser, svc: Service
) -> None:
    sign_in(page, svc)
    expect(page).to_have_url(re.compile(r"/console/events$"))
    copied = browser.new_context(storage_state=context.storage_state())  # type: ignore[arg-type]
    try:
        page.click("text=Sign out")
        expect(page).to_have_url(re.compile(r"/console/login"))
        page.goto(f"{svc.url}/console/events")
        expect(page).to_have_url(re.compile(r"/console/login"))
        elsewhere = copied.new_page()
        elsewhere.goto(f"{svc.url}/console/events")
        expect(elsewhere).to_have_url(re.compile(r"/console/login"))
    finally:
        copied.close()


def test_sign_in_attempts_are_rate_limited(page: Page, svc: Service) -> None:
    # Last in this module: it uses up this address's attempts (the shared session exists).
    seen = []
    for _ in range(8):
        sign_in(page, svc, "a guess")
        seen.append(page.locator(".error").inner_text())
        if "Too many" in seen[-1]:
            break
    assert "Wrong password." in seen
    assert "Too many sign-in attempts" in seen[-1], seen
    # Even the right password waits now.
    sign_in(page, svc)
    expect(page.locator(".error")).to_contain_text("Too many sign-in attempts")
