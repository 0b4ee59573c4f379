"""The scenarios. Each starts what it needs, runs the service and its reference in the
same invocation, and returns a ``ScenarioResult``: numeric figures, table rows and targets.

Times that cross processes (an event accepted by the load generator, a request arriving at a
fake) are ``time.time()`` on the same host.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import procs
from bench.procs import Isolation, Proc, Procs


@dataclass
class Options:
    quick: bool = False
    events: int = 1000
    memory_events: int = 3000
    quota: int = 20
    latency: float = 0.1
    concurrency: int = 32
    quota_concurrency: int = 8
    worker_counts: tuple[int, ...] = (1, 2, 4)
    # One process, and as many as the naive prefork pool has (one per CPU): the target is
    # judged on the second.
    naive_workers: tuple[int, ...] = tuple(sorted({1, os.cpu_count() or 1}))
    quota_headroom: bool = True
    ingest_levels: tuple[int, ...] = (1, 8, 32, 64, 128)
    ingest_seconds: float = 3.0
    web_workers: int = 1
    queue_events: int = 200
    queue_rate: float = 20.0
    latency_events: int = 200
    latency_rate: float = 10.0
    cache_events: int = 1000
    cache_visitors: int = 200
    cache_seconds: float = 50.0
    cache_workers: int = 2
    recovery_runs: int = 10
    # WORKER_LEASE_SECONDS for the recovery scenario; None: the service's default.
    recovery_lease: float | None = None


@dataclass
class Context:
    run_id: str
    options: Options
    procs: Procs
    redis: redis.Redis
    secret: str
    fake_port: int
    work_dir: Path

    @property
    def fake_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}"


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    measure: str
    ours: str
    reference: str = ""
    compare: str = ""
    target: str = ""
    held: bool | None = None


@dataclass
class ScenarioResult:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


# Statistics ------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The largest number of ``times`` inside any half-open interval of ``window`` seconds."""
    data = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(data):
        while t - data[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def tightest_span(times: list[float], n: int) -> float:
    """The shortest time holding ``n`` consecutive ``times`` (inf when there are fewer)."""
    data = sorted(times)
    if n < 2 or len(data) < n:
        return math.inf
    return min(data[i + n - 1] - data[i] for i in range(len(data) - n + 1))


def fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


# Processes -------------------------------------------------------------------------------


def fake_config(ctx: Context, **services: dict[str, float]) -> None:
    httpx.post(f"{ctx.fake_url}/_bench/config", json=services, timeout=10).raise_for_status()


def fake_counts(ctx: Context) -> dict[str, dict[str, int]]:
    response = httpx.get(f"{ctx.fake_url}/_bench/counts", timeout=10)
    response.raise_for_status()
    counts: dict[str, dict[str, int]] = response.json()
    return counts


def fake_stats(ctx: Context) -> dict[str, Any]:
    response = httpx.get(f"{ctx.fake_url}/_bench/stats", timeout=60)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def start_web(sc: Scenario, env: dict[str, str], workers: int = 1) -> tuple[Proc, int]:
    """The real web app (uvicorn, ``workers`` processes); returns it and its port."""
    port = procs.free_port()
    argv = [
        str(procs.BIN / "uvicorn"),
        "worker.web:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = sc.start("web", argv, env)
    procs.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc, port


def start_workers(
    sc: Scenario, env: dict[str, str], count: int, concurrency: int, app: str = "worker.app"
) -> list[Proc]:
    """``count`` Celery worker processes (threads pool) on the scenario's queue."""
    return [
        sc.start(
            f"worker{i}",
            procs.celery_worker_argv(app, sc.iso.queue, sc.iso.node(str(i)), concurrency),
            env,
        )
        for i in range(count)
    ]


def run_loadgen(ctx: Context, **job: Any) -> dict[str, Any]:
    """Run one load-generator job in its own process; return its result."""
    job.setdefault("secret", ctx.secret)
    name = f"loadgen-{time.monotonic_ns()}"
    job_path = ctx.work_dir / f"{name}.json"
    out_path = ctx.work_dir / f"{name}.out.json"
    job_path.write_text(json.dumps(job))
    timeout = float(job.get("timeout", 60)) + float(job.get("warmup", 0)) + 30
    completed = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(job_path), str(out_path)],
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    job_path.unlink(missing_ok=True)
    out_path.unlink(missing_ok=True)
    return result


def preload(ctx: Context, port: int, count: int, prefix: str, ticket_start: int = 1) -> list[str]:
    """Send ``count`` events as fast as the web app takes them; return the accepted tickets."""
    result = run_loadgen(
        ctx,
        port=port,
        mode="closed",
        concurrency=16,
        count=count,
        timeout=max(60.0, count / 50),
        id_prefix=prefix,
        ticket_start=ticket_start,
    )
    tickets = [ticket for _, ticket, _ in result["accepted"]]
    if len(tickets) != count:
        raise RuntimeError(f"preload accepted {len(tickets)} of {count}: {result['statuses']}")
    return tickets


def wait_until(
    check: Callable[[], bool], timeout: float, procs_alive: list[Proc] | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        for proc in procs_alive or []:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        time.sleep(0.25)
    return check()


def wait_for_sink(
    ctx: Context, tickets: int, timeout: float, workers: list[Proc], service: str = "zendesk"
) -> bool:
    return wait_until(lambda: fake_counts(ctx)[service]["keys"] >= tickets, timeout, workers)


def event_states(client: redis.Redis, prefix: str, ids: list[str]) -> dict[str, int]:
    states: dict[str, int] = {}
    for start in range(0, len(ids), 1000):
        pipe = client.pipeline()
        for event_id in ids[start : start + 1000]:
            pipe.hget(f"{prefix}event:{event_id}", "state")
        for value in pipe.execute():
            key = value.decode() if value else "missing"
            states[key] = states.get(key, 0) + 1
    return states


class Scenario:
    """One part of a scenario: its Redis isolation and its processes, all removed on exit."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx = ctx
        self.iso = Isolation(ctx.run_id, name)
        self.started: list[Proc] = []

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *_: object) -> None:
        for proc in reversed(self.started):
            self.ctx.procs.stop(proc)
        self.started.clear()
        procs.cleanup(self.ctx.redis, self.iso)

    def start(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = self.ctx.procs.start(f"{self.iso.name}-{label}", argv, env)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        self.ctx.procs.stop(proc)
        if proc in self.started:
            self.started.remove(proc)

    def env(self, **overrides: Any) -> dict[str, str]:
        return procs.service_env(self.iso, self.ctx.secret, self.ctx.fake_port, **overrides)


# 1. Ingest -------------------------------------------------------------------------------


def ingest(ctx: Context) -> ScenarioResult:
    opts = ctx.options
    result = ScenarioResult("ingest")
    warmup = 0.2 if opts.quick else 0.5
    with Scenario(ctx, "ingest") as sc:
        env = sc.env()
        _, web_port = start_web(sc, env, opts.web_workers)
        bare_port = procs.free_port()
        bare_argv = [
            str(procs.BIN / "uvicorn"),
            "bench.bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        if opts.web_workers > 1:
            bare_argv += ["--workers", str(opts.web_workers)]
        bare = sc.start("bare", bare_argv)
        procs.wait_http(f"http://127.0.0.1:{bare_port}/healthz", bare)
        accepted_ids: list[str] = []
        levels = []
        for level in opts.ingest_levels:
            row: dict[str, Any] = {"concurrency": level}
            runs: dict[str, list[dict[str, Any]]] = {"bare": [], "ours": []}
            # bare, ours, ours, bare at each level (an ABBA order): both see the same machine,
            # and a load that rises or falls during the level weighs on both alike.
            for turn, label in enumerate(("bare", "ours", "ours", "bare")):
                port = bare_port if label == "bare" else web_port
                out = run_loadgen(
                    ctx,
                    port=port,
                    mode="closed",
                    concurrency=level,
                    duration=opts.ingest_seconds,
                    warmup=warmup,
                    timeout=opts.ingest_seconds + 30,
                    id_prefix=f"ing-{ctx.run_id}-{label}-{level}-{turn}-",
                    keep_ids=label == "ours",
                )
                runs[label].append(out)
                if label == "ours":
                    accepted_ids += [event_id for event_id, _, _ in out["accepted"]]
            for label, outs in runs.items():
                lat = [ms for out in outs for ms in out["latencies_ms"]]
                statuses: dict[str, int] = {}
                for out in outs:
                    for code, n in out["statuses"].items():
                        statuses[code] = statuses.get(code, 0) + n
                row[label] = {
                    "events_per_s": sum(o["measured_ok"] / o["window"] for o in outs) / len(outs),
                    "runs_events_per_s": [o["measured_ok"] / o["window"] for o in outs],
                    "p50_ms": percentile(lat, 50),
                    "p99_ms": percentile(lat, 99),
                    "statuses": statuses,
                    "loadgen_cpu": sum(o["cpu_seconds"] / o["window"] for o in outs) / len(outs),
                }
            row["ratio"] = row["ours"]["events_per_s"] / max(row["bare"]["events_per_s"], 1e-9)
            levels.append(row)
        states = event_states(ctx.redis, sc.iso.prefix, accepted_ids)
        in_queue = procs.queue_length(ctx.redis, sc.iso.queue)
    missing = states.get("missing", 0)
    peak_ours = max(r["ours"]["events_per_s"] for r in levels)
    peak_bare = max(r["bare"]["events_per_s"] for r in levels)
    peak_ratio = peak_ours / max(peak_bare, 1e-9)
    all_kept = missing == 0 and in_queue == len(accepted_ids)
    result.details = {
        "levels": levels,
        "accepted": len(accepted_ids),
        "in_redis": len(accepted_ids) - missing,
        "tasks_in_queue": in_queue,
        "loadgen_client": "raw asyncio HTTP/1.1 keep-alive (uvloop)",
        "web_workers": opts.web_workers,
    }
    result.figures = {
        "peak_events_per_s": peak_ours,
        "bare_peak_events_per_s": peak_bare,
        "peak_ratio": peak_ratio,
        "accepted": len(accepted_ids),
        "missing_in_redis": missing,
        "tasks_in_queue": in_queue,
    }
    for row in levels:
        ours, bare = row["ours"], row["bare"]
        result.rows.append(
            Row(
                "ingest",
                f"c={row['concurrency']}: events/s (p50/p99 ms)",
                f"{fmt(ours['events_per_s'], 0)} ({fmt(ours['p50_ms'])}/{fmt(ours['p99_ms'])})",
                f"bare {fmt(bare['events_per_s'], 0)} "
                f"({fmt(bare['p50_ms'])}/{fmt(bare['p99_ms'])})",
                f"{row['ratio']:.3f}x",
            )
        )
    result.targets["throughput >= 0.5x bare"] = peak_ratio >= 0.5
    result.targets["every accepted event in Redis"] = all_kept
    result.rows.append(
        Row(
            "ingest",
            "peak events/s",
            fmt(peak_ours, 0),
            f"bare {fmt(peak_bare, 0)}",
            f"{peak_ratio:.3f}x",
            ">= 0.5x",
            peak_ratio >= 0.5,
        )
    )
    result.rows.append(
        Row(
            "ingest",
            "accepted -> in Redis (hash / task)",
            f"{len(accepted_ids) - missing}/{len(accepted_ids)} / {in_queue}",
            "",
            "",
            "all",
            all_kept,
        )
    )
    return result


# 2. Queue overhead -----------------------------------------------------------------------


def _noop_reference(ctx: Context, count: int, rate: float) -> tuple[list[float], dict[str, int]]:
    """Publish ``count`` no-op tasks at ``rate``/s; return publish-returned -> started (ms)."""
    with Scenario(ctx, "noop") as sc:
        key = f"{sc.iso.prefix}times"
        env = {"NOOP_BROKER_URL": procs.REDIS_URL, "NOOP_QUEUE": sc.iso.queue}
        (worker,) = start_workers(sc, env, 1, ctx.options.concurrency, app="bench.noop_app")
        os.environ.update(env)
        from bench import noop_app

        noop_app.app.conf.broker_url = procs.REDIS_URL
        noop_app.app.conf.task_default_queue = sc.iso.queue
        warm = 3
        for seq in range(warm):
            noop_app.record.apply_async((-1 - seq, key), queue=sc.iso.queue)
        if not wait_until(lambda: ctx.redis.llen(key) >= warm, 60, [worker]):
            raise RuntimeError("the no-op worker did not start within 60 s")
        published: dict[int, float] = {}
        start = time.perf_counter()
        for seq in range(count):
            time.sleep(max(0.0, start + seq / rate - time.perf_counter()))
            noop_app.record.apply_async((seq, key), queue=sc.iso.queue)
            published[seq] = time.time()
        wait_until(lambda: ctx.redis.llen(key) >= warm + count, 30 + count / rate, [worker])
        delays = []
        for raw in ctx.redis.lrange(key, 0, -1):
            seq_text, ran = raw.decode().split()
            seq = int(seq_text)
            if seq in published:
                delays.append((float(ran) - published[seq]) * 1000)
        memory = procs.proc_status(worker.pid)
    return delays, memory


def queue_overhead(ctx: Context) -> ScenarioResult:
    opts = ctx.options
    result = ScenarioResult("queue")
    count = opts.queue_events
    fake_config(ctx)
    with Scenario(ctx, "queue") as sc:
        env = sc.env()
        _, web_port = start_web(sc, env)
        workers = start_workers(sc, env, 1, opts.concurrency)
        # Warm-up: the worker is up, connections are open, modules are imported.
        warm = run_loadgen(
            ctx,
            port=web_port,
            mode="paced",
            count=3,
            rate=10,
            id_prefix=f"qw-{ctx.run_id}-",
            ticket_start=900_000_000,
        )
        if not wait_for_sink(ctx, len(warm["accepted"]), 60, workers):
            raise RuntimeError("the worker did not deliver the warm-up events within 60 s")
        fake_config(ctx)
        out = run_loadgen(
            ctx,
            port=web_port,
            mode="paced",
            count=count,
            rate=opts.queue_rate,
            concurrency=4,
            timeout=30 + count / opts.queue_rate,
            id_prefix=f"q-{ctx.run_id}-",
        )
        accepted = {ticket: at for _, ticket, at in out["accepted"]}
        wait_for_sink(ctx, len(accepted), 30 + count / opts.queue_rate, workers)
        arrivals = fake_stats(ctx)["zendesk"]["arrivals"]
        ids = [event_id for event_id, _, _ in out["accepted"]]
        states = event_states(ctx.redis, sc.iso.prefix, ids)
    first_arrival: dict[str, float] = {}
    for at, status, ticket, _ in arrivals:
        if status == 200 and ticket not in first_arrival:
            first_arrival[ticket] = at
    ours = [(first_arrival[t] - accepted[t]) * 1000 for t in accepted if t in first_arrival]
    ref, noop_memory = _noop_reference(ctx, count, opts.queue_rate)
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    r50, r99 = percentile(ref, 50), percentile(ref, 99)
    result.figures = {
        "p50_ms": p50,
        "p99_ms": p99,
        "ref_p50_ms": r50,
        "ref_p99_ms": r99,
        "p50_above_ref_ms": p50 - r50,
        "p99_above_ref_ms": p99 - r99,
        "events": len(ours),
    }
    result.details = {
        "states": states,
        "delivered": len(ours),
        "sent": count,
        "rate_per_s": opts.queue_rate,
        "ours_max_ms": max(ours, default=math.nan),
        "ref_max_ms": max(ref, default=math.nan),
        "noop_worker_memory_kb": noop_memory,
        "hops": "ours: web -> enrich_event -> (provider GET) -> PUT to the sink; "
        "reference: apply_async -> no-op task",
    }
    held50 = p50 - r50 <= 10
    held99 = p99 - r99 <= 50
    result.targets["p50 <= ref + 10 ms"] = held50
    result.targets["p99 <= ref + 50 ms"] = held99
    result.targets["every event delivered"] = len(ours) == count
    result.rows += [
        Row(
            "queue",
            "accepted -> sink p50 ms",
            fmt(p50),
            f"no-op task {fmt(r50)}",
            f"+{fmt(p50 - r50)} ms",
            "<= +10 ms",
            held50,
        ),
        Row(
            "queue",
            "accepted -> sink p99 ms",
            fmt(p99),
            f"no-op task {fmt(r99)}",
            f"+{fmt(p99 - r99)} ms",
            "<= +50 ms",
            held99,
        ),
    ]
    return result


# 3. Quota use ----------------------------------------------------------------------------


QUOTA_TARGET = 0.95


def quota_run(ctx: Context, workers_count: int, limit: str | None = None) -> dict[str, Any]:
    opts = ctx.options
    q, count = opts.quota, opts.events
    fake_config(ctx, datafast={"latency": opts.latency, "quota": q})
    label = f"quota-w{workers_count}" + (f"-l{limit.replace('/', '_')}" if limit else "")
    with Scenario(ctx, label) as sc:
        env = sc.env(DATAFAST_RATE_LIMIT=limit or str(q))
        web, web_port = start_web(sc, env)
        tickets = preload(ctx, web_port, count, f"{label}-{ctx.run_id}-")
        sc.stop(web)
        fake_config(ctx, datafast={"latency": opts.latency, "quota": q})
        started = time.time()
        workers = start_workers(sc, env, workers_count, opts.quota_concurrency)
        budget = 60 + 3 * count / q
        done = wait_for_sink(ctx, len(tickets), budget, workers)
        finished = time.time()
        stats = fake_stats(ctx)
        worker_cpu = sum(procs.cpu_seconds(w.pid) for w in workers)
    arrivals = stats["datafast"]["arrivals"]
    ok = sorted(a[0] for a in arrivals if a[1] == 200)
    refused = [a for a in arrivals if a[1] == 429]
    spans = [a[3] * 1000 for a in refused]
    span = ok[-1] - ok[0] if len(ok) > 1 else math.nan
    rate = (len(ok) - 1) / span if len(ok) > 1 and span > 0 else math.nan
    all_times = [a[0] for a in arrivals]
    return {
        "workers": workers_count,
        "concurrency_per_worker": opts.quota_concurrency,
        "rate_limit_setting": limit or str(q),
        "quota": q,
        "events": count,
        "completed": done,
        "requests": len(arrivals),
        "admitted": len(ok),
        "refused_429": len(refused),
        "achieved_per_s": rate,
        "ratio": rate / q,
        "max_arrivals_in_any_1s": max_in_window(all_times),
        "tightest_span_of_q_plus_1_ms": tightest_span(all_times, q + 1) * 1000,
        # For each 429: how long before it the oldest request of its full window had arrived.
        # Close to 1000 ms means the quota was overrun by arrival jitter of a few ms.
        "refused_window_span_ms": {
            "min": min(spans, default=math.nan),
            "median": percentile(spans, 50),
            "max": max(spans, default=math.nan),
            "within_10ms_of_window": sum(1 for v in spans if v >= 990),
        },
        "refused_in_first_2s": sum(1 for a in refused if ok and a[0] - ok[0] < 2.0),
        "seconds_to_drain": finished - started,
        "worker_cpu_seconds": worker_cpu,
    }


def quota(ctx: Context) -> ScenarioResult:
    opts = ctx.options
    result = ScenarioResult("quota")
    runs = [quota_run(ctx, n) for n in opts.worker_counts]
    if opts.quota_headroom and opts.quota > 1:
        # The same run with DATAFAST_RATE_LIMIT one below the provider's quota: how much of
        # the quota a configuration-only workaround keeps.
        runs.append(quota_run(ctx, max(opts.worker_counts), limit=str(opts.quota - 1)))
    result.details = {"runs": runs, "latency_s": opts.latency}
    for run in runs:
        n = run["workers"]
        setting = run["rate_limit_setting"]
        headroom = setting != str(run["quota"])
        key = f"w{n}" + (f"_limit{setting}" if headroom else "")
        held = run["ratio"] >= QUOTA_TARGET and run["refused_429"] == 0 and run["completed"]
        if not headroom:
            result.targets[f"{n} worker(s): >= {QUOTA_TARGET} Q, zero 429"] = bool(held)
        result.figures[f"{key}_ratio"] = run["ratio"]
        result.figures[f"{key}_per_s"] = run["achieved_per_s"]
        result.figures[f"{key}_429"] = run["refused_429"]
        result.figures[f"{key}_max_in_1s"] = run["max_arrivals_in_any_1s"]
        spans = run["refused_window_span_ms"]
        label = f"{n} worker(s) x{run['concurrency_per_worker']}"
        if headroom:
            label += f", DATAFAST_RATE_LIMIT={setting}"
        result.rows.append(
            Row(
                "quota",
                label,
                f"{fmt(run['achieved_per_s'], 2)} req/s, {run['refused_429']} x 429",
                f"Q={run['quota']}/s; max {run['max_arrivals_in_any_1s']} in 1 s"
                + (
                    f"; 429 spans {spans['min']:.0f}-{spans['max']:.0f} ms"
                    if run["refused_429"]
                    else ""
                ),
                f"{run['ratio']:.3f} Q",
                "(information)" if headroom else f">= {QUOTA_TARGET} Q, 0 x 429",
                None if headroom else bool(held),
            )
        )
    return result


# 4. Naive baseline -----------------------------------------------------------------------


def _throughput(stats: dict[str, Any], count: int) -> tuple[float, float]:
    """(events/s, seconds): first provider arrival -> last sink arrival, over ``count``."""
    provider = [a[0] for a in stats["datafast"]["arrivals"]]
    sink = [a[0] for a in stats["zendesk"]["arrivals"] if a[1] == 200]
    if not provider or not sink:
        return math.nan, math.nan
    seconds = max(sink) - min(provider)
    return count / seconds, seconds


def _ours_drain(ctx: Context, workers_count: int) -> dict[str, Any]:
    """Preload ``events`` through the web app, then drain them with ``workers_count`` workers."""
    opts = ctx.options
    count = opts.events
    fake_config(ctx, datafast={"latency": opts.latency})
    with Scenario(ctx, f"naive-ours{workers_count}") as sc:
        env = sc.env()
        web, web_port = start_web(sc, env)
        tickets = preload(ctx, web_port, count, f"no{workers_count}-{ctx.run_id}-")
        sc.stop(web)
        fake_config(ctx, datafast={"latency": opts.latency})
        workers = start_workers(sc, env, workers_count, opts.concurrency)
        done = wait_for_sink(ctx, len(tickets), 60 + count / 5, workers)
        rate, seconds = _throughput(fake_stats(ctx), count)
        cpu = sum(procs.cpu_seconds(w.pid) for w in workers)
    return {
        "workers": workers_count,
        "concurrency": opts.concurrency,
        "events_per_s": rate,
        "seconds": seconds,
        "completed": done,
        "worker_cpu_seconds": cpu,
        "worker_cpu_ms_per_event": 1000 * cpu / count,
    }


def naive(ctx: Context) -> ScenarioResult:
    opts = ctx.options
    count = opts.events
    result = ScenarioResult("naive")
    ours_runs = [_ours_drain(ctx, n) for n in opts.naive_workers]
    fake_config(ctx, datafast={"latency": opts.latency})
    with Scenario(ctx, "naive-ref") as sc:
        env = {
            "NAIVE_BROKER_URL": procs.REDIS_URL,
            "NAIVE_QUEUE": sc.iso.queue,
            "NAIVE_FAKE_URL": ctx.fake_url,
        }
        os.environ.update(env)
        from bench import naive as naive_app

        naive_app.app.conf.broker_url = procs.REDIS_URL
        naive_app.FAKE = ctx.fake_url
        for n in range(count):
            naive_app.enrich.apply_async(
                (str(uuid.uuid4()), str(1_000_000 + n)), queue=sc.iso.queue
            )
        worker = sc.start(
            "worker0",
            procs.celery_worker_argv("bench.naive", sc.iso.queue, sc.iso.node("0"), 0, None),
            env,
        )
        naive_done = wait_for_sink(ctx, count, 60 + count / 2, [worker])
        naive_rate, naive_seconds = _throughput(fake_stats(ctx), count)
    result.figures = {
        "naive_events_per_s": naive_rate,
        "naive_seconds": naive_seconds,
    }
    result.details = {
        "events": count,
        "provider_latency_s": opts.latency,
        "ours": ours_runs,
        "naive": f"celery default prefork pool, concurrency {os.cpu_count()} (cpu count), "
        "prefetch 4, early ack, requests.get/put without a session",
        "naive_completed": naive_done,
        "throughput": "events / (last sink arrival - first provider arrival), queue preloaded",
    }
    # The target compares like with like: as many worker processes as the naive prefork
    # pool has (one per CPU). Other counts are shown for information.
    naive_processes = os.cpu_count() or 1
    for run in ours_runs:
        n = run["workers"]
        ratio = run["events_per_s"] / naive_rate if naive_rate else math.nan
        held = ratio >= 10 and run["completed"] and naive_done
        result.figures[f"ours_w{n}_events_per_s"] = run["events_per_s"]
        result.figures[f"ours_w{n}_ratio"] = ratio
        like_for_like = n == naive_processes
        if like_for_like:
            result.targets[f"ours ({n} worker processes, as naive)/naive >= 10x"] = bool(held)
        result.rows.append(
            Row(
                "naive",
                f"events/s, {int(opts.latency * 1000)} ms provider",
                f"{fmt(run['events_per_s'])} ({n} proc x{run['concurrency']} threads)",
                f"naive {fmt(naive_rate)} (prefork x{naive_processes})",
                f"{ratio:.2f}x",
                ">= 10x, same processes" if like_for_like else "(information)",
                bool(held) if like_for_like else None,
            )
        )
    return result


# 5. Memory -------------------------------------------------------------------------------


def memory(ctx: Context) -> ScenarioResult:
    opts = ctx.options
    count = opts.memory_events
    result = ScenarioResult("memory")
    fake_config(ctx)
    # (seconds since the worker started, events delivered, VmRSS kB)
    samples: list[tuple[float, int, int]] = []
    with Scenario(ctx, "memory") as sc:
        env = sc.env()
        web, web_port = start_web(sc, env)
        tickets = preload(ctx, web_port, count, f"mem-{ctx.run_id}-")
        sc.stop(web)
        fake_config(ctx)
        (worker,) = start_workers(sc, env, 1, opts.concurrency)
        started = time.monotonic()

        def progress() -> bool:
            delivered = fake_counts(ctx)["zendesk"]["keys"]
            rss = procs.proc_status(worker.pid).get("VmRSS", 0)
            samples.append((round(time.monotonic() - started, 1), delivered, rss))
            return delivered >= len(tickets)

        done = wait_until(progress, 120 + count / 10, [worker])
        status = procs.proc_status(worker.pid)
        worker_cpu = procs.cpu_seconds(worker.pid)
    hwm_mb = status.get("VmHWM", 0) / 1024
    rss_mb = status.get("VmRSS", 0) / 1024
    early = next((rss for _, n, rss in samples if n >= count / 10), 0) / 1024
    held = hwm_mb <= 150 and done
    result.figures = {
        "events": count,
        "peak_rss_mb": hwm_mb,
        "final_rss_mb": rss_mb,
        "rss_at_10pct_mb": early,
        "threads": status.get("Threads", 0),
    }
    step = max(1, len(samples) // 20)
    result.details = {
        "completed": done,
        "concurrency": opts.concurrency,
        "worker_cpu_seconds": worker_cpu,
        "samples_s_delivered_rsskb": samples[::step] + samples[-1:],
    }
    result.targets["peak RSS <= 150 MB"] = bool(held)
    result.rows.append(
        Row(
            "memory",
            f"worker VmHWM after {count:,} events (MB)",
            fmt(hwm_mb),
            f"RSS at 10%: {fmt(early)}, at end: {fmt(rss_mb)}",
            "",
            "<= 150 MB",
            bool(held),
        )
    )
    return result


# 6. Recovery ------------------------------------------------------------------------------

# The sink holds each post this long in the kill runs: the posts are in flight when the
# worker that sent them is killed.
KILL_HOLD_SECONDS = 10.0
KILL_EVENTS = 6
OUTAGE_RATE = 20.0  # events/s sent through each outage
OUTAGE_DOWN_SECONDS = 2.0


def _worker(sc: Scenario, env: dict[str, str], label: str, concurrency: int = 8) -> Proc:
    """One worker (threads pool) logging at INFO, started and ready."""
    argv = procs.celery_worker_argv("worker.app", sc.iso.queue, sc.iso.node(label), concurrency)
    argv[argv.index("--loglevel") + 1] = "INFO"
    proc = sc.start(label, argv, env)
    if not wait_until(lambda: " ready." in proc.log.read_text(errors="replace"), 60, [proc]):
        raise RuntimeError(f"{label} was not ready within 60 s")
    return proc


def _all_delivered(client: redis.Redis, prefix: str, ids: list[str], timeout: float) -> float:
    """Seconds until every event is delivered (from now), or inf after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if event_states(client, prefix, ids) == {"delivered": len(ids)}:
                return time.monotonic() - started
        except redis.RedisError:
            pass
        time.sleep(0.1)
    return math.inf


def _kill_runs(
    ctx: Context, sc: Scenario, env: dict[str, str], client: redis.Redis, port: int
) -> tuple[list[float], Proc]:
    """Each run: one worker takes KILL_EVENTS events and posts them (the sink holds the
    posts); a second worker starts; the first is killed with SIGKILL. Seconds from the kill
    to every event delivered; and the worker left running."""
    holder = _worker(sc, env, "kill-w0")
    times = []
    for run in range(ctx.options.recovery_runs):
        fake_config(ctx, zendesk={"latency": KILL_HOLD_SECONDS})
        out = run_loadgen(
            ctx,
            port=port,
            mode="closed",
            concurrency=KILL_EVENTS,
            count=KILL_EVENTS,
            id_prefix=f"rk{run}-{ctx.run_id}-",
            ticket_start=700_000_000 + run * 1000,
        )
        ids = [event_id for event_id, _, _ in out["accepted"]]
        posted = len(ids)

        def held(posted: int = posted) -> bool:
            return fake_counts(ctx)["zendesk"]["keys"] >= posted

        if not wait_until(held, 30, [holder]):
            raise RuntimeError("the posts did not reach the sink within 30 s")
        survivor = _worker(sc, env, f"kill-w{run + 1}")
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        fake_config(ctx)  # the sink answers at once again (the held answers never arrive)
        sc.stop(holder)
        _all_delivered(client, sc.iso.prefix, ids, 120)
        times.append(time.monotonic() - killed_at)
        holder = survivor
    return times, holder


def _outage_runs(
    ctx: Context,
    sc: Scenario,
    env: dict[str, str],
    private: procs.PrivateRedis,
    port: int,
    workers: list[Proc],
) -> tuple[list[float], dict[str, int]]:
    """Each run: events sent at OUTAGE_RATE/s to the web app on ``port`` while Redis is
    shut down for OUTAGE_DOWN_SECONDS and started again. Seconds from Redis answering again
    to every accepted (202) event delivered, and the answers seen."""
    fake_config(ctx, datafast={"latency": 0.05}, zendesk={"latency": 0.2})
    times, statuses = [], {}
    for run in range(ctx.options.recovery_runs):
        seconds = 1.5 + OUTAGE_DOWN_SECONDS + 1.5
        job: dict[str, Any] = {}

        def send(job: dict[str, Any] = job, run: int = run, seconds: float = seconds) -> None:
            job["out"] = run_loadgen(
                ctx,
                port=port,
                mode="paced",
                count=int(OUTAGE_RATE * seconds),
                rate=OUTAGE_RATE,
                concurrency=4,
                timeout=seconds + 30,
                id_prefix=f"ro{run}-{ctx.run_id}-",
                ticket_start=800_000_000 + run * 1000,
            )

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(1.5)
        private.shutdown()
        time.sleep(OUTAGE_DOWN_SECONDS)
        private.start()
        up_at = time.monotonic()
        sender.join()
        for code, n in job["out"]["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
        ids = [event_id for event_id, _, _ in job["out"]["accepted"]]
        client = private.client()
        try:
            _all_delivered(client, sc.iso.prefix, ids, 120)
        finally:
            client.close()
        times.append(time.monotonic() - up_at)
        for proc in workers:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited on the outage:\n{proc.tail(40)}")
    return times, statuses


def recovery(ctx: Context) -> ScenarioResult:
    """kill -9 of a worker with posts in flight, and Redis restarted under inbound load, on
    a redis-server of the bench's own: seconds until every event is delivered, worst case."""
    opts = ctx.options
    result = ScenarioResult("recovery")
    private = procs.PrivateRedis(ctx.procs, ctx.work_dir / f"redis-{ctx.run_id}")
    private.start()
    try:
        with Scenario(ctx, "recovery") as sc:
            overrides: dict[str, Any] = {"REDIS_URL": private.url, "LOG_LEVEL": "INFO"}
            if opts.recovery_lease is not None:
                overrides["WORKER_LEASE_SECONDS"] = opts.recovery_lease
            env = sc.env(**overrides)
            _, port = start_web(sc, env)
            client = private.client()
            try:
                kills, survivor = _kill_runs(ctx, sc, env, client, port)
            finally:
                client.close()
            # The same web process and surviving worker go on; a second worker outside
            # --quick, which keeps the smoke run short.
            workers = [survivor]
            if not opts.quick:
                workers.append(_worker(sc, env, "outage-w1"))
            outages, statuses = _outage_runs(ctx, sc, env, private, port, workers)
    finally:
        if private.proc is not None:
            ctx.procs.stop(private.proc)
    kill_worst, outage_worst = max(kills), max(outages)
    result.figures = {
        "kill_worst_s": kill_worst,
        "kill_median_s": percentile(kills, 50),
        "outage_worst_s": outage_worst,
        "outage_median_s": percentile(outages, 50),
        "runs": opts.recovery_runs,
    }
    result.details = {
        "kill_runs_s": kills,
        "outage_runs_s": outages,
        "outage_answers": statuses,
        "kill_events_per_run": KILL_EVENTS,
        "outage_down_seconds": OUTAGE_DOWN_SECONDS,
        "lease_seconds": opts.recovery_lease,
    }
    kill_held, outage_held = kill_worst <= 20, outage_worst <= 30
    result.targets["kill -9 -> all delivered <= 20 s (worst)"] = kill_held
    result.targets["Redis back -> all accepted delivered <= 30 s (worst)"] = outage_held
    runs = opts.recovery_runs
    result.rows += [
        Row(
            "recovery",
            f"kill -9 -> {KILL_EVENTS} in-flight events delivered, s (worst of {runs})",
            fmt(kill_worst),
            f"median {fmt(percentile(kills, 50))}",
            "",
            "<= 20 s",
            kill_held,
        ),
        Row(
            "recovery",
            f"Redis back -> every 202 delivered, s (worst of {runs})",
            fmt(outage_worst),
            f"median {fmt(percentile(outages, 50))}; answers {statuses}",
            "",
            "<= 30 s",
            outage_held,
        ),
    ]
    return result


# 7. Latency: event -> last note, four sinks in parallel ----------------------------------

# Each sink's delivery takes this long at the fakes; HubSpot's is three calls (search the
# contact, create it, add the note), so each of its calls takes a third of it.
SINK_SECONDS = 0.2
HUBSPOT_CALLS = 3
LATENCY_PROVIDER_SECONDS = 0.15
LATENCY_SLACK_MS = 60.0
ALL_SINKS = ("zendesk", "hubspot", "slack", "rocketchat")


def all_sinks_env(sc: Scenario, **overrides: Any) -> dict[str, str]:
    """The service with all four sinks on (at the fakes), none of them rate-limited."""
    fake = sc.ctx.fake_url
    return sc.env(
        HUBSPOT_TOKEN="bench-hubspot",
        HUBSPOT_BASE_URL=f"{fake}/hubspot",
        HUBSPOT_RATE_LIMIT="1000",
        SLACK_WEBHOOK_URL=f"{fake}/slack/hook",
        SLACK_RATE_LIMIT="1000",
        LEAD_ALERT_MIN_SCORE="0",
        ROCKETCHAT_BASE_URL=f"{fake}/rocketchat",
        ROCKETCHAT_USER_ID="bench",
        ROCKETCHAT_AUTH_TOKEN="bench-token",
        ROCKETCHAT_RATE_LIMIT="1000",
        **overrides,
    )


def _last_answers(stats: dict[str, Any], services: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per service, per key (ticket): when the fake answered its last admitted request
    (arrival + the service's latency)."""
    done: dict[str, dict[str, float]] = {}
    for name in services:
        latency = float(stats[name]["latency"])
        answers = done.setdefault(name, {})
        for at, status, key, _ in stats[name]["arrivals"]:
            if status == 200:
                answers[key] = max(answers.get(key, 0.0), at + latency)
    return done


def latency(ctx: Context) -> ScenarioResult:
    opts = ctx.options
    result = ScenarioResult("latency")
    count = opts.latency_events
    sink_latency = {
        "zendesk": {"latency": SINK_SECONDS},
        "hubspot": {"latency": SINK_SECONDS / HUBSPOT_CALLS},
        "slack": {"latency": SINK_SECONDS},
        "rocketchat": {"latency": SINK_SECONDS},
    }
    provider = {"latency": LATENCY_PROVIDER_SECONDS}
    fake_config(ctx, datafast=provider, **sink_latency)
    with Scenario(ctx, "latency") as sc:
        env = all_sinks_env(sc)
        _, web_port = start_web(sc, env)
        workers = start_workers(sc, env, 1, opts.concurrency)
        warm = run_loadgen(
            ctx, port=web_port, mode="paced", count=3, rate=10, all_sinks=True,
            id_prefix=f"lw-{ctx.run_id}-", ticket_start=900_000_000,
        )  # fmt: skip
        if not wait_for_sink(ctx, len(warm["accepted"]), 60, workers, "rocketchat"):
            raise RuntimeError("the worker did not deliver the warm-up events within 60 s")
        fake_config(ctx, datafast=provider, **sink_latency)
        out = run_loadgen(
            ctx, port=web_port, mode="paced", count=count, rate=opts.latency_rate,
            concurrency=4, all_sinks=True, timeout=30 + count / opts.latency_rate,
            id_prefix=f"l-{ctx.run_id}-",
        )  # fmt: skip
        accepted = {ticket: at for _, ticket, at in out["accepted"]}

        def all_delivered() -> bool:
            counts = fake_counts(ctx)
            return all(counts[name]["keys"] >= len(accepted) for name in ALL_SINKS)

        wait_until(all_delivered, 60 + count / opts.latency_rate, workers)
        answers = _last_answers(fake_stats(ctx), ALL_SINKS)
        ids = [event_id for event_id, _, _ in out["accepted"]]
        states = event_states(ctx.redis, sc.iso.prefix, ids)
    ours = []
    for ticket, at in accepted.items():
        ends = [answers[name].get(ticket) for name in ALL_SINKS]
        if all(end is not None for end in ends):
            ours.append((max(e for e in ends if e is not None) - at) * 1000)
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    floor = (LATENCY_PROVIDER_SECONDS + SINK_SECONDS) * 1000
    serial = (LATENCY_PROVIDER_SECONDS + len(ALL_SINKS) * SINK_SECONDS) * 1000
    target = floor + LATENCY_SLACK_MS
    held = p50 <= target and len(ours) == count
    result.figures = {
        "p50_ms": p50,
        "p99_ms": p99,
        "floor_ms": floor,
        "serial_floor_ms": serial,
        "p50_above_floor_ms": p50 - floor,
        "events": len(ours),
    }
    result.details = {
        "states": states,
        "sent": count,
        "rate_per_s": opts.latency_rate,
        "max_ms": max(ours, default=math.nan),
        "measure": "202 received by the client -> the fake answered the event's last request "
        "at the last of its four sinks (arrival + that sink's latency)",
        "sinks": {name: f"{SINK_SECONDS * 1000:.0f} ms" for name in ALL_SINKS}
        | {"hubspot": f"{HUBSPOT_CALLS} calls x {SINK_SECONDS / HUBSPOT_CALLS * 1000:.0f} ms"},
    }
    result.targets[f"p50 <= provider + slowest sink + {LATENCY_SLACK_MS:.0f} ms"] = held
    result.targets["every event at every sink"] = len(ours) == count
    result.rows += [
        Row(
            "latency",
            "event -> last of 4 sinks, p50 ms",
            fmt(p50),
            f"provider + slowest sink {fmt(floor, 0)}; one after the other {fmt(serial, 0)}",
            f"+{fmt(p50 - floor)} ms",
            f"<= {fmt(target, 0)} ms",
            held,
        ),
        Row("latency", "event -> last of 4 sinks, p99 ms", fmt(p99), "", "", "(information)"),
    ]
    return result


# 8. Profile cache: one provider call per visitor ------------------------------------------


def _cache_run(ctx: Context, cache_seconds: int) -> dict[str, Any]:
    opts = ctx.options
    count, visitors = opts.cache_events, opts.cache_visitors
    fake_config(ctx, datafast={"latency": opts.latency})
    label = f"cache{cache_seconds}"
    with Scenario(ctx, label) as sc:
        env = sc.env(PROFILE_CACHE_SECONDS=str(cache_seconds))
        _, web_port = start_web(sc, env)
        workers = start_workers(sc, env, opts.cache_workers, opts.concurrency)
        rate = count / opts.cache_seconds
        started = time.time()
        out = run_loadgen(
            ctx, port=web_port, mode="paced", count=count, rate=rate, concurrency=4,
            visitors=visitors, timeout=30 + opts.cache_seconds, id_prefix=f"{label}-{ctx.run_id}-",
        )  # fmt: skip
        accepted = len(out["accepted"])
        done = wait_for_sink(ctx, accepted, 60 + count / 10, workers)
        sent_for = time.time() - started
        stats = fake_stats(ctx)
        ids = [event_id for event_id, _, _ in out["accepted"]]
        cached = _events_with_step(ctx.redis, sc.iso.prefix, ids, "journey_cached")
    calls = len(stats["datafast"]["arrivals"])
    distinct = len({key for _, _, key, _ in stats["datafast"]["arrivals"]})
    return {
        "profile_cache_seconds": cache_seconds,
        "events": count,
        "accepted": accepted,
        "visitors": visitors,
        "visitors_seen_by_provider": distinct,
        "provider_calls": calls,
        "events_with_journey_cached": cached,
        "completed": done,
        "seconds": sent_for,
        "workers": opts.cache_workers,
    }


def _events_with_step(client: redis.Redis, prefix: str, ids: list[str], step: str) -> int:
    needle = f'"step":"{step}"'.encode()
    found = 0
    for start in range(0, len(ids), 500):
        pipe = client.pipeline()
        for event_id in ids[start : start + 500]:
            pipe.lrange(f"{prefix}event:{event_id}:steps", 0, -1)
        for steps in pipe.execute():
            found += any(needle in raw for raw in steps)
    return found


def cache(ctx: Context) -> ScenarioResult:
    opts = ctx.options
    result = ScenarioResult("cache")
    ours = _cache_run(ctx, 60)
    off = _cache_run(ctx, 0)
    calls, visitors = ours["provider_calls"], ours["visitors"]
    held = calls <= visitors and bool(ours["completed"]) and ours["accepted"] == opts.cache_events
    result.details = {"cached": ours, "off": off, "provider_latency_s": opts.latency}
    result.figures = {
        "provider_calls": calls,
        "provider_calls_cache_off": off["provider_calls"],
        "visitors": visitors,
        "events": ours["events"],
        "events_with_journey_cached": ours["events_with_journey_cached"],
    }
    result.targets[f"provider calls <= visitors ({visitors})"] = held
    result.rows.append(
        Row(
            "cache",
            f"{ours['events']:,} events over {visitors} visitors in "
            f"{opts.cache_seconds:.0f} s: provider calls",
            f"{calls:,} ({ours['events_with_journey_cached']:,} events used a cached journey)",
            f"PROFILE_CACHE_SECONDS=0: {off['provider_calls']:,}",
            f"{calls / max(off['provider_calls'], 1):.3f}x",
            f"<= {visitors}",
            held,
        )
    )
    return result


SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    "ingest": ingest,
    "queue": queue_overhead,
    "quota": quota,
    "naive": naive,
    "memory": memory,
    "recovery": recovery,
    "latency": latency,
    "cache": cache,
}
