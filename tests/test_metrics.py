"""``/metrics`` from the real web process and a real worker sharing a multiprocess directory,
read with prometheus_client's own text parser after a known set of events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from fakes import FakeUpstream, full_profile
from harness import TEST_SECRET, Service, wait_for
from operator_support import running_service
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

TOKEN = "metrics-token-for-tests"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def svc(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    upstream = {k: v for k, v in fake.env().items() if k.startswith(("DATAFAST_", "ZENDESK_"))}
    with running_service(
        tmp_path_factory,
        "metrics",
        WEBHOOK_SECRET=TEST_SECRET,
        METRICS_TOKEN=TOKEN,
        **upstream,
        # One request a second: three events at once make two of them wait.
        DATAFAST_RATE_LIMIT="1",
        RETRY_BACKOFF_BASE="0.2",
        RETRY_BACKOFF_MAX="1",
    ) as service:
        yield service


def scrape(svc: Service) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample by name, then by its sorted labels."""
    assert svc.http is not None
    response = svc.http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_metrics_count_a_known_set_of_events(svc: Service, fake: FakeUpstream) -> None:
    # The first DataFast call is answered 429 with a one-second Retry-After.
    fake.fail("datafast", 429, times=1, headers={"Retry-After": "1"})
    ids = []
    for n in range(3):
        visitor = fake.add_visitor(full_profile(str(uuid.uuid4())))
        fake.add_ticket(f"90{n}")
        event_id = f"evt_{uuid.uuid4().hex[:12]}"
        payload = {"type": "support_ticket", "datafast_visitor_id": visitor, "ticket_id": f"90{n}"}
        assert svc.send_event(payload, event_id=event_id).status_code == 202
        ids.append((event_id, payload))
    assert svc.send_event(ids[0][1], event_id=ids[0][0]).status_code == 200  # duplicate
    bad = svc.send_event({"type": "signup"}, event_id="evt_bad_sig", secret="whsec_" + "AAAA")
    assert bad.status_code == 401
    unvalidated = svc.send_event({"type": "signup", "email": "a@b.co"}, event_id="evt_422")
    assert unvalidated.status_code == 422
    for event_id, _ in ids:
        svc.wait_for_state(event_id, timeout=30)

    def finished() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        # The worker writes its counters just after the event's state: wait for them.
        samples = scrape(svc)
        delivered = samples.get("visitor_enrich_events_finished_total", {})
        return samples if delivered.get((("state", "delivered"),)) == 3 else None

    m = wait_for(finished, 10, message="three finished events in /metrics")
    received = m["visitor_enrich_events_received_total"]
    api = ("inbound", "api")
    assert received[(("code", "202"), api, ("type", "support_ticket"))] == 3
    assert received[(("code", "200"), api, ("type", "support_ticket"))] == 1
    assert received[(("code", "401"), api, ("type", "unknown"))] == 1
    assert received[(("code", "422"), api, ("type", "signup"))] == 1
    assert m["visitor_enrich_sink_deliveries_total"] == {
        (("outcome", "delivered"), ("sink", "zendesk")): 3
    }
    counts = m["visitor_enrich_upstream_request_seconds_count"]
    assert counts[(("system", "datafast"),)] == 4  # three answers and the 429
    assert counts[(("system", "zendesk"),)] == 3
    assert (("le", "+Inf"), ("system", "datafast")) in m[
        "visitor_enrich_upstream_request_seconds_bucket"
    ]
    assert m["visitor_enrich_upstream_429_total"] == {(("system", "datafast"),): 1}
    assert m["visitor_enrich_rate_limit_waits_total"][(("system", "datafast"),)] >= 1
    assert m["visitor_enrich_rate_limit_wait_seconds_total"][(("system", "datafast"),)] > 0
    assert m["visitor_enrich_circuit_open"] == {
        (("system", "datafast"),): 0,
        (("system", "zendesk"),): 0,
    }
    assert m["visitor_enrich_queue_depth"] == {(): 0}
    assert m["visitor_enrich_dead_letters"] == {(): 0}
    assert m["visitor_enrich_redis_up"] == {(): 1}


def test_dead_letters_and_open_circuits_are_gauges_from_redis(svc: Service) -> None:
    svc.redis.hset(f"{svc.prefix}dead", "evt_x:zendesk", "{}")
    svc.redis.set(f"{svc.prefix}circuit:zendesk:open", 1, px=60_000)
    try:
        m = scrape(svc)
        assert m["visitor_enrich_dead_letters"] == {(): 1}
        assert m["visitor_enrich_circuit_open"][(("system", "zendesk"),)] == 1
    finally:
        svc.redis.delete(f"{svc.prefix}dead", f"{svc.prefix}circuit:zendesk:open")


def test_metrics_ask_for_the_bearer_token(svc: Service) -> None:
    assert svc.http is not None
    assert svc.http.get("/metrics").status_code == 401
    wrong = svc.http.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_the_console_is_off_without_a_password(svc: Service) -> None:
    for path in ("/console", "/console/login", "/console/events"):
        response = httpx.get(f"{svc.url}{path}", follow_redirects=False)
        assert response.status_code == 404, path


def test_metrics_serve_exposes_the_host_directory_without_a_web_process(svc: Service) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from harness import free_port

    svc.send_event(
        {"type": "signup", "datafast_visitor_id": str(uuid.uuid4())},
        event_id=f"evt_{uuid.uuid4().hex}",
    )
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": svc.env["PROMETHEUS_MULTIPROC_DIR"]}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "visitor-enrich"), "metrics-serve", "--port", str(port),
         "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def answered() -> str | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.TransportError:
                return None

        text = wait_for(answered, 20, message="metrics-serve to answer")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "visitor_enrich_events_received" in families
    assert "visitor_enrich_queue_depth" not in families  # the Redis gauges come from web
