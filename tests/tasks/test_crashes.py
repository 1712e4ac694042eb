"""Crashes with real processes: a worker SIGKILLed mid-run, and Redis restarted mid-run.

Workers run as `recq worker` subprocesses with the shipped defaults (visibility timeout, claim
lease, restore sweep), against the sandbox with a 50 ms answer latency so that jobs are in flight
when the crash comes. Each test prints its figures.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from worker.celery_app import create_app
from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.redis_server import RedisServer, free_port
from worker.state import State
from worker.testing import Workers, worker_env

pytestmark = pytest.mark.integration

START = START_RECORDING.endpoint


@pytest.fixture
def slow_sandbox(sandbox):
    """The sandbox answering every call after 50 ms, like a real API far away."""
    sandbox.latency = 0.05
    return sandbox


def enqueue_rooms(app: Any, count: int, prefix: str) -> list[str]:
    jobs = [{"roomId": f"{prefix}-{n}", "jobId": f"{prefix}-{n}"} for n in range(count)]
    return Producer(app).enqueue_many(START_RECORDING, jobs)


def wait_until_all_end(app: Any, job_ids: list[str], timeout: float) -> dict[str, Any]:
    ended: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(job_ids) and time.monotonic() < deadline:
        for job_id in set(job_ids) - ended.keys():
            record = app.store.get(job_id)
            if record is not None and record.state.terminal:
                ended[job_id] = record
        time.sleep(0.25)
    return ended


def accepted_per_room(sandbox: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in sandbox.accepted(START):
        counts[call.body["roomId"]] = counts.get(call.body["roomId"], 0) + 1
    return counts


# The killed worker's jobs come back after the visibility timeout (90 s) and the restore sweep:
# the test asserts recovery within 120 s, so the test as a whole needs more than the suite's 120 s.
@pytest.mark.timeout(300)
def test_a_worker_killed_mid_run_loses_nothing_and_starts_nothing_twice(
    settings, slow_sandbox, namespace
):
    """SIGKILL one of two workers, each with its default 32 threads, mid-run: every job
    succeeds, each room is started once."""
    with create_app(settings) as app, Workers(worker_env(settings)) as workers:
        victim, _survivor = workers.start(concurrency=None), workers.start(concurrency=None)
        job_ids = enqueue_rooms(app, 300, "kill")
        slow_sandbox.wait_for_calls(60, timeout=60, path=START)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        unfinished = sum(1 for j in job_ids if not (r := app.store.get(j)) or not r.state.terminal)
        ended = wait_until_all_end(app, job_ids, timeout=240)
        recovered_in = time.monotonic() - killed_at
    states = [record.state for record in ended.values()]
    reconciled = sum(1 for record in ended.values() if record.reconciled)
    print(
        f"\nSIGKILL: 300 jobs, {unfinished} unfinished at the kill, all ended "
        f"{recovered_in:.0f} s after it; {reconciled} reconciled as already running"
    )
    assert len(ended) == 300
    assert states.count(State.SUCCEEDED) == 300
    assert set(accepted_per_room(slow_sandbox).values()) == {1}
    assert len(accepted_per_room(slow_sandbox)) == 300
    assert recovered_in < 120, "the killed worker's jobs were picked up within 2 minutes"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A throwaway Redis with append-only persistence, that this test may restart."""
    server = RedisServer(appendonly=True)
    server.start()
    yield server
    server.close()


# Jobs in flight when Redis stopped come back after the visibility timeout (90 s) plus the
# restore sweep (10 s): the whole test needs about 100 s, too close to the suite's 120 s limit.
@pytest.mark.timeout(300)
def test_a_redis_restart_mid_run_loses_nothing(settings, slow_sandbox, own_redis):
    """Stop and restart the broker and state store mid-run: every job ends succeeded."""
    settings = settings.replace(broker_url=own_redis.url, redis_url=own_redis.url)
    with create_app(settings) as app, Workers(worker_env(settings)) as workers:
        workers.start()
        job_ids = enqueue_rooms(app, 200, "restart")
        slow_sandbox.wait_for_calls(40, timeout=60, path=START)
        own_redis.stop()
        stopped_at = time.monotonic()
        time.sleep(2)
        own_redis.start()
        ended = wait_until_all_end(app, job_ids, timeout=240)
        recovered_in = time.monotonic() - stopped_at
    states = [record.state for record in ended.values()]
    print(f"\nRedis restart: 200 jobs, all ended {recovered_in:.0f} s after the stop")
    assert len(ended) == 200
    assert states.count(State.SUCCEEDED) == 200
    assert set(accepted_per_room(slow_sandbox).values()) == {1}


