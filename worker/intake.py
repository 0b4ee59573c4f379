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

Concurrent requests are recorded together: while a script call is in flight, the events
that arrive meanwhile wait for the next call, which takes all of them (up to ``max_batch``).
A lone request still goes out at once; under load one round trip serves many requests.
Up to ``max_in_flight`` calls are under way at once (each on its own connection), so the web
process goes on reading, checking and batching requests while Redis runs a script, instead
of waiting idle for each answer. Each call is atomic on its own; no order between events is
promised or needed.

With replicas (``REDIS_MIN_REPLICAS``, 1 by default with a Sentinel ``REDIS_URL``), a 202 also
means that many replicas hold the event: after the script, one more round trip writes a fence
key and sends ``WAIT``, bounded by ``REDIS_REPLICA_TIMEOUT_MS`` (README "Guarantees"). Redis
replicates asynchronously, so without it a failover right after a 202 could lose the event.
When too few replicas acknowledge in time, the requests of that call are answered 503 although
the event is recorded and queued on the master: the sender's retry then finds a duplicate, and
that is answered 200 only once its own fence and ``WAIT`` succeed, i.e. once the event (written
before the fence) is on the replicas. If the master is lost before that, the event may be lost
with it; its sender was never told it was taken, and its retry is accepted anew by the new
master. Either way the task is queued at most once per master, and a second run of the task is
what the tasks are built for (an event delivered is not posted again).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio

from worker.errors import NotReplicated
from worker.events import Event
from worker.runtime import async_redis_client, check_replicated, fence_and_wait
from worker.store import EventStore

_random = random.Random()
# Version 4 (bits 76-79 = 0100) and the RFC 4122 variant (bits 62-63 = 10).
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)
# worker/tasks.py registers enrich_event and deliver_to_sink under these names.
ENRICH_EVENT_TASK = "visitor_enrich.enrich_event"
DELIVER_TO_SINK_TASK = "visitor_enrich.deliver_to_sink"
# Tasks whose first argument is the id of the event they work on.
EVENT_TASKS = frozenset({ENRICH_EVENT_TASK, DELIVER_TO_SINK_TASK})
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


class TaskMessageTemplate:
    """Writes the JSON that kombu's Redis transport would push for ``task.apply_async(args)``
    with one string argument (an event id), for one task name and queue.

    The message is rendered once with placeholders and split around them; each message is
    then the fixed parts joined with its four values: the body (base64 of the protocol-2
    arguments), ``argsrepr``, the task id and the delivery tag. Rendering the whole message
    with orjson for each event cost about 3.7 us of the web process's CPU per event on the
    bench machine; this costs 2.5 us, most of it the two random ids. ``tests/test_intake.py``
    checks the result against ``apply_async`` and against rendering it in full.
    """

    # What the placeholders stand in for, in the order of ``render_task_message``'s arguments.
    _FIELDS = ("body", "argsrepr", "task_id", "delivery_tag")
    # Where they stand in the rendered message: the task id is also the root and correlation id.
    _LAYOUT = ("body", "task_id", "task_id", "argsrepr", "task_id", "delivery_tag")
    # The body's arguments around the event id: ``[[id], {}, embed]``.
    _BODY_HEAD = b"[["
    _BODY_TAIL = b"],{}," + orjson.dumps(_EMBED) + b"]"

    def __init__(self, task_name: str, queue: str) -> None:
        placeholders = [f"@@{name}:{_random_uuid()}@@" for name in self._FIELDS]
        text = render_task_message(task_name, queue, *placeholders)
        # Each placeholder stands as a whole JSON string (quotes included) in the text.
        quoted = {
            orjson.dumps(p).decode(): name
            for name, p in zip(self._FIELDS, placeholders, strict=True)
        }
        pieces = re.split("(" + "|".join(map(re.escape, quoted)) + ")", text)
        slots = [quoted[token] for token in pieces[1::2]]
        if slots != list(self._LAYOUT):
            raise ValueError(f"task message template: unexpected placeholder layout {slots}")
        self._parts = tuple(pieces[0::2])

    def render(self, event_id: str) -> str:
        body = base64.b64encode(self._BODY_HEAD + orjson.dumps(event_id) + self._BODY_TAIL)
        task_id = f'"{_random_uuid()}"'
        p = self._parts
        # The values in ``_LAYOUT`` order, each between its fixed parts.
        return "".join(
            (
                p[0], f'"{body.decode()}"',
                p[1], task_id,
                p[2], task_id,
                p[3], orjson.dumps(repr((event_id,))).decode(),
                p[4], task_id,
                p[5], f'"{_random_uuid()}"',
                p[6],
            )
        )  # fmt: skip


