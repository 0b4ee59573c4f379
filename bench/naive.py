"""The naive baseline: what a hand-written Celery integration usually looks like.

One task per event; a new ``requests`` connection for every call (``requests.get`` /
``requests.put``); ``autoretry_for`` with Celery's backoff; the default prefork pool with its
default concurrency (one child per CPU); Celery's default prefetch and early acks. It calls the
same fake DataFast and Zendesk endpoints as the real service and posts the same kind of note.

Configured from the environment by the bench: ``NAIVE_BROKER_URL``, ``NAIVE_QUEUE``,
``NAIVE_FAKE_URL``. Run with ``celery -A bench.naive worker -Q $NAIVE_QUEUE``.
"""

from __future__ import annotations

import html
import os
from typing import Any

import requests
from celery import Celery

app = Celery("bench_naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("NAIVE_QUEUE", "bench-naive"),
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
FAKE = os.environ.get("NAIVE_FAKE_URL", "http://127.0.0.1:8099")


@app.task(
    name="bench_naive.enrich",
    autoretry_for=(requests.RequestException,),
    retry_backoff=True,
    max_retries=5,
)
def enrich(visitor_id: str, ticket_id: str) -> None:
    response = requests.get(
        f"{FAKE}/datafast/api/v1/visitors/{visitor_id}",
        headers={"Authorization": "Bearer df_bench"},
        timeout=10,
    )
    response.raise_for_status()
    data: dict[str, Any] = response.json()["data"]
    activity = data.get("activity") or {}
    pages = "".join(
        f"<li>{html.escape(str(p.get('url')))}</li>" for p in activity.get("visitedPages") or []
    )
    note = (
        f"<p>Visitor {html.escape(visitor_id)}: {activity.get('visitCount')} visits</p>"
        f"<ul>{pages}</ul>"
    )
    requests.put(
        f"{FAKE}/zendesk/api/v2/tickets/{ticket_id}.json",
        json={"ticket": {"comment": {"html_body": note, "public": False}}},
        auth=("bench@example.com/token", "bench-token"),
        timeout=10,
    ).raise_for_status()
