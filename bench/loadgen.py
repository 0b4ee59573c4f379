"""Signed ``POST /v1/events`` load, from its own process so it does not share a GIL with what
it measures.

``python -m bench.loadgen JOB.json OUT.json``; the job says where to send, how (``closed``:
``concurrency`` connections each sending back to back for ``duration`` seconds or until
``count`` requests; ``paced``: ``count`` requests at ``rate`` per second, open loop) and which
client to use. Every request carries a fresh Standard Webhooks signature computed when it is
sent, a unique ``webhook-id`` and a support-ticket event with a fresh UUIDv4 visitor id and a
unique ticket id.

Two clients: ``raw`` (default) writes HTTP/1.1 on keep-alive asyncio streams under uvloop and
reads ``content-length`` bodies; ``httpx`` uses ``httpx.AsyncClient``. The raw client exists
because httpx costs far more CPU per request than a bare uvicorn app does, which made the
load generator, not the server, the bottleneck of the reference (see the bench README notes).
The result includes the generator's own CPU use (``cpu_util``, 1.0 = one core busy).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    port: int
    host: str = "127.0.0.1"
    path: str = "/v1/events"
    secret: str = ""
    client: str = "raw"
    mode: str = "closed"  # closed | paced
    concurrency: int = 1
    duration: float = 0.0  # closed: measured seconds (0: until count is reached)
    warmup: float = 0.0  # closed: seconds sent before the measured window
    count: int = 0  # closed: stop after this many (0: no limit); paced: how many
    rate: float = 10.0  # paced: requests per second
    timeout: float = 60.0  # hard stop for the whole job
    id_prefix: str = "bench-"
    ticket_start: int = 1
    keep_ids: bool = True
    # 0: a fresh visitor per event; else each event picks one of this many visitors at random
    # (seeded by ``id_prefix``), so visitors come back within the run.
    visitors: int = 0
    all_sinks: bool = False


@dataclass
class Result:
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    window: float = 0.0
    measured_ok: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # Accepted (2xx) events: [webhook-id, ticket id, time.time() when the answer arrived].
    accepted: list[tuple[str, str, float]] = field(default_factory=list)
    cpu_seconds: float = 0.0
    timed_out: bool = False


class Signer:
    def __init__(self, secret: str) -> None:
        raw = secret.removeprefix("whsec_")
        self._key = base64.b64decode(raw + "=" * (-len(raw) % 4)) if raw else b""

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        digest = hmac.new(
            self._key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256
        ).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }


def event_body(ticket: int, visitor: str | None = None, all_sinks: bool = False) -> bytes:
    """A support-ticket event with a fresh visitor (or ``visitor``). With ``all_sinks``, a
    signup that every sink takes: a ticket (Zendesk), a room (Rocket.Chat) and an email
    (HubSpot, Slack) that names the ticket, so the fakes can tell whose note they got."""
    body: dict[str, str] = {
        "type": "support_ticket",
        "datafast_visitor_id": visitor or str(uuid.uuid4()),
        "ticket_id": str(ticket),
    }
    if all_sinks:
        body |= {"type": "signup", "room_id": f"room{ticket}", "email": f"t{ticket}@bench.example"}
    return json.dumps(body, separators=(",", ":")).encode()


def visitor_ids(count: int, seed: str) -> list[str]:
    """``count`` stable visitor ids for a run (the same seed gives the same ids)."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{seed}:{n}")) for n in range(count)]


