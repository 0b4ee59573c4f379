"""Start the service the way the README does (uvicorn web + Celery worker processes, and beat
processes on demand), sign and send events, and poll for outcomes.

    with Service(env, tmp_path, workers=2) as svc:
        svc.send_event({...}, event_id="evt_1")
        svc.wait_for_state("evt_1", {"delivered"})
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import redis
from standardwebhooks.webhooks import Webhook

if TYPE_CHECKING:
    from config.settings import Settings

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEST_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXZpc2l0b3ItZW5yaWNo"  # base64("test-secret-...")
# API_TOKEN of the services the tests start: the status API answers only with it.
TEST_API_TOKEN = "test-api-token-" + uuid.uuid4().hex
TERMINAL_STATES = frozenset({"delivered", "partially_delivered", "failed", "dead"})

T = TypeVar("T")


# Signing and sending -------------------------------------------------------------------------


def web_settings(prefix: str, queue: str, **overrides: Any) -> Settings:
    """Settings of an in-process web app (TestClient) on the test Redis, with ``prefix`` and
    ``queue``, the test secret, a DataFast key and the test API token, then ``overrides``."""
    from config.settings import load_settings

    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
        "celery_queue": queue,
        "webhook_secret": TEST_SECRET,
        "datafast_api_key": "df_test_key",
        "api_token": TEST_API_TOKEN,
    }
    return load_settings(_env_file=None, **(values | overrides))


def bearer(token: str = TEST_API_TOKEN) -> dict[str, str]:
    """The Authorization header of the status API and the other read and admin endpoints."""
    return {"Authorization": f"Bearer {token}"}


def sign(
    body: bytes, *, msg_id: str, secret: str = TEST_SECRET, timestamp: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``."""
    when = timestamp or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode("utf-8", "surrogateescape"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def send_event(
    client: Any,
    payload: Any,
    *,
    event_id: str,
    secret: str | None = TEST_SECRET,
    timestamp: datetime | None = None,
    raw_body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    url: str = "/v1/events",
) -> httpx.Response:
    """Sign ``payload`` (or ``raw_body``) and POST it with ``client`` (httpx or TestClient).

    ``secret=None`` sends it unsigned. ``event_id`` is the ``webhook-id`` header.
    """
    body = raw_body if raw_body is not None else json.dumps(payload).encode()
    all_headers = {"content-type": "application/json"}
    if secret is not None:
        all_headers.update(sign(body, msg_id=event_id, secret=secret, timestamp=timestamp))
    all_headers.update(headers or {})
    return client.post(url, content=body, headers=all_headers)  # type: ignore[no-any-return]


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queue_length(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue (the Redis transport keeps it as a list)."""
    return int(client.llen(queue))


# Redis isolation ---------------------------------------------------------------------------


def new_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def new_queue() -> str:
    return f"test-q-{uuid.uuid4().hex[:12]}"


def cleanup_redis(client: redis.Redis, prefix: str, queue: str | None = None) -> None:
    """Delete every key under ``prefix`` and everything Celery/kombu keeps for ``queue``."""
    patterns = [f"{prefix}*"]
    if queue:
        patterns += [f"{queue}*", f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    for pattern in patterns:
        batch = list(client.scan_iter(match=pattern, count=500))
        for start in range(0, len(batch), 500):
            client.delete(*batch[start : start + 500])
    if queue:
        _drop_unacked(client, queue)


def dump_keys(client: redis.Redis, prefix: str) -> str:
    """Every key under ``prefix`` with everything it holds, as text: what a search for
    personal data (tests of erasure and retention) must look through."""
    lines = []
    for key in sorted(client.scan_iter(match=f"{prefix}*", count=500)):
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = f"<{kind}>"
        lines.append(f"{key!r} {kind}: {value!r}")
    return "\n".join(lines)


def _drop_unacked(client: redis.Redis, queue: str) -> None:
    """Remove our own unacknowledged messages from kombu's shared ``unacked`` hash, so that
    they are not restored into our (deleted) queue after the visibility timeout."""
    for tag, raw in client.hscan_iter("unacked"):
        try:
            _, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if queue in (exchange, routing_key):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


# Processes --------------------------------------------------------------------------------


def procfile_argv(process: str) -> list[str]:
    """The ``Procfile``'s command line for ``process``, its program taken from this venv."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            program, *args = shlex.split(command)
            return [str(BIN / program), *args]
    raise KeyError(f"no {process!r} process in the Procfile")


class Service:
    """The web process and ``workers`` Celery worker processes, with ``env`` on top of the
    inherited environment. Output goes to files under ``log_dir``."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        workers: int = 1,
        redis_client: redis.Redis | None = None,
    ) -> None:
        # Inherit PATH and the like, but no setting of the service: only ``env`` configures it.
        from config.settings import Settings

        names = {name.upper() for name in Settings.model_fields}
        inherited = {k: v for k, v in os.environ.items() if k.upper() not in names}
        self.env = {**inherited, **env}
        self.env.setdefault("WEBHOOK_SECRET", TEST_SECRET)
        self.env.setdefault("API_TOKEN", TEST_API_TOKEN)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.secret = self.env["WEBHOOK_SECRET"]
        self.api_token = self.env["API_TOKEN"]
        self.queue = self.env["CELERY_QUEUE"]
        self.prefix = self.env["REDIS_KEY_PREFIX"]
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.redis = redis_client or redis.Redis.from_url(self.env["REDIS_URL"])
        self.web: subprocess.Popen[bytes] | None = None
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self.beats: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[Any] = []
        self.port = 0
        self.http: httpx.Client | None = None

    # Start and stop --------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._files.append(out)
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, timeout: float = 30.0) -> Service:
        try:
            self._start_workers()
            self._start_web(timeout)
            for i in range(self.workers):
                wait_for(
                    lambda i=i: (
                        " ready." in self.log(f"worker{i}")
                        or self._died(self.worker_procs[i], f"worker{i}")
                    ),
                    timeout,
                    message=f"celery worker{i} to be ready",
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _died(self, proc: subprocess.Popen[bytes], name: str) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}")
        return False

    def worker_argv(self, node_name: str | None = None) -> list[str]:
        """The worker command line, as the README and Procfile run it."""
        argv = [
            str(BIN / "celery"), "-A", "worker.app", "worker",
            "--pool", "threads", "--concurrency", "4",
            "-Q", self.queue, "--loglevel", "INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        return [*argv, "-n", node_name] if node_name else argv

    def _start_workers(self) -> None:
        for i in range(self.workers):
            node = f"w{i}-{uuid.uuid4().hex[:6]}@%h" if self.workers > 1 else None
            argv = self.worker_argv(node)
            self.worker_procs.append(self._spawn(f"worker{i}", argv))

    def start_beat(self, name: str, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        """A beat process, run with the Procfile's command line from ``cwd``; log ``name``."""
        proc = self._spawn(name, procfile_argv("beat"), cwd)
        self.beats[name] = proc
        return proc

    def _start_web(self, timeout: float) -> None:
        for _attempt in range(3):
            self.port = free_port()
            self.web = self._spawn(
                "web",
                [
                    str(BIN / "uvicorn"),
                    "worker.web:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
            )
            self.http = httpx.Client(base_url=self.url, timeout=10)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.web.poll() is None:
                try:
                    if self.http.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            if self.web.poll() is None:
                raise RuntimeError(f"web did not answer /healthz:\n{self.log('web')[-4000:]}")
            # It died: the port may have been taken meanwhile; try another.
            if "address already in use" not in self.log("web").lower():
                raise RuntimeError(f"web exited:\n{self.log('web')[-4000:]}")
        raise RuntimeError("web could not bind a port")

    def stop(self) -> None:
        procs = [p for p in [*self.beats.values(), self.web, *self.worker_procs] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.http is not None:
            self.http.close()
        for f in self._files:
            f.close()
        self._files.clear()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Use ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def logs(self) -> str:
        names = ["web", *(f"worker{i}" for i in range(self.workers)), *self.beats]
        return "\n".join(f"===== {n} =====\n{self.log(n)}" for n in names)

    def send_event(self, payload: Any, *, event_id: str, **kwargs: Any) -> httpx.Response:
        assert self.http is not None
        kwargs.setdefault("secret", self.secret)
        return send_event(self.http, payload, event_id=event_id, **kwargs)

    def status(self, event_id: str) -> dict[str, Any] | None:
        assert self.http is not None
        response = self.http.get(f"/v1/events/{event_id}", headers=bearer(self.api_token))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()["data"]  # type: ignore[no-any-return]

    def wait_for_state(
        self, event_id: str, states: set[str] | frozenset[str] = TERMINAL_STATES, timeout=15.0
    ) -> dict[str, Any]:
        """Poll the event until its state is one of ``states``; return its status."""

        def reached() -> dict[str, Any] | None:
            data = self.status(event_id)
            return data if data and data["state"] in states else None

        try:
            return wait_for(reached, timeout, message=f"event {event_id} to reach {states}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nlast status: {json.dumps(self.status(event_id), indent=1)}\n"
                f"{self.logs()[-6000:]}"
            ) from None

    def queue_length(self) -> int:
        return queue_length(self.redis, self.queue)
