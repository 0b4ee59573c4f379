"""The beat-scheduled retention run (``worker/privacy.py`` does the work).

``worker.app`` schedules ``visitor_enrich.expire_personal_data`` every few minutes (a quarter of
the shorter retention, at most five minutes). A run is idempotent: a tick that overlaps another
scrubs nothing twice, so a late or doubled tick does no harm.
"""

from __future__ import annotations

from worker.app import app
from worker.privacy import expire_personal_data as expire
from worker.runtime import get_runtime


@app.task(name="visitor_enrich.expire_personal_data", acks_late=False, ignore_result=True)
def expire_personal_data() -> dict[str, int]:
    rt = get_runtime()
    settings = rt.settings
    report = expire(
        rt.store, settings.journey_retention_seconds, settings.dead_letter_retention_seconds
    )
    return {"scrubbed": report.scrubbed, "deadLettersDropped": report.dead_letters_dropped}
