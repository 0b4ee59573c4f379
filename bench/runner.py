"""``python -m bench``: run the scenarios, print one table, write ``bench/results/latest.json``.

    python -m bench                      # every scenario, default sizes (about 8 minutes)
    python -m bench --quick              # tiny counts, for the smoke test
    python -m bench --events 2000 --memory-events 10000   # the sizes of issue 5
    python -m bench --scenarios ingest,queue

Needs Redis on 127.0.0.1:6379 (``BENCH_REDIS_URL`` to change it). Every scenario uses its own
key prefix and Celery queue and deletes them afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import procs
from bench.scenarios import SCENARIOS, Context, Options, Row, ScenarioResult, fmt

RESULTS = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="visitor-enrich benchmarks (issue 5)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, a smoke run")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--events", type=int, help="events for quota and naive (issue: 2000; default 1000)"
    )
    parser.add_argument(
        "--memory-events", type=int, help="events for memory (issue: 10000; default 3000)"
    )
    parser.add_argument("--quota", type=int, help="provider quota Q, req/s (default 20)")
    parser.add_argument("--latency", type=float, help="provider latency, s (default 0.1)")
    parser.add_argument("--concurrency", type=int, help="worker threads (default 32)")
    parser.add_argument(
        "--quota-concurrency", type=int, help="threads per worker in quota (default 8)"
    )
    parser.add_argument("--workers", help="worker processes in quota (default 1,2,4)")
    parser.add_argument(
        "--naive-workers", help="worker processes of ours in naive (default: 1 and the CPU count)"
    )
    parser.add_argument(
        "--no-quota-headroom",
        action="store_true",
        help="skip the extra quota run with DATAFAST_RATE_LIMIT = Q - 1",
    )
    parser.add_argument("--levels", help="ingest concurrency levels (default 1,8,32,64,128)")
    parser.add_argument("--ingest-seconds", type=float, help="seconds per ingest level")
    parser.add_argument("--web-workers", type=int, help="uvicorn processes for ingest (1)")
    parser.add_argument("--queue-events", type=int, help="events for queue overhead (200)")
    parser.add_argument("--recovery-runs", type=int, help="runs of each recovery case (10)")
    parser.add_argument("--latency-events", type=int, help="events for latency (200)")
    parser.add_argument("--cache-events", type=int, help="events for cache (1000)")
    parser.add_argument("--cache-visitors", type=int, help="visitors for cache (200)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    return parser.parse_args(argv)


def build_options(args: argparse.Namespace) -> Options:
    if args.quick:
        opts = Options(
            quick=True,
            events=30,
            memory_events=60,
            worker_counts=(1, 2),
            ingest_levels=(1, 8),
            ingest_seconds=0.5,
            queue_events=15,
            recovery_runs=1,
            recovery_lease=2.0,
            latency_events=10,
            cache_events=40,
            cache_visitors=8,
            cache_seconds=2.0,
            cache_workers=1,
        )
    else:
        opts = Options()
    overrides: dict[str, Any] = {
        "events": args.events,
        "memory_events": args.memory_events,
        "quota": args.quota,
        "latency": args.latency,
        "concurrency": args.concurrency,
        "quota_concurrency": args.quota_concurrency,
        "worker_counts": _ints(args.workers) if args.workers else None,
        "naive_workers": _ints(args.naive_workers) if args.naive_workers else None,
        "ingest_levels": _ints(args.levels) if args.levels else None,
        "ingest_seconds": args.ingest_seconds,
        "web_workers": args.web_workers,
        "queue_events": args.queue_events,
        "recovery_runs": args.recovery_runs,
        "latency_events": args.latency_events,
        "cache_events": args.cache_events,
        "cache_visitors": args.cache_visitors,
    }
    if args.no_quota_headroom:
        opts.quota_headroom = False
    for key, value in overrides.items():
        if value is not None:
            setattr(opts, key, value)
    return opts


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        info["memory_gib"] = round(total_kb / 1024 / 1024, 1)
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        info["cpu_model"] = model
    except (OSError, StopIteration, ValueError):
        pass
    try:
        info["redis"] = procs.redis_client().info("server").get("redis_version")
    except Exception:
        info["redis"] = None
    return info


def render_table(rows: list[Row]) -> str:
    header = ("scenario", "measure", "ours", "reference", "ours vs ref", "target", "held")
    lines = [
        (
            r.scenario,
            r.measure,
            r.ours,
            r.reference,
            r.compare,
            r.target,
            "" if r.held is None else ("yes" if r.held else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(cells) for cells in lines]
    return "\n".join(out)


def _clean(value: Any) -> Any:
    """JSON without NaN/Infinity (they become null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = build_options(args)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    client = procs.redis_client()
    try:
        client.ping()
    except Exception as exc:
        print(f"Redis does not answer at {procs.REDIS_URL}: {exc}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    info = machine()
    work_dir = Path(tempfile.mkdtemp(prefix=f"bench-{run_id}-"))
    ctx_procs = procs.Procs(log_dir=work_dir / "logs")
    results: list[ScenarioResult] = []
    try:
        fake_port = procs.free_port()
        fake = ctx_procs.start(
            "fakes", [sys.executable, "-m", "bench.fakes", "--port", str(fake_port)]
        )
        procs.wait_http(f"http://127.0.0.1:{fake_port}/_bench/health", fake)
        ctx = Context(
            run_id=run_id,
            options=opts,
            procs=ctx_procs,
            redis=client,
            secret=procs.new_secret(),
            fake_port=fake_port,
            work_dir=work_dir,
        )
        for name in names:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            begun = time.monotonic()
            try:
                result = SCENARIOS[name](ctx)
            except Exception as exc:
                traceback.print_exc()
                result = ScenarioResult(name, error=f"{type(exc).__name__}: {exc}")
                result.rows.append(Row(name, "error", str(exc)[:80], held=False))
            result.seconds = time.monotonic() - begun
            print(f"[bench] {name} done in {result.seconds:.0f}s", file=sys.stderr, flush=True)
            results.append(result)
    finally:
        ctx_procs.stop_all()
    info["loadavg_end"] = list(os.getloadavg())
    total = time.monotonic() - started
    rows = [row for result in results for row in result.rows]
    table = render_table(rows)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    print()
    print(table)
    print()
    cpus = f"{info.get('cpus')} cpus"
    memory = f"{info.get('memory_gib')} GiB"
    print(
        f"machine: {cpus}, {memory}, {info.get('cpu_model', '?')}; Python {info['python']}; "
        f"Redis {info.get('redis')}; load {fmt(info['loadavg_start'][0], 2)} at start"
    )
    print(f"command: {command.strip()}   ({total:.0f} s)")
    document = {
        "command": command.strip(),
        "run_id": run_id,
        "seconds": total,
        "machine": info,
        "options": asdict(opts),
        "table": table,
        "scenarios": {
            r.name: {
                "figures": r.figures,
                "targets": r.targets,
                "seconds": r.seconds,
                "error": r.error,
                "details": r.details,
            }
            for r in results
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_clean(document), indent=2) + "\n")
    print(f"results: {args.output}")
    failed = [r.name for r in results if r.error]
    if failed:
        print(f"scenarios that failed to run: {', '.join(failed)}", file=sys.stderr)
        print(f"process logs: {ctx_procs.log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0
