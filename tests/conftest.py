"""Fixtures shared by the whole suite: real Redis, the sandbox, and a real worker.

Redis is the machine's own at 127.0.0.1:6379 when it answers (CI runs one), or
``RECQ_TEST_REDIS_URL``; otherwise a throwaway ``redis-server`` is started for the session.
Each test gets its own namespace (state keys, event log and Celery queue), so tests never see
each other's jobs, and its keys are deleted afterwards.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from kombu.transport import redis as kombu_redis

import tasks.recording  # noqa: F401 - registers the shared tasks with every app
from worker.celery_app import RecqCelery, create_app
from worker.events import EXCHANGE
from worker.redis_server import throwaway_redis
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET, Sandbox, SandboxServer
from worker.settings import Credentials, Secret, Settings


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a real Redis for this test session."""
    configured = os.environ.get("RECQ_TEST_REDIS_URL")
    if configured:
        yield configured
    elif _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        with throwaway_redis() as server:
            yield server.url


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The URL of a real RabbitMQ: skipped when none answers, except under CI=true."""
    url = os.environ.get("RECQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    parts = urlsplit(url)
    if not _reachable(parts.hostname or "127.0.0.1", parts.port or 5672):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, but no RabbitMQ answers at {parts.hostname}:{parts.port}")
        pytest.skip(f"no RabbitMQ reachable at {parts.hostname}:{parts.port}")
    return url


# Queues bound to recq's event exchange on a Redis broker: a member of this set each.
EVENT_BINDINGS = kombu_redis.Channel.keyprefix_queue % (EXCHANGE.name,)


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own, whose keys are removed when it ends.

    A test that left a queue of its namespace bound to the shared ``recq.events`` exchange
    fails here: every later event would be pushed onto that queue for good (on Redis, kombu
    keeps an auto-delete queue's binding after its consumer leaves), so the test deletes it.
    """
    name = f"recq-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    leaked = [m for m in client.smembers(EVENT_BINDINGS) if name.encode() in m]
    if leaked:
        client.srem(EVENT_BINDINGS, *leaked)
    keys = list(client.scan_iter(match=f"*{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    assert not leaked, f"the test left queues bound to {EXCHANGE.name}: {leaked}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung Redis or broker. The socket
    listens but never accepts, so the kernel completes each connection and nothing replies."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


@pytest.fixture
def sandbox_server() -> Iterator[SandboxServer]:
    """A fresh VideoSDK sandbox, served over real HTTP on a free port."""
    with SandboxServer(Sandbox()) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Sandbox:
    """The served sandbox's state: its call log, rooms and fault queue."""
    return sandbox_server.sandbox


class Sleeps:
    """An injectable sleep that records the waits instead of spending them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def settings(redis_url: str, namespace: str, sandbox_server: SandboxServer) -> Settings:
    """Settings pointing at the sandbox and this test's Redis namespace."""
    return Settings(
        credentials=Credentials(api_key=DEFAULT_API_KEY, secret=Secret(DEFAULT_SECRET)),
        api_endpoint=sandbox_server.url,
        broker_url=redis_url,
        redis_url=redis_url,
        namespace=namespace,
        queue=namespace,
        connect_timeout=2.0,
        read_timeout=2.0,
        retry_attempts=4,
        retry_window=30.0,
    )


@pytest.fixture
def app(settings: Settings, sleeps: Sleeps) -> Iterator[RecqCelery]:
    """A recq Celery app on this test's settings, with retry waits recorded, not slept."""
    application = create_app(settings, sleep=sleeps)
    yield application
    application.close()


@pytest.fixture
def running_worker(app: RecqCelery) -> Iterator[Any]:
    """A real Celery worker consuming this test's queue from Redis, on a thread pool."""
    from celery.contrib.testing.worker import start_worker  # noqa: PLC0415

    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as controller:
        yield controller