# The delivery cut short keeps its claim (its release failed too): the job runs again once the
# claim's lease (60 s) is over, so the test needs about 70 s.
@pytest.mark.timeout(300)
def test_a_state_store_failing_over_mid_job_loses_nothing(settings, sandbox, own_redis):
    """The broker stays up; the state store (a Redis of its own, RECQ_REDIS_URL) turns
    read-only mid-job for a few seconds, as a failing-over primary does: every write answers
    READONLY, which no client retries. The deliveries hand their message back instead of having
    it acknowledged, and the job still ends succeeded, started once."""
    settings = settings.replace(redis_url=own_redis.url)
    sandbox.latency = 2.0  # the job is in its call when the store turns read-only
    store = redis.Redis.from_url(own_redis.url)
    with create_app(settings) as app, Workers(worker_env(settings)) as workers:
        workers.start()
        job_ids = enqueue_rooms(app, 1, "failover")
        started = time.monotonic()
        while app.store.get(job_ids[0]).state is not State.RUNNING:  # claimed: in its call
            assert time.monotonic() - started < 60, "the job never started"
            time.sleep(0.05)
        store.replicaof("127.0.0.1", str(free_port()))  # a primary that is not there
        read_only_at = time.monotonic()
        time.sleep(6)
        store.replicaof("NO", "ONE")
        ended = wait_until_all_end(app, job_ids, timeout=180)
        recovered_in = time.monotonic() - read_only_at
    store.close()
    print(f"\nstate store read-only for 6 s: the job ended {recovered_in:.0f} s after it began")
    assert [record.state for record in ended.values()] == [State.SUCCEEDED]
    assert ended[job_ids[0]].reconciled  # the start made before the failover
    assert accepted_per_room(sandbox) == {"failover-0": 1}


def test_a_worker_killed_holding_the_restore_sweep_s_lock_holds_back_no_recovery(
    settings, sandbox, own_redis
):
    """A worker dies while it sweeps: the lock it held expires before its jobs are due back.

    Every sweep holds kombu's lock in Redis; with kombu's expiry (300 s) a worker killed while
    sweeping kept every other worker from sweeping for five minutes. Here the dead worker's
    lock is taken as kombu's sweep takes it, with the expiry recq configures, and never
    released: its job still comes back within the visibility timeout and one sweep.
    """
    visibility = 20
    settings = settings.replace(
        broker_url=own_redis.url,
        redis_url=own_redis.url,
        retry_window=0.0,
        connect_timeout=1.0,
        read_timeout=3.0,
        visibility_timeout=visibility,
    )
    sandbox.latency = 2.0  # the victim's call is in flight when it dies
    timing = {
        "RECQ_VISIBILITY_TIMEOUT": str(visibility),
        "RECQ_RETRY_WINDOW": "0",
        "RECQ_CONNECT_TIMEOUT": "1",
        "RECQ_READ_TIMEOUT": "3",
    }
    with create_app(settings) as app, Workers(worker_env(settings, **timing)) as workers:
        victim = workers.start()
        job_ids = enqueue_rooms(app, 1, "sweeper")
        deadline = time.monotonic() + 30
        while (record := app.store.get(job_ids[0])) is None or record.state is not State.RUNNING:
            assert time.monotonic() < deadline, "the victim never started the job"
            time.sleep(0.05)
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            qos = channel.qos
            lock = channel.client.lock(qos.unacked_mutex_key, timeout=qos.unacked_mutex_expire)
            assert lock.acquire(blocking=False)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        workers.start()
        ended = wait_until_all_end(app, job_ids, timeout=90)
        recovered_in = time.monotonic() - killed_at
    print(f"\nkilled holding the sweep's lock: the job ended {recovered_in:.0f} s after the kill")
    assert [record.state for record in ended.values()] == [State.SUCCEEDED]
    assert accepted_per_room(sandbox) == {"sweeper-0": 1}
    assert recovered_in < visibility + 25, "back within the visibility timeout and one sweep"


def test_sigterm_finishes_or_returns_in_flight_jobs(settings, sandbox):
    """SIGTERM mid-run: the worker exits, and a new worker ends every job well before the
    visibility timeout would have brought any back."""
    sandbox.latency = 0.5
    with create_app(settings) as app, Workers(worker_env(settings)) as workers:
        first = workers.start(concurrency=4)
        job_ids = enqueue_rooms(app, 40, "term")
        sandbox.wait_for_calls(4, timeout=30, path=START)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=90)
        stopped_at = time.monotonic()
        workers.start(concurrency=8)
        ended = wait_until_all_end(app, job_ids, timeout=60)
        finished_in = time.monotonic() - stopped_at
    print(f"\nSIGTERM: exit code {first.returncode}; 40 jobs ended {finished_in:.0f} s after it")
    assert first.returncode == 0
    assert [r.state for r in ended.values()].count(State.SUCCEEDED) == 40
    assert finished_in < settings.visibility_timeout
    assert set(accepted_per_room(sandbox).values()) == {1}
