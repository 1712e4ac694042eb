"""recq's Redis transport: kombu's, with a fetch that cannot lose a message and one client per
channel."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from worker.transport import Channel, Transport

# A consumer that dies (os._exit, no clean-up at all) the moment a message reaches it: the
# moment after the fetch, before kombu or Celery has done anything with the message.
DYING_CONSUMER = """
import os, sys
import kombu
from kombu.transport.virtual import base
from worker.transport import Transport

base.Transport._deliver = lambda self, message, queue: os._exit(17)
url, queue, options = sys.argv[1], sys.argv[2], eval(sys.argv[3])
with kombu.Connection(url, transport=Transport, transport_options=options) as connection:
    with connection.Consumer(kombu.Queue(queue), accept=["json"], callbacks=[]):
        connection.drain_events(timeout=20)
"""


def options(namespace: str, **more: Any) -> dict[str, Any]:
    """Transport options whose unacked keys are this test's own."""
    return {
        "unacked_key": f"{namespace}:unacked",
        "unacked_index_key": f"{namespace}:unacked_index",
        "unacked_mutex_key": f"{namespace}:unacked_mutex",
        "priority_steps": [0],
        **more,
    }


@pytest.fixture
def connect(redis_url, namespace) -> Iterator[Any]:
    """Open kombu connections on recq's transport, closed when the test ends."""
    opened = []

    def connect(**more: Any) -> kombu.Connection:
        connection = kombu.Connection(
            redis_url, transport=Transport, transport_options=options(namespace, **more)
        )
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.close()


def publish(connection: kombu.Connection, queue: str, *bodies: Any) -> None:
    with connection.Producer(serializer="json") as producer:
        for body in bodies:
            producer.publish(body, routing_key=queue, declare=[kombu.Queue(queue)])


def consume(
    connection: kombu.Connection,
    queue: str,
    count: int,
    *,
    ack: bool = True,
    into: list | None = None,
) -> list:
    """Take messages (appended to ``into``) until it holds ``count`` or 10 s have passed."""
    received: list = [] if into is None else into
    mine: list = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        mine.append(body)
        if ack:
            message.ack()

    with connection.Consumer(kombu.Queue(queue), callbacks=[on_message], accept=["json"]):
        deadline = time.monotonic() + 10
        while len(received) < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.5)
    return mine


def keeping_consumer(
    connection: kombu.Connection, queue: str, received: list, *, prefetch: int
) -> kombu.Consumer:
    """A consumer that keeps each (body, message) unacknowledged, ``prefetch`` at a time."""
    consumer = connection.Consumer(
        kombu.Queue(queue),
        callbacks=[lambda body, message: received.append((body, message))],
        accept=["json"],
    )
    consumer.qos(prefetch_count=prefetch)
    return consumer


