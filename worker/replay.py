"""Replaying dead letters through the normal tasks, so replay keeps every guarantee:
an (event, sink) that is already delivered is not posted again, however often it is replayed."""

from __future__ import annotations

from worker.runtime import Runtime
from worker.store import DeadLetter


def replay(rt: Runtime, letter: DeadLetter) -> str:
    """Queue a dead letter again and remove it from the list; returns what was queued."""
    from worker.tasks import deliver_to_sink, enrich_event

    store, queue = rt.store, rt.settings.celery_queue
    refetch = False
    if store.load_event(letter.event_id) is None:
        if letter.event is None or store.get_field(letter.event_id, "state") is None:
            store.remove_dead_letter(letter.id)
            return f"{letter.id}: event expired, dropped"
        # Retention removed the event's personal data and kept it in the letter: put the
        # event back; its journey is fetched again.
        store.restore_event(letter.event)
        refetch = True
    if letter.sink is None:
        store.reset_source(letter.event_id)
        store.set_state(letter.event_id, "queued", "replayed")
        store.add_step(letter.event_id, "replayed")
        enrich_event.apply_async((letter.event_id,), queue=queue)
    else:
        record = store.sink_record(letter.event_id, letter.sink)
        if record is not None and record.state == "delivered":
            store.remove_dead_letter(letter.id)
            return f"{letter.id}: already delivered"
        # "posting" makes the task look in the sink for the event's marker before posting,
        # in case the last attempt did reach it.
        store.reset_sink(letter.event_id, letter.sink, "posting")
        store.set_state(letter.event_id, "enriching", "replayed")
        store.add_step(letter.event_id, "replayed", sink=letter.sink)
        if refetch:
            # enrich_event fetches the journey and delivers to each sink not done yet.
            store.reset_source(letter.event_id)
            enrich_event.apply_async((letter.event_id,), queue=queue)
        else:
            deliver_to_sink.apply_async((letter.event_id, letter.sink), queue=queue)
    store.remove_dead_letter(letter.id)
    return f"{letter.id}: queued"
