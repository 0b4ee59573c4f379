"""Per-process wiring that is not the web app's: the Celery worker's start-up."""

from __future__ import annotations

import gc

from worker.runtime import GC_YOUNG_THRESHOLD


def test_a_ready_worker_settles_the_garbage_collector() -> None:
    from celery.signals import worker_ready

    import worker.app

    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        worker_ready.send(sender=worker.app.app)
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
