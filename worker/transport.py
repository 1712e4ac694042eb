"""kombu's Redis transport, with a fetch that cannot lose a message, and one client per channel.

**Fetching.** kombu takes a message with ``BRPOP`` and records it as unacknowledged (the
``unacked`` hash and its time index, from which the restore sweep brings it back) in a second
command, once the reply has been read and decoded. A worker killed between the two, or a Redis
stopped while the reply is on its way, loses that message: it is in neither place. Under load
the gap is not small (the reply can wait for the event loop behind busy threads), and our crash
tests saw one message in a few hundred lost when a worker was SIGKILLed.

Here the wait and the take are split. ``BLMOVE q q RIGHT RIGHT`` blocks until the queue has a
message and changes nothing (it pops the tail and pushes it back where it was); then one Lua
script pops the message *and* records it unacknowledged, atomically, in Redis. At every moment a
message is in the queue or in the unacked hash, so a worker killed at any point leaves it to the
restore sweep. Another worker may take the message between the two steps: the script then finds
the next one, or nothing, and the wait starts again. It costs no extra round trip: the script
replaces kombu's bookkeeping pipeline, which :class:`QoS` then skips.

The take is not limited to one message: it pops as many as the consumer's prefetch window has
room for (the ``can_consume_max_estimate`` kombu keeps for transports that fetch in bulk), so a
busy worker whose threads free several slots while the event loop is elsewhere fills them with
one wait and one script instead of a pair per message. The messages are delivered oldest first;
should a delivery fail, those after it stay recorded unacknowledged, like a killed worker's, for
the restore sweep.

This applies when a channel consumes one Redis list, which is recq's shape: one queue, and
``priority_steps`` of ``[0]`` (recq's broker options), so priorities do not split it into
several lists. Otherwise (several queues or priority lists, ``global_keyprefix``, or ack
emulation turned off) the channel fetches as kombu does.

**One client per channel.** kombu's Redis channel builds a new ``redis.Redis`` for every
synchronous command it sends (``conn_or_acquire`` calls ``_create_client`` each time): each
publish's binding lookup, and the bookkeeping of every message a worker takes and acknowledges.
The connections come from one pool either way, but building the client is not free: redis-py
fills a table of response callbacks in its constructor, and the benchmark
(``python -m bench --profile``) showed it at 12% of a worker's CPU. A ``redis.Redis`` is safe to
share between threads (each command takes a pooled connection), so the channel keeps one.

**Room in the window, at once.** Without Celery's event loop (green pools run without it; recq
refuses them for now, docs/performance.md; and any ``drain_events`` consumer), a consumer waits
for messages in ``drain_events(timeout=2.0)``, and kombu's poller sends no ``BRPOP`` while the
prefetch window is full: a job acknowledged at its end, as recq's are, frees room that the
poller sees only when its 2-second wait ends, so a gevent worker ran one window of jobs every 2
seconds. :class:`Poller` also waits on a pipe that an acknowledgement writes to when the poller
is waiting for room, and fetches again at once; and it runs the restore sweep on time, which
kombu's event loop does with a timer (see :class:`Poller`).

**Unreadable messages.** A producer in another language builds the envelope itself, and kombu
fails on one it cannot read (a ``body_encoding`` of base64 over a body that is not, a
``delivery_info`` left out) while it delivers it, outside Celery's handling of bad messages: the
worker stopped ("Unrecoverable error"), and the next one that took the message after the
visibility timeout stopped as well. Such a message is delivered without its body, its problem
named in the header :data:`UNREADABLE` (by :class:`Message`, for a body, as kombu decodes it),
for the consumer to refuse and record like any other it cannot run (:mod:`worker.consumer`).
One that is not a JSON object at all names no job: it is logged, by its size, and dropped.

It also mends one of kombu's failures: see :meth:`Channel._create_client`.

Celery uses it through ``broker_transport`` for ``redis://`` and ``rediss://`` brokers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

NAME = "worker.transport:Transport"

UNREADABLE = "x-recq-unreadable"
"""The header naming why a message's envelope could not be read (see the module's docstring)."""

logger = logging.getLogger(__name__)

# Pop up to ARGV[2] of the oldest messages of KEYS[1] and record each unacknowledged in the same
# step, as kombu's QoS.append would: the time index (KEYS[3], scored with the worker's clock,
# ARGV[1]) and the hash (KEYS[2]) of tag -> [message, exchange, routing key]. A message is kept
# as it came. The answer is flat: message, recorded (1 or 0), message, recorded, ... oldest first.
# A message without a delivery tag or delivery info is only popped: kombu's own bookkeeping then
# fails on it in the worker, as it would have after BRPOP.
_TAKE = """
local taken = {}
for _ = 1, tonumber(ARGV[2]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then
    break
  end
  local recorded = 0
  local ok, message = pcall(cjson.decode, item)
  if ok and type(message) == 'table' and type(message.properties) == 'table' then
    local tag = message.properties.delivery_tag
    local info = message.properties.delivery_info
    if (type(tag) == 'string' or type(tag) == 'number') and type(info) == 'table'
        and info.exchange ~= nil and info.routing_key ~= nil then
      redis.call('ZADD', KEYS[3], ARGV[1], tag)
      redis.call('HSET', KEYS[2], tag,
        '[' .. item .. ',' .. cjson.encode(info.exchange) .. ','
            .. cjson.encode(info.routing_key) .. ']')
      recorded = 1
    end
  end
  taken[#taken + 1] = item
  taken[#taken + 1] = recorded
end
return taken
"""

MOST_TAKEN = 64
"""The most messages one fetch takes when the consumer sets no prefetch limit."""


class QoS(kombu_redis.QoS):
    """kombu's QoS, that does not record again a message the fetch already recorded, and that
    tells a poller waiting for room in the window when a message leaves it."""

    channel: Channel

    def append(self, message: Any, delivery_tag: Any) -> None:
        recorded = self.channel.recorded
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # the in-memory count only
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        super().ack(delivery_tag)
        self._made_room()

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().reject(delivery_tag, requeue)
        self._made_room()

    def _made_room(self) -> None:
        poller = getattr(self.channel.connection, "cycle", None)  # None once the channel closed
        if isinstance(poller, Poller):
            poller.made_room()


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, for ``drain_events`` woken when room opens in a full prefetch window and
    sweeping unacknowledged messages back on time.

    :meth:`get` is ``drain_events``, used without an event loop (green pools). With Celery's
    event loop, kombu registers the channels' sockets in the loop itself, which checks for room
    on every turn and runs the restore sweep on a timer. Without it, kombu sweeps only when a
    poll ends with nothing to read, which a waiting fetch (its reply comes every second) never
    lets happen: a killed worker's messages were never brought back. :meth:`get` sweeps every
    ``unacked_restore_interval`` seconds itself.
    """

    _channels: set[Any]  # kombu's, which its type stubs do not declare

    def __init__(self) -> None:
        super().__init__()
        self._wake: tuple[int, int] | None = None  # the pipe's ends, made when first needed
        self._waiting_for_room = False
        self._next_restore = 0.0  # monotonic time of the next restore sweep

    def made_room(self) -> None:
        """A message left a window: wake :meth:`get` if it waits for room."""
        if self._waiting_for_room and self._wake is not None:
            self._waiting_for_room = False
            with contextlib.suppress(BlockingIOError):  # a full pipe: a wake is pending anyway
                os.write(self._wake[1], b"\0")

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        now = time.monotonic()
        if now >= self._next_restore:
            intervals = [c.unacked_restore_interval for c in self._channels]
            self._next_restore = now + (min(intervals, default=0) or 10)
            self.maybe_restore_messages()
        full = any(c.active_queues and not c.qos.can_consume() for c in self._channels)
        if full and self._wake is None:
            self._wake = os.pipe()
            for end in self._wake:
                os.set_blocking(end, False)
            self.poller.register(self._wake[0], self.eventflags)
        self._waiting_for_room = full
        try:
            return super().get(callback, timeout)
        finally:
            self._waiting_for_room = False

    def handle_event(self, fileno: int, event: int) -> Any:
        if self._wake is not None and fileno == self._wake[0]:
            with contextlib.suppress(BlockingIOError):
                os.read(fileno, 4096)
            return None  # no message: kombu's get ends empty, and drain_events polls again
        return super().handle_event(fileno, event)

    def close(self) -> None:
        super().close()
        if self._wake is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):  # as lenient as kombu's
                self.poller.unregister(self._wake[0])
            for end in self._wake:
                os.close(end)
            self._wake = None


def _marked(message: dict[str, Any], problem: str, queue: str) -> dict[str, Any]:
    """``message`` without its body, its ``problem`` named in the header :data:`UNREADABLE`,
    under its own delivery tag where it has one (its unacknowledged record's)."""
    properties = message.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    headers = message.get("headers")
    tag = properties.get("delivery_tag")
    return {
        "body": "",
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {**(headers if isinstance(headers, dict) else {}), UNREADABLE: problem},
        "properties": {
            "correlation_id": properties.get("correlation_id"),
            "delivery_tag": tag if isinstance(tag, str | int) else uuid.uuid4().hex,
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }


class Message(virtual.Message):
    """kombu's message, which a body that is not in its ``body_encoding`` (base64 promised,
    raw JSON sent) no longer makes raise: it is made without its body, marked, instead."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except Exception as exc:  # noqa: BLE001 - binascii and friends: the body is not that
            encoding = payload["properties"].get("body_encoding")
            problem = f"properties.body_encoding is {encoding!r} but the body is not ({exc})"
            queue = payload["properties"]["delivery_info"]["routing_key"]
            super().__init__(_marked(payload, problem, queue), channel=channel, **kwargs)


class Channel(kombu_redis.Channel):
    """A Redis channel whose fetch never loses a message, and that reuses its client."""

    QoS = QoS
    Message = Message

    # kombu's internals used here, which its type stubs do not declare.
    _queue_cycle: Any
    _q_for_pri: Callable[[str, int], str]
    _flush_brpop_reauth: Callable[[], None]
    connection_errors: tuple[type[BaseException], ...]

    _shared: tuple[Any, Any] | None = None
    """The pool the shared client was made for, and the client."""

    _waiting_on: str | None = None
    """The queue a pending ``BLMOVE`` waits on; None while fetching as kombu does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: set[Any] = set()
        """Delivery tags the fetch recorded unacknowledged, for :class:`QoS` to skip."""
        self._take_script: Any = None

    def _brpop_start(self, timeout: float | None = None) -> None:
        kombu_channel: Any = super()  # celery-types does not declare the transport's internals
        queues = self._queue_cycle.consume(len(self.active_queues))
        keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        if len(keys) != 1 or self.global_keyprefix or not self.ack_emulation:
            self._waiting_on = None
            kombu_channel._brpop_start(timeout)
            return
        [queue] = keys
        self._waiting_on = queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command("BLMOVE", queue, queue, "RIGHT", "RIGHT", wait or 0)

    def _brpop_read(self, **options: Any) -> bool:
        kombu_channel: Any = super()
        queue = self._waiting_on
        if queue is None:
            result: bool = kombu_channel._brpop_read(**options)
            return result
        try:
            try:
                ready = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                # As kombu: drop the connection so that the next poll reconnects.
                self.client.connection.disconnect()
                raise
            taken = self._take(queue) if ready is not None else []
            if not taken:  # the wait timed out, or another worker took the message
                raise virtual.Empty()
            self._queue_cycle.rotate(queue)
            for item, recorded in taken:
                message = self._readable(item, queue)
                if message is None:
                    continue
                if recorded:
                    self.recorded.add(message["properties"]["delivery_tag"])
                self.connection._deliver(message, queue)
            return True
        finally:
            self._waiting_on = None
            self._in_poll = None
            self._flush_brpop_reauth()

    def _readable(self, item: bytes, queue: str) -> dict[str, Any] | None:
        """The message ``item`` as kombu can deliver it: as it came, or, when kombu could not
        read its envelope, without its body and marked :data:`UNREADABLE`. None when it is
        not a JSON object at all (logged)."""
        try:
            message = loads(bytes_to_str(item))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            message = None
        if not isinstance(message, dict):
            logger.error(
                "dropped a message of %d bytes on %s that is not a JSON object, so names no "
                "job (its content is not logged); see schemas/asyncapi.yaml for the envelope",
                len(item),
                queue,
            )
            return None
        problem = self._envelope_problem(message)
        return message if problem is None else _marked(message, problem, queue)

    def _envelope_problem(self, message: dict[str, Any]) -> str | None:
        """What kombu could not read in a message's envelope, if anything. (A body not in its
        ``body_encoding`` is found by :class:`Message` as kombu decodes it, once.)"""
        properties = message.get("properties")
        if not isinstance(properties, dict):
            return "the envelope has no 'properties' object"
        if not isinstance(properties.get("delivery_tag"), str | int):
            return "the envelope's properties have no 'delivery_tag'"
        info = properties.get("delivery_info")
        if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
            return "the envelope's properties.delivery_info must name 'exchange' and 'routing_key'"
        encoding = properties.get("body_encoding")
        if encoding and str(encoding).lower() != "utf-8" and str(encoding) not in self.codecs:
            return f"properties.body_encoding {encoding!r} is not 'base64' or 'utf-8'"
        return None

    def _take(self, queue: str) -> list[tuple[bytes, bool]]:
        """Pop the queue's oldest messages, as many as the prefetch window has room for, and
        record them unacknowledged, in one step."""
        room = self.qos.can_consume_max_estimate()
        limit = MOST_TAKEN if room is None else max(room, 1)
        with self.conn_or_acquire() as client:
            if self._take_script is None:
                self._take_script = client.register_script(_TAKE)
            keys = [queue, self.unacked_key, self.unacked_index_key]
            answer = self._take_script(keys=keys, args=[time.time(), limit], client=client)
        return [(answer[i], bool(answer[i + 1])) for i in range(0, len(answer), 2)]

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
    """kombu's Redis transport on :class:`Channel` and :class:`Poller`."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()
