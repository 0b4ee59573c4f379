"""Processes and Redis for the bench: start, wait for, measure and stop what a scenario needs,
and remove every Redis key it wrote.

Every process is started in its own session and stopped by its own id (SIGTERM, then SIGKILL
to its process group, which holds only what it forked itself). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_secret() -> str:
    import base64

    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    """Every process a bench run started, so that all of them are stopped at the end."""

    log_dir: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}-{len(self.started)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15.0) -> None:
        stop(proc, timeout)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc, timeout=10.0)


def stop(proc: Proc, timeout: float = 15.0) -> None:
    """SIGTERM (a Celery warm shutdown), then SIGKILL to the process group after ``timeout``."""
    if proc.alive():
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.popen.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=5)


def wait_http(url: str, proc: Proc | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while starting:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process in kB (Linux /proc)."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "Threads"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process (and its waited-for children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


@dataclass
class Isolation:
    """A unique key prefix and queue for one scenario, and what clean-up must remove."""

    run_id: str
    name: str
    prefix: str = ""
    queue: str = ""
    nodes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = f"bench-{self.run_id}-{self.name}:"
        self.queue = f"bench-q-{self.run_id}-{self.name}"

    def node(self, label: str) -> str:
        name = f"bench-{self.run_id}-{self.name}-{label}-{uuid.uuid4().hex[:6]}"
        self.nodes.append(name)
        return name


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=10, socket_connect_timeout=3)


def queue_length(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a kombu Redis queue (every priority sub-list)."""
    total = 0
    for key in client.scan_iter(match=f"{queue}*", count=500):
        if client.type(key) == b"list":
            total += int(client.llen(key))
    return total


def cleanup(client: redis.Redis, iso: Isolation) -> int:
    """Delete every key of the scenario: its prefix, its queue, kombu's bookkeeping of it."""
    deleted = 0
    patterns = [
        f"{iso.prefix}*",
        f"{iso.queue}*",
        f"_kombu.binding.{iso.queue}",
        f"_kombu.binding_permanent.{iso.queue}",
    ]
    patterns += [f"{node}*" for node in iso.nodes]
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 500):
            deleted += int(client.delete(*keys[start : start + 500]))
    for tag, raw in client.hscan_iter("unacked"):
        try:
            _, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if iso.queue in (exchange, routing_key):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
            deleted += 1
    for binding in client.scan_iter(match="_kombu.binding.*pidbox*", count=100):
        for member in client.smembers(binding):
            if any(node.encode() in member for node in iso.nodes):
                deleted += int(client.srem(binding, member))
    return deleted


def service_env(iso: Isolation, secret: str, fake_port: int, **overrides: Any) -> dict[str, str]:
    """Environment of the real web and worker processes, pointed at the fakes."""
    fake = f"http://127.0.0.1:{fake_port}"
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": iso.prefix,
        "CELERY_QUEUE": iso.queue,
        "WEBHOOK_SECRET": secret,
        "DATAFAST_API_KEY": "df_bench",
        "DATAFAST_BASE_URL": f"{fake}/datafast",
        "DATAFAST_RATE_LIMIT": "1000",
        "ZENDESK_BASE_URL": f"{fake}/zendesk",
        "ZENDESK_EMAIL": "bench@example.com",
        "ZENDESK_API_TOKEN": "bench-token",
        "ZENDESK_RATE_LIMIT": "1000",
        "HUBSPOT_TOKEN": "",
        "SLACK_WEBHOOK_URL": "",
        "ROCKETCHAT_BASE_URL": "",
        "ROCKETCHAT_USER_ID": "",
        "ROCKETCHAT_AUTH_TOKEN": "",
        "SENTRY_DSN": "",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def celery_worker_argv(
    app: str, queue: str, node: str, concurrency: int, pool: str | None = "threads"
) -> list[str]:
    argv = [str(BIN / "celery"), "-A", app, "worker", "-Q", queue, "-n", f"{node}@%h"]
    if pool:
        argv += ["--pool", pool]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return [*argv, "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]


class PrivateRedis:
    """A redis-server of the bench's own on a free port (AOF in ``data_dir``), which the
    recovery scenario shuts down and starts again: never the Redis other runs share."""

    def __init__(self, procs: Procs, data_dir: Path) -> None:
        self.procs = procs
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
        ]  # fmt: skip
        self.proc = self.procs.start(f"redis-{self.port}", argv)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"redis-server exited:\n{self.proc.tail()}")
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def shutdown(self) -> None:
        """``redis-cli shutdown`` (the AOF is flushed), and wait for the process to end."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True, timeout=10
        )
        if self.proc is not None:
            self.procs.stop(self.proc, timeout=10)
