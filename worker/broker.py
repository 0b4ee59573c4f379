"""kombu's Redis transport with one fix: a channel keeps its connection parameters.

On a broker outage Celery *collects* the lost connection, and kombu detaches the transport
from it (``Transport.client = None``). Channels of that connection are still used
afterwards: a task that finishes after the reconnect acknowledges its message through the
channel it came from, and closing the old channel restores its unacknowledged messages.
Each of these builds a connection pool again from ``self.connection.client``, which is None
by then: ``AttributeError: 'NoneType' object has no attribute 'hostname'``, an error Celery
does not expect, and the worker stops (seen with kombu 5.7.0 under Celery 5.6.3, in the ack
path, and 5.7.0, in the close path; kombu has no release that handles it).

The server has not changed, so the channel remembers the parameters it first connected
with: the ack or the restore reaches Redis, or fails with a connection error, which kombu
and Celery handle. Hand-written because it is a subclass of kombu's own channel, selected
with Celery's ``broker_transport``; nothing else of kombu changes.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._remembered: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        # Both kinds now, while the transport is attached: computing them does no I/O.
        self._connparams(asynchronous=False)
        self._connparams(asynchronous=True)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is not None and transport.client is not None:
            params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[no-untyped-call]
            self._remembered[asynchronous] = params
            return dict(params)
        remembered = self._remembered.get(asynchronous)
        if remembered is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return dict(remembered)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (``REDIS_URL=redis+sentinel://...``) with the same fix. It
    builds its pool from the Sentinel addresses of ``self.connection.client`` too; once that
    is gone, a connection error (which kombu and Celery handle) instead of the
    AttributeError. Its unacknowledged messages come back after the visibility timeout."""

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return super()._sentinel_managed_pool(asynchronous)  # type: ignore[no-untyped-call]


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