def render_task_message(
    task_name: str,
    queue: str,
    body: str,
    argsrepr: str,
    task_id: str,
    delivery_tag: str,
) -> str:
    """The whole task message with the given values, rendered by orjson."""
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
        "argsrepr": argsrepr,
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
        "delivery_tag": delivery_tag,
    }
    return orjson.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    ).decode()


def task_message(task_name: str, args: Sequence[str], queue: str) -> str:
    """The JSON that kombu's Redis transport would push for ``task.apply_async(args)``,
    rendered in full (``TaskMessageTemplate`` writes the same for one argument, faster).

    Only string arguments are needed (event ids), which keeps ``argsrepr`` exact without
    Celery's ``saferepr``.
    """
    task_id = _random_uuid()
    return render_task_message(
        task_name,
        queue,
        base64.b64encode(orjson.dumps([list(args), {}, _EMBED])).decode(),
        repr(tuple(args)),
        task_id,
        _random_uuid(),
    )


def queued_event_id(raw: bytes | str) -> str | None:
    """The event a task message in the Redis queue is for (``EVENT_TASKS`` only), or None:
    kombu's envelope, whose body is the base64 of the protocol-2 ``[args, kwargs, embed]``."""
    try:
        message = orjson.loads(raw)
        if message["headers"]["task"] not in EVENT_TASKS:
            return None
        args = orjson.loads(base64.b64decode(message["body"]))[0]
    except (ValueError, KeyError, TypeError, IndexError):
        # orjson's and base64's errors are ValueErrors; anything else is not our message.
        return None
    return args[0] if args and isinstance(args[0], str) else None


@dataclass
class _LoopState:
    """What belongs to one event loop: an asyncio Redis client cannot cross loops."""

    loop: asyncio.AbstractEventLoop
    client: redis.asyncio.Redis
    script: Any
    pending: list[tuple[Event, asyncio.Future[bool]]] = field(default_factory=list)
    # The running ``_flush`` tasks: each sends one script call at a time.
    flushers: set[asyncio.Task[None]] = field(default_factory=set)


class EventIntake:
    """Records and queues events for one web process; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        redis_url: str,
        task_name: str,
        queue: str,
        max_batch: int = 256,
        max_in_flight: int = 2,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        self.store = store
        self.redis_url = redis_url
        self.task_name = task_name
        self.queue = queue
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        self._messages = TaskMessageTemplate(task_name, queue)
        self._state: _LoopState | None = None

    async def accept(self, event: Event) -> bool:
        """Record ``event`` and queue its task; False when the id was accepted before.

        Raises what the Redis client raises when the script could not run (the caller
        answers 503); then nothing of this event was recorded or queued.
        """
        state = self._loop_state()
        future: asyncio.Future[bool] = state.loop.create_future()
        state.pending.append((event, future))
        if len(state.flushers) < self.max_in_flight:
            flusher = state.loop.create_task(self._flush(state))
            state.flushers.add(flusher)
            flusher.add_done_callback(state.flushers.discard)
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
            render = self._messages.render
            items = [(event, render(event.id)) for event, _ in batch]
            keys, args = self.store.accept_arguments(items, self.queue)
            try:
                created = await state.script(keys=keys, args=args)
                if self.min_replicas:
                    await self._wait_for_replicas(state.client)
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

    async def _wait_for_replicas(self, client: redis.asyncio.Redis) -> None:
        """Write the fence and ``WAIT`` on one connection (a pipeline), in one round trip;
        ``NotReplicated`` when too few replicas have it within the timeout."""
        pipe = client.pipeline(transaction=False)
        fence_and_wait(pipe, self.store.prefix, self.min_replicas, self.replica_timeout_ms)
        try:
            check_replicated(await pipe.execute(), self.min_replicas, self.replica_timeout_ms)
        except NotReplicated:
            # Perhaps a master the Sentinels have just replaced (it lost its replica): idle
            # connections would go on talking to it; new ones ask the Sentinels again.
            await client.connection_pool.disconnect(inuse_connections=False)
            raise
