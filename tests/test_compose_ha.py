"""docker-compose.yml's `ha` profile is the topology the Sentinel tests run on loopback
(tests/sentinel_support.py): a master, a replica of it, three Sentinels with a quorum of two,
and the app pointed at them by the URL the file's header gives.

No Docker engine runs where these tests run, so the profile is read, not started: this checks
what Compose would be given, not that the containers come up.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from config.redis_target import SentinelTarget, parse_redis_url

ROOT = Path(__file__).resolve().parent.parent
HA_SERVICES = {"redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _flag(command: list[str], name: str) -> list[str]:
    """The values after ``--name`` in a redis-server command line."""
    at = command.index(f"--{name}")
    values = []
    for value in command[at + 1 :]:
        if value.startswith("--"):
            break
        values.append(value)
    return values


def test_the_ha_profile_is_a_master_a_replica_and_three_sentinels() -> None:
    services = _compose()["services"]
    in_profile = {name for name, service in services.items() if "ha" in service.get("profiles", [])}
    assert in_profile == HA_SERVICES
    primary, replica = services["redis-primary"], services["redis-replica"]
    # Both persist each write as the single `redis` service does, and refuse rather than evict.
    for node in (primary, replica):
        assert _flag(node["command"], "appendfsync") == ["always"]
        assert _flag(node["command"], "maxmemory-policy") == ["noeviction"]
    assert "--replicaof" not in primary["command"]
    assert _flag(replica["command"], "replicaof") == ["redis-primary", "6379"]
    assert primary["volumes"] != replica["volumes"]  # each keeps its own data
    configs = [" ".join(services[f"sentinel-{i}"]["command"]) for i in (1, 2, 3)]
    for config in configs:
        assert "'sentinel monitor mymaster redis-primary 6379 2'" in config
        assert "'port 26379'" in config
        assert config.rstrip().endswith("exec redis-server /tmp/sentinel.conf --sentinel")


def test_the_url_in_the_files_header_names_those_sentinels() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    match = re.search(r"COMPOSE_REDIS_URL=(\S+)", text)
    assert match, "the header shows how to point the app at the Sentinels"
    target = parse_redis_url(match.group(1))
    assert isinstance(target, SentinelTarget)
    assert target.master_name == "mymaster"
    assert {host for host, _port in target.sentinels} == {"sentinel-1", "sentinel-2", "sentinel-3"}
    assert {port for _host, port in target.sentinels} == {26379}
    app = _compose()["x-app"]
    assert app["environment"]["REDIS_URL"].startswith("${COMPOSE_REDIS_URL:-")
    # The app waits for a Sentinel only when the profile runs.
    assert app["depends_on"]["sentinel-1"] == {"condition": "service_healthy", "required": False}
