"""A Redis master, its replica and three Sentinels of our own, on free loopback ports in a
temporary directory; never the shared Redis on 6379. Every process is stopped by ``stop``
(also when starting failed), so a test that fails leaves nothing running.

    with SentinelTopology(tmp_path) as topo:
        env["REDIS_URL"] = topo.url
        topo.failover()              # SENTINEL FAILOVER: the replica becomes the master
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from harness import free_port, wait_for

MASTER_NAME = "mymaster"
# Short enough for a test: a master that does not answer for a second is down, and a failover
# that stalls is tried again after five.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
# A Sentinel whose process was held up for more than 2 s (a loaded machine) enters TILT and
# fails nothing over for 30 s; a split vote waits twice the failover timeout.
PROMOTION_TIMEOUT = 75.0


def _binary() -> str:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not on PATH"
    return binary


class SentinelTopology:
    def __init__(self, folder: Path, sentinels: int = 3) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._argv: dict[int, list[str]] = {}

    # Where things are ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``REDIS_URL`` naming the Sentinels."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=5)

    def master_port(self) -> int:
        """The port the Sentinels name as the master's now (the first that answers)."""
        for port in self.sentinel_ports:
            try:
                _, master = self.client(port).sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(master)
            except (redis.RedisError, TypeError):
                continue
        raise AssertionError("no Sentinel answers")

    def role(self, port: int) -> str:
        try:
            return str(self.client(port).info("replication")["role"])
        except redis.RedisError:
            return "down"

    # Start and stop ------------------------------------------------------------------------

    def _spawn(self, port: int, argv: list[str]) -> None:
        self._argv[port] = argv
        with open(self.folder / f"{port}.log", "ab") as out:
            self.procs[port] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _start_data(self, port: int, master: int | None) -> None:
        data = self.folder / str(port)
        data.mkdir(exist_ok=True)
        argv = [
            _binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
        ]  # fmt: skip
        if master is not None:
            argv += ["--replicaof", "127.0.0.1", str(master)]
        self._spawn(port, argv)

    def _start_sentinel(self, port: int, master: int) -> None:
        # Sentinel rewrites its configuration file (what it learns), so each has its own.
        conf = self.folder / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.folder}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self._spawn(port, [_binary(), str(conf), "--sentinel"])

    def start(self, timeout: float = 30.0) -> SentinelTopology:
        try:
            master, replica = self.data_ports
            self._start_data(master, None)
            wait_for(lambda: self.role(master) == "master", timeout, message="the master")
            self._start_data(replica, master)
            wait_for(lambda: self.in_sync(master), timeout, message="the replica to sync")
            for port in self.sentinel_ports:
                self._start_sentinel(port, master)
            wait_for(self.sentinels_agree, timeout, message="the Sentinels to find each other")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)

    def __enter__(self) -> SentinelTopology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Checks and faults ---------------------------------------------------------------------

    def in_sync(self, master: int) -> bool:
        """The master has a replica that is online."""
        try:
            info = self.client(master).info("replication")
        except redis.RedisError:
            return False
        return any(
            isinstance(v, dict) and v.get("state") == "online"
            for k, v in info.items()
            if k.startswith("slave")
        )

    def sentinels_agree(self) -> bool:
        """Every Sentinel knows the master, the replica and the other Sentinels (only then
        can they elect a leader and fail over)."""
        others = len(self.sentinel_ports) - 1
        for port in self.sentinel_ports:
            try:
                client = self.client(port)
                if len(client.sentinel_slaves(MASTER_NAME)) < 1:
                    return False
                if len(client.sentinel_sentinels(MASTER_NAME)) < others:
                    return False
            except redis.RedisError:
                return False
        return True

    def replica_port(self) -> int:
        """The data server that is not the master now."""
        master = self.master_port()
        return next(port for port in self.data_ports if port != master)

    @contextmanager
    def paused(self, port: int) -> Iterator[None]:
        """The server on ``port`` stopped (SIGSTOP) for the block: it neither answers nor
        acknowledges replication, as a replica behind a network partition."""
        proc = self.procs[port]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(proc.pid, signal.SIGCONT)

    def failover(self, timeout: float = PROMOTION_TIMEOUT) -> int:
        """``SENTINEL FAILOVER``; returns the new master's port once it takes writes and has
        the old master as its replica again. Asked again while the Sentinels refuse (TILT)."""
        old = self.master_port()
        deadline = time.monotonic() + timeout

        def promoted() -> int | None:
            port = self.master_port()
            return port if port != old and self.role(port) == "master" else None

        new = None
        while new is None:
            # Refused while in TILT, with -INPROG, or before a replica is judged good.
            with contextlib.suppress(redis.ResponseError):
                sentinel = self.client(self.sentinel_ports[0])
                sentinel.execute_command("SENTINEL FAILOVER", MASTER_NAME)
            try:
                new = wait_for(promoted, min(10.0, max(0.1, deadline - time.monotonic())))
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise AssertionError("the Sentinels named no new master") from None
        wait_for(lambda: self.in_sync(new), timeout, message="the old master to follow")
        return new

    def kill_master(self, timeout: float = PROMOTION_TIMEOUT) -> int:
        """SIGKILL the master (what it had not replicated is lost), start it again empty on
        its port once the Sentinels have promoted the replica, and return the new master's
        port once the old one follows it (the Sentinels turn it into a replica)."""
        old = self.master_port()
        self.procs[old].kill()
        self.procs[old].wait(timeout=10)
        new = wait_for(
            lambda: (port := self.master_port()) != old and self.role(port) == "master" and port,
            timeout,
            message="the Sentinels to promote the replica",
        )
        self._spawn(old, self._argv[old])
        wait_for(lambda: self.in_sync(int(new)), timeout, message="the old master to follow")
        return int(new)
