"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` for every synchronous command it sends
(``conn_or_acquire`` calls ``_create_client`` each time): each publish's binding lookup, and the
bookkeeping of every message a worker takes and acknowledges. The connections come from one pool
either way, but building the client is not free: redis-py fills a table of response callbacks
in its constructor, and the benchmark (``python -m bench --profile``) showed it at 12% of a
worker's CPU. A ``redis.Redis`` is safe to share between threads (each command takes a pooled
connection), so the channel keeps one and hands it out. Everything else is kombu's.

It also mends one of kombu's failures: see :meth:`Channel._create_client`.

Celery uses it through ``broker_transport`` for ``redis://`` and ``rediss://`` brokers.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

NAME = "worker.transport:Transport"


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses its synchronous client."""

    _shared: tuple[Any, Any] | None = None
    """The pool the shared client was made for, and the client."""

    def _create_client(self, asynchronous: bool = False) -> Any:
        kombu_channel: Any = super()  # celery-types does not declare _create_client
        if (
            getattr(self, "_pool", None) is None
            and getattr(self.connection, "client", None) is None
        ):
            # Closing after a lost connection, kombu restores unacknowledged messages through a
            # new client, but its pool is gone and so is the connection it would be made from:
            # kombu then fails with AttributeError, which Celery's reconnection does not expect
            # ("Unrecoverable error": the worker stops consuming). A connection error is what
            # it handles: the messages stay in the unacked hash for the restore sweep.
            raise redis.ConnectionError("the channel's connection is closed")
        if asynchronous:
            return kombu_channel._create_client(asynchronous=True)
        pool = self.pool
        # kombu drops its pool when it resets the channel: a client of the old pool goes too.
        if self._shared is None or self._shared[0] is not pool:
            self._shared = (pool, kombu_channel._create_client())
        return self._shared[1]


class Transport(kombu_redis.Transport):
    """kombu's Redis transport on :class:`Channel`."""

    Channel = Channel
