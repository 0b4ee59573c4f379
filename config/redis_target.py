"""What ``REDIS_URL`` names: one Redis server, or a master found through Redis Sentinel.

Two forms are accepted:

- redis-py's own URLs (``redis://``, ``rediss://``, ``unix://``): one server, used as is.
- ``redis+sentinel://[[username]:password@]host1:26379,host2:26379/<master name>[/<db>]``:
  the Sentinels to ask (comma-separated, port 26379 when left out), the name they monitor
  the master under (``SENTINEL MONITOR <name> ...``), and the database (0 when left out).
  The credentials are the master's (and its replicas'); the Sentinels are asked without any.

redis-py parses no Sentinel URL, and kombu and celery-redbeat each want their own form
(``sentinel://h1:p1;sentinel://h2:p2`` plus a master name option; a list of addresses plus a
service name), so the one form here is parsed once and handed to each in its own shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379
# Sentinel's own rule for a master name is loose; keep to what fits in a URL path unescaped.
_MASTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class SentinelTarget:
    """A master found through Sentinels."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> str | SentinelTarget:
    """``url`` itself for a plain Redis URL, the parsed target for a Sentinel one.

    ``ValueError`` says what is wrong without repeating the URL (it may hold a password).
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*PLAIN_SCHEMES, SENTINEL_SCHEME):
        raise ValueError(
            "must be a redis://, rediss://, unix:// or "
            f"{SENTINEL_SCHEME}://host:port,host:port/master-name/db URL"
        )
    if scheme != SENTINEL_SCHEME:
        return url
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"a {SENTINEL_SCHEME} URL takes no ?query or #fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_sentinel_address(entry) for entry in hosts.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or not _MASTER_NAME.fullmatch(path[0]):
        raise ValueError(
            f"a {SENTINEL_SCHEME} URL needs the master's name after the Sentinels, "
            "and then optionally the database number: .../mymaster/0"
        )
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError("the database after the master's name must be a number")
        db = int(path[1])
    username, password = None, None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return SentinelTarget(sentinels, path[0], db, username, password)


def _sentinel_address(entry: str) -> tuple[str, int]:
    entry = entry.strip()
    # An IPv6 address is written in brackets: [::1]:26379 or [::1].
    if ":" in entry and not entry.endswith("]"):
        host, _, port = entry.rpartition(":")
    else:
        host, port = entry, ""
    host = host.strip("[]")
    if not host:
        raise ValueError("every Sentinel needs a host (host:port, comma-separated)")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Sentinel {host}: the port must be a number from 1 to 65535")
    return host, int(port)
