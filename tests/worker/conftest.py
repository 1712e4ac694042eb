"""Fixtures for the runner's tests: a runner on the sandbox, real Redis and a recording sink."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from worker.batches import Batches
from worker.claims import Claims
from worker.dead_letters import DeadLetters
from worker.enqueuer import RecordThenPublish
from worker.events import Event, Events
from worker.fanout import FanOut
from worker.metrics import Metrics
from worker.publisher import TaskMessage
from worker.reporter import Reporter
from worker.retry import RetryPolicy
from worker.runner import JobRunner, Limits
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET
from worker.schedule import Schedule
from worker.scheduler import Scheduler
from worker.settings import Credentials, Secret
from worker.state import JobStore
from worker.tokens import TokenSigner
from worker.videosdk import VideoSDKClient, build_session

CREDENTIALS = Credentials(api_key=DEFAULT_API_KEY, secret=Secret(DEFAULT_SECRET))


class Sink:
    """Keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @property
    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def publish(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def sends(monkeypatch) -> list[bytes]:
    """What this test's thread sends to Redis from now on, by any client (other tests may have
    left threads of their own behind): one send is one round trip."""
    sent: list[bytes] = []
    send = redis.Connection.send_packed_command
    mine = threading.get_ident()

    def counted(connection: redis.Connection, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == mine:
            first = command[0] if isinstance(command, list) else command
            sent.append(bytes(first).split(b"\r\n")[2])  # the first command's name
        send(connection, command, check_health)

    monkeypatch.setattr(redis.Connection, "send_packed_command", counted)
    return sent


@pytest.fixture
def store(redis_client, namespace) -> JobStore:
    return JobStore(redis_client, namespace=namespace)


@pytest.fixture
def make_client(sandbox_server) -> Iterator[Callable[..., VideoSDKClient]]:
    """Clients of the sandbox on sessions of their own, closed after the test."""
    sessions = []

    def make(read_timeout: float = 2.0) -> VideoSDKClient:
        session = build_session(sandbox_server.url)
        sessions.append(session)
        tokens = TokenSigner(CREDENTIALS)
        return VideoSDKClient(
            session, endpoint=sandbox_server.url, tokens=tokens, read_timeout=read_timeout
        )

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def policy(sleeps) -> RetryPolicy:
    return RetryPolicy(sleep=sleeps)


def claims_for(client, namespace: str, pause_key: str | None = None) -> Claims:
    """Claims as the tests take them: a 30 s lease, states kept an hour."""
    state_keys = JobStore(client, namespace=namespace).keys
    return Claims(
        client,
        namespace=namespace,
        state_keys=state_keys,
        lease=30,
        state_ttl=3600,
        pause_key=pause_key,
    )


@pytest.fixture
def claims(redis_client, namespace) -> Claims:
    return claims_for(redis_client, namespace)


@pytest.fixture
def schedule(redis_client, namespace, clock) -> Schedule:
    return Schedule(redis_client, namespace=namespace, clock=clock)


@pytest.fixture
def dead_letters(redis_client, namespace) -> DeadLetters:
    return DeadLetters(redis_client, namespace=namespace)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store_on_the_clock(redis_client, namespace, clock) -> Callable[[int], JobStore]:
    """Stores that keep records ``ttl`` seconds, reckoned on the test's clock: for tests of how
    long a record is kept."""

    def now() -> datetime:
        return datetime.fromtimestamp(clock.now, UTC)

    def make(ttl: int) -> JobStore:
        return JobStore(redis_client, namespace=namespace, ttl=ttl, clock=now)

    return make


@pytest.fixture
def batches(redis_client, namespace) -> Batches:
    return Batches(redis_client, namespace=namespace)


@pytest.fixture
def reporter(store, sink, dead_letters, batches) -> Reporter:
    return Reporter(store, Events([sink]), dead_letters, batches)


@pytest.fixture
def published() -> list[TaskMessage]:
    """What the runner's fan-out published, in order."""
    return []


@pytest.fixture
def fan_out(batches, store, published) -> FanOut:
    return FanOut(batches=batches, enqueuer=RecordThenPublish(store, published.extend))


@pytest.fixture
def scheduler(schedule, reporter, claims, clock, sleeps) -> Scheduler:
    return Scheduler(
        schedule=schedule, reporter=reporter, claim_key=claims.key, clock=clock, sleep=sleeps
    )


@pytest.fixture
def make_runner(
    make_client, reporter, policy, claims, schedule, scheduler, fan_out, clock, redis_client
) -> Callable[..., JobRunner]:
    def make(
        read_timeout: float = 2.0,
        limits: Limits | None = None,
        limiter: Any = None,
        fan_out: FanOut = fan_out,
        policy: RetryPolicy = policy,
        metrics: Metrics | None = None,
    ) -> JobRunner:
        client = make_client(read_timeout=read_timeout)
        claimed = claims
        if limiter is not None and limiter.rate is None:  # as the app: the claim reads the pause
            claimed = claims_for(redis_client, claims.namespace, limiter.pause_key)
        return JobRunner(
            client=client,
            reporter=reporter,
            policy=policy,
            claims=claimed,
            schedule=schedule,
            scheduler=scheduler,
            fan_out=fan_out,
            limiter=limiter,
            limits=limits or Limits(),
            clock=clock,
            metrics=metrics,
        )

    return make


@pytest.fixture
def runner(make_runner) -> JobRunner:
    return make_runner()
