"""The beat-scheduled realtime poll (``worker/realtime.py`` does the work).

``worker.app`` schedules ``visitor_enrich.poll_realtime`` every ``REALTIME_POLL_SECONDS`` when
the source is DataFast and Slack is configured; the task itself is a no-op otherwise, so a
schedule left over from another configuration does no harm. A poll that finds the map missing
or unreachable logs a warning and returns: there is nothing to retry, the next tick polls again.
"""

from __future__ import annotations

from worker.app import app
from worker.realtime import poll
from worker.runtime import get_runtime


# Celery's decorator is untyped (worker.tasks has the same exemption in pyproject.toml).
@app.task(name="visitor_enrich.poll_realtime", acks_late=False, ignore_result=True)
def poll_realtime() -> None:
    poll(get_runtime())