def die_holding_one_message(connect: Any, redis_url: str, namespace: str) -> str:
    """Publish one message and let a consumer die the moment it has it; return the queue."""
    queue = f"{namespace}:jobs"
    publish(connect(), queue, {"n": 1})
    died = subprocess.run(
        [sys.executable, "-c", DYING_CONSUMER, redis_url, queue, repr(options(namespace))],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert died.returncode == 17, died.stderr.decode()
    return queue


class TestFetching:
    def test_a_worker_killed_as_a_message_reaches_it_does_not_lose_it(
        self, connect, redis_url, namespace, redis_client
    ):
        """Killed right after the fetch, the message is already recorded unacknowledged, and
        the restore sweep brings it back (kombu's BRPOP fetch had lost it: in neither place)."""
        queue = die_holding_one_message(connect, redis_url, namespace)
        assert redis_client.llen(queue) == 0
        assert redis_client.hlen(f"{namespace}:unacked") == 1
        time.sleep(1.2)
        survivor = connect(visibility_timeout=1, unacked_restore_throttle=1)
        survivor.default_channel.qos.restore_visible(num=10, interval=1)
        assert consume(survivor, queue, 1) == [{"n": 1}]

    def test_a_drain_events_wait_brings_a_dead_worker_s_messages_back(
        self, connect, redis_url, namespace, redis_client
    ):
        """Without an event loop (the gevent pool) the restore sweep still runs: kombu's only
        swept when a poll found nothing to read, and a waiting fetch answers every second."""
        queue = die_holding_one_message(connect, redis_url, namespace)
        time.sleep(1.2)  # past the survivor's visibility timeout
        survivor = connect(
            visibility_timeout=1, unacked_restore_interval=1, unacked_restore_throttle=1
        )
        received: list = []
        with survivor.Consumer(
            kombu.Queue(queue),
            callbacks=[lambda body, message: (received.append(body), message.ack())],
            accept=["json"],
        ):
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    survivor.drain_events(timeout=2.0)  # as Celery's loop without a hub
        assert received == [{"n": 1}]
        assert redis_client.hlen(f"{namespace}:unacked") == 0

    def test_messages_come_in_order_and_an_ack_forgets_them(self, connect, namespace, redis_client):
        """Oldest first, each recorded unacknowledged until it is acknowledged."""
        queue = f"{namespace}:jobs"
        connection = connect()
        publish(connection, queue, *({"n": n} for n in range(5)))
        assert consume(connection, queue, 5) == [{"n": n} for n in range(5)]
        assert redis_client.hlen(f"{namespace}:unacked") == 0
        assert redis_client.zcard(f"{namespace}:unacked_index") == 0

    def test_an_unacknowledged_message_stays_recorded(self, connect, namespace, redis_client):
        """A message taken and not yet acknowledged is in the unacked hash and its index."""
        queue = f"{namespace}:jobs"
        connection = connect()
        publish(connection, queue, {"n": 1})
        assert consume(connection, queue, 1, ack=False) == [{"n": 1}]
        assert redis_client.hlen(f"{namespace}:unacked") == 1
        assert redis_client.zcard(f"{namespace}:unacked_index") == 1

    def test_one_fetch_fills_the_prefetch_window_and_no_more(
        self, connect, namespace, redis_client
    ):
        """With room for three, one wait takes three messages, oldest first, each recorded
        unacknowledged; the other two stay queued until acknowledgements make room."""
        queue = f"{namespace}:jobs"
        connection = connect()
        publish(connection, queue, *({"n": n} for n in range(5)))
        received: list = []
        consumer = keeping_consumer(connection, queue, received, prefetch=3)
        with consumer:
            connection.drain_events(timeout=5)
            assert [body for body, _ in received] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert redis_client.llen(queue) == 2
            assert redis_client.hlen(f"{namespace}:unacked") == 3
            received[0][1].ack()
            connection.drain_events(timeout=5)
        assert [body for body, _ in received][3:] == [{"n": 3}]
        assert redis_client.llen(queue) == 1

    def test_an_acknowledgement_wakes_a_wait_on_a_full_window(self, connect, namespace):
        """Without an event loop (the gevent pool), a consumer whose window is full waits in
        drain_events; the acknowledgement that makes room wakes it and it fetches at once, not
        when its wait ends (kombu's poller sent nothing until then: one window every 2 s)."""
        queue = f"{namespace}:jobs"
        connection = connect()
        publish(connection, queue, {"n": 0}, {"n": 1})
        received: list = []
        consumer = keeping_consumer(connection, queue, received, prefetch=1)
        outcome: list[BaseException | None] = []

        def wait_for_room() -> None:
            try:
                connection.drain_events(timeout=30)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported to the test below
                outcome.append(exc)

        with consumer:
            connection.drain_events(timeout=5)
            assert [body for body, _ in received] == [{"n": 0}]
            waiting = threading.Thread(target=wait_for_room)
            waiting.start()
            time.sleep(0.5)  # the wait is in its poll, on a full window
            assert waiting.is_alive()
            received[0][1].ack()
            waiting.join(timeout=20)
            assert outcome == [None], "the wait ended only with its timeout"
        assert [body for body, _ in received] == [{"n": 0}, {"n": 1}]

    def test_competing_workers_take_each_message_exactly_once(self, connect, namespace):
        """Two consumers racing on one queue: between the wait and the take a message may go
        to the other; none is lost, none is taken twice."""
        queue = f"{namespace}:jobs"
        publish(connect(), queue, *({"n": n} for n in range(300)))
        everyone: list = []
        taken: list[list] = [[], []]

        def run(index: int) -> None:
            taken[index] = consume(connect(), queue, 300, into=everyone)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        numbers = sorted(body["n"] for bodies in taken for body in bodies)
        assert numbers == list(range(300))
        assert all(taken), "both workers took messages"

    def test_a_channel_on_several_lists_fetches_as_kombu_does(self, connect, namespace):
        """With priority lists the queue is several Redis lists: kombu's own fetch takes it."""
        queue = f"{namespace}:jobs"
        connection = connect(priority_steps=[0, 5])
        publish(connection, queue, {"n": 1})
        assert consume(connection, queue, 1) == [{"n": 1}]
        assert connection.default_channel._waiting_on is None


class TestRedisChannel:
    def test_the_app_uses_it_for_a_redis_broker(self, app):
        """A Redis broker's channels are recq's, not kombu's own."""
        with app.connection_for_write() as connection:
            assert isinstance(connection.default_channel, Channel)

    def test_synchronous_commands_share_one_client(self, app):
        """Two synchronous clients asked of a channel are the same object, and it works."""
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            first, second = channel._create_client(), channel._create_client()
            assert first is second
            assert first.ping()

    def test_a_reset_pool_gets_a_new_client(self, app):
        """After kombu drops the channel's pool (a reconnection), a fresh client is made."""
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            before = channel._create_client()
            channel._disconnect_pools()
            after = channel._create_client()
            assert after is not before
            assert after.ping()

    def test_a_channel_closing_after_a_lost_connection_raises_a_connection_error(self, app):
        """Asked for a client once its pool and connection are gone (kombu's restore while
        closing), it raises a Redis ConnectionError, which Celery's reconnection handles, not
        the AttributeError that stopped the worker consuming."""
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            channel._disconnect_pools()
            transport = channel.connection
            client, transport.client = transport.client, None
            try:
                with pytest.raises(redis.ConnectionError):
                    channel._create_client()
            finally:
                transport.client = client
