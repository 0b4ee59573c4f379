"""Taking an event in: record it and queue its task in one atomic Redis call, many at a time.

The web process answers 202 only once the event is recorded *and* its ``enrich_event`` task
is in the broker. Both happen in one Lua script (``EventStore``'s accept script), so there is
no moment where an event is recorded but not queued, and no id to release when a publish
fails: Redis either ran the script or the sender gets 503 and retries.

The task message is written here rather than by Celery's ``apply_async`` for two reasons:
kombu's publish is a separate, synchronous round trip (about 1 ms of the web process per
event, most of the intake's cost; see README "Performance"), and it cannot be part of the
same atomic script as the event record. The message is Celery's documented task protocol 2
(https://docs.celeryq.dev/en/stable/internals/protocol.html) in kombu's Redis envelope (what
``kombu.transport.redis.Channel._put`` pushes). ``tests/test_intake.py`` compares it field by
field with what ``apply_async`` writes, so a Celery or kombu upgrade that changes the format
fails the tests, not production.

Concurrent requests are recorded together: while one script call is in flight, the events
that arrive meanwhile wait for the next call, which takes all of them (up to ``max_batch``).
A lone request still goes out at once; under load one round trip serves many requests.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio

from worker.events import Event
from worker.runtime import async_redis_client
from worker.store import EventStore

_random = random.Random()
# Version 4 (bits 76-79 = 0100) and the RFC 4122 variant (bits 62-63 = 10).
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)
# worker/tasks.py registers enrich_event under this name.
ENRICH_EVENT_TASK = "visitor_enrich.enrich_event"
# Celery's "origin" header: which process sent the task (Celery writes "gen<pid>@<host>").
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
# No chain, chord or callbacks: the third element of a protocol-2 body.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _random_uuid() -> str:
    """A random version-4 UUID in its usual text form.

    From the process's Mersenne Twister (seeded from os.urandom per process) and formatted
    here: ``str(uuid.uuid4())`` costs a system call and two object constructions, about
    6 us on the bench machine, twice per message. Task ids and delivery tags must be unique,
    not unpredictable.
    """
    bits = _random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def task_message(task_name: str, args: Sequence[str], queue: str) -> str:
    """The JSON that kombu's Redis transport would push for ``task.apply_async(args)``.

    Only string arguments are needed (event ids), which keeps ``argsrepr`` exact without
    Celery's ``saferepr``.
    """
    task_id = _random_uuid()
    body = orjson.dumps([list(args), {}, _EMBED])
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(tuple(args)),
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,
        # The default (anonymous) exchange: the routing key is the queue, as apply_async with
        # ``queue=`` sends it, and kombu pushes to the list named after the queue (priority 0).
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": _random_uuid(),
    }
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    ).decode()


@dataclass
class _LoopState:
    """What belongs to one event loop: an asyncio Redis client cannot cross loops."""

    loop: asyncio.AbstractEventLoop
    client: redis.asyncio.Redis
    script: Any
    pending: list[tuple[Event, asyncio.Future[bool]]] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None


class EventIntake:
    """Records and queues events for one web process; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        redis_url: str,
        task_name: str,
        queue: str,
        max_batch: int = 256,
    ) -> None:
        self.store = store
        self.redis_url = redis_url
        self.task_name = task_name
        self.queue = queue
        self.max_batch = max_batch
        self._state: _LoopState | None = None

    async def accept(self, event: Event) -> bool:
        """Record ``event`` and queue its task; False when the id was accepted before.

        Raises what the Redis client raises when the script could not run (the caller
        answers 503); then nothing of this event was recorded or queued.
        """
        state = self._loop_state()
        future: asyncio.Future[bool] = state.loop.create_future()
        state.pending.append((event, future))
        if state.flusher is None or state.flusher.done():
            state.flusher = state.loop.create_task(self._flush(state))
        return await future

    async def aclose(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            await state.client.aclose()

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            # A new loop (a test client starts one per request; a server has one): the old
            # client's connections belong to a loop that is gone, so start afresh.
            client = async_redis_client(self.redis_url)
            self._state = _LoopState(loop, client, self.store.accept_script(client))
        return self._state

    async def _flush(self, state: _LoopState) -> None:
        while state.pending:
            batch = state.pending[: self.max_batch]
            del state.pending[: len(batch)]
            items = [
                (event, task_message(self.task_name, (event.id,), self.queue)) for event, _ in batch
            ]
            keys, args = self.store.accept_arguments(items, self.queue)
            try:
                created = await state.script(keys=keys, args=args)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), new in zip(batch, created, strict=True):
                # A request whose client went away has a cancelled future; its event is
                # recorded and queued all the same, and the sender's retry is a duplicate.
                if not future.done():
                    future.set_result(bool(new))