class RawConnection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for uvicorn's answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        lines = [f"POST {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            head = (await self._reader.readuntil(b"\r\n\r\n")).lower()
            status = int(head[9:12])
            length = 0
            start = head.find(b"\r\ncontent-length:")
            if start >= 0:
                end = head.find(b"\r\n", start + 2)
                length = int(head[start + 17 : end])
            if length:
                await self._reader.readexactly(length)
            if b"\r\nconnection: close" in head:
                await self.close()
        except BaseException:
            await self.close()
            raise
        return status

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Generator:
    def __init__(self, job: Job) -> None:
        self.job = job
        self._visitors = visitor_ids(job.visitors, job.id_prefix) if job.visitors else []
        self._pick = random.Random(job.id_prefix)
        self.signer = Signer(job.secret)
        self.result = Result()
        self._next = 0
        self._httpx: Any = None

    def _take(self) -> int | None:
        if self.job.count and self._next >= self.job.count:
            return None
        self._next += 1
        return self._next - 1

    async def _send(self, conn: RawConnection | None, n: int) -> tuple[int, float, str, str]:
        ticket = self.job.ticket_start + n
        msg_id = f"{self.job.id_prefix}{n}"
        visitor = self._pick.choice(self._visitors) if self._visitors else None
        body = event_body(ticket, visitor, self.job.all_sinks)
        headers = self.signer.headers(msg_id, body)
        started = time.perf_counter()
        try:
            if conn is not None:
                status = await conn.post(self.job.path, headers, body)
            else:
                response = await self._httpx.post(
                    self.job.path,
                    content=body,
                    headers={**headers, "content-type": "application/json"},
                )
                status = response.status_code
        except Exception:
            status = 0
        return status, time.perf_counter() - started, msg_id, str(ticket)

    def _record(self, status: int, msg_id: str, ticket: str) -> None:
        self.result.sent += 1
        if status == 0:
            self.result.errors += 1
        key = str(status)
        self.result.statuses[key] = self.result.statuses.get(key, 0) + 1
        if 200 <= status < 300 and self.job.keep_ids:
            self.result.accepted.append((msg_id, ticket, time.time()))

    async def _closed_worker(self, measure_from: float, measure_to: float) -> None:
        conn = RawConnection(self.job.host, self.job.port) if self.job.client == "raw" else None
        try:
            while time.perf_counter() < measure_to:
                n = self._take()
                if n is None:
                    return
                begun = time.perf_counter()
                status, elapsed, msg_id, ticket = await self._send(conn, n)
                self._record(status, msg_id, ticket)
                done = begun + elapsed
                if begun >= measure_from and done <= measure_to and 200 <= status < 300:
                    self.result.measured_ok += 1
                    self.result.latencies_ms.append(elapsed * 1000)
        finally:
            if conn is not None:
                await conn.close()

    async def run(self) -> Result:
        job = self.job
        if job.client == "httpx":
            import httpx

            self._httpx = httpx.AsyncClient(
                base_url=f"http://{job.host}:{job.port}",
                limits=httpx.Limits(max_connections=max(job.concurrency, 1)),
                timeout=30,
            )
        try:
            if job.mode == "paced":
                await self._paced()
            else:
                await self._closed()
        finally:
            if self._httpx is not None:
                await self._httpx.aclose()
        return self.result

    async def _closed(self) -> None:
        job = self.job
        now = time.perf_counter()
        measure_from = now + job.warmup
        limit = job.duration if job.duration > 0 else job.timeout
        measure_to = measure_from + min(limit, job.timeout)
        cpu_before: float | None = None

        async def cpu_mark() -> None:
            nonlocal cpu_before
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu_before = time.process_time()

        marker = asyncio.ensure_future(cpu_mark())
        workers = [self._closed_worker(measure_from, measure_to) for _ in range(job.concurrency)]
        await asyncio.gather(*workers)
        ended = min(time.perf_counter(), measure_to)
        if cpu_before is None:
            marker.cancel()
            cpu_before = time.process_time()
        self.result.cpu_seconds = time.process_time() - cpu_before
        self.result.window = max(1e-9, ended - measure_from)
        self.result.timed_out = bool(job.count) and self._next < job.count

    async def _paced(self) -> None:
        job = self.job
        pool = [RawConnection(job.host, job.port) for _ in range(max(1, job.concurrency))]
        free: asyncio.Queue[RawConnection] = asyncio.Queue()
        for conn in pool:
            free.put_nowait(conn)
        start = time.perf_counter()
        deadline = start + job.timeout
        cpu_before = time.process_time()

        async def one(n: int) -> None:
            conn = await free.get() if job.client == "raw" else None
            try:
                status, elapsed, msg_id, ticket = await self._send(conn, n)
            finally:
                if conn is not None:
                    free.put_nowait(conn)
            self._record(status, msg_id, ticket)
            if 200 <= status < 300:
                self.result.measured_ok += 1
                self.result.latencies_ms.append(elapsed * 1000)

        tasks = []
        for n in range(job.count):
            due = start + n / job.rate
            if due > deadline:
                self.result.timed_out = True
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            self._next = n + 1
            tasks.append(asyncio.ensure_future(one(n)))
        await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, deadline - time.perf_counter()))
        for conn in pool:
            await conn.close()
        self.result.window = time.perf_counter() - start
        self.result.cpu_seconds = time.process_time() - cpu_before


def run_job(job: Job) -> Result:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        runner = asyncio.run
    result: Result = runner(Generator(job).run())
    return result


def main(argv: list[str]) -> int:
    job_path, out_path = argv
    with open(job_path) as fh:
        job = Job(**json.load(fh))
    result = run_job(job)
    with open(out_path, "w") as fh:
        json.dump(result.__dict__, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
