"""Scheduled recordings with real workers on real Redis, against the sandbox over HTTP.

What is due fires on time and once, however many workers run and whichever of them dies; what
is cancelled never fires; a meeting that begins late is recorded soon after it begins; a
scheduled stop ends the recording on time. Each test prints its figures.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import pytest

from worker.celery_app import create_app
from worker.jobs import START_RECORDING, STOP_RECORDING
from worker.producer import Producer
from worker.sandbox import Fault
from worker.state import State, epoch_iso
from worker.testing import Workers, busiest_window, wait_for_state, worker_env
from worker.videosdk import Endpoints

pytestmark = pytest.mark.integration

START, STOP = START_RECORDING.endpoint, STOP_RECORDING.endpoint


@pytest.fixture
def settings(settings):
    """Waiting starts check their meeting every half second (10 s by default)."""
    return settings.replace(live_poll_interval=0.5)


def scheduled_rooms(app: Any, prefix: str, count: int, start_at: float) -> list[str]:
    jobs = [
        {"roomId": f"{prefix}-{n}", "jobId": f"{prefix}-{n}", "startAt": epoch_iso(start_at)}
        for n in range(count)
    ]
    return Producer(app).enqueue_many(START_RECORDING, jobs)


def wait_for_workers(app: Any, count: int, timeout: float = 30) -> None:
    """Until ``count`` workers answer a ping (each has its dispatcher running by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5) or []) >= count:
            return
    raise TimeoutError(f"{count} workers did not come up within {timeout} s")


def wait_for_all(app: Any, job_ids: list[str], *states: State, timeout: float) -> None:
    for job_id in job_ids:
        wait_for_state(app.store, job_id, *states, timeout=timeout)


def test_due_jobs_fire_once_on_time_though_a_worker_is_killed_before_they_are_due(
    settings, sandbox
):
    """Two `recq worker` processes, one SIGKILLed before the due time: each job starts once,
    within 2 seconds of its startAt."""
    with create_app(settings) as app, Workers(worker_env(settings)) as workers:
        victim, _survivor = workers.start(concurrency=4), workers.start(concurrency=4)
        wait_for_workers(app, 2)
        start_at = time.time() + 4
        job_ids = scheduled_rooms(app, "due", 30, start_at)
        assert {app.store.get(j).state for j in job_ids} == {State.SCHEDULED}
        victim.send_signal(signal.SIGKILL)
        wait_for_all(app, job_ids, State.SUCCEEDED, timeout=30)
    calls = sandbox.accepted(START)
    lateness = sorted(call.at - start_at for call in calls)
    print(
        f"\n30 jobs due together: started {lateness[0]:.2f} to {lateness[-1]:.2f} s after startAt"
    )
    assert Counter(call.body["roomId"] for call in calls) == {f"due-{n}": 1 for n in range(30)}
    assert lateness[0] >= 0
    assert lateness[-1] < 2.0


def test_a_restart_of_every_worker_loses_nothing(settings, sandbox):
    """Every worker killed while jobs are scheduled: new workers fire them all once, late but
    within their deadline (startAt + 15 minutes)."""
    with create_app(settings) as app, Workers(worker_env(settings)) as workers:
        first = [workers.start(concurrency=2), workers.start(concurrency=2)]
        wait_for_workers(app, 2)
        start_at = time.time() + 2
        job_ids = scheduled_rooms(app, "restart", 10, start_at)
        for process in first:
            process.send_signal(signal.SIGKILL)
            process.wait()
        time.sleep(max(0.0, start_at + 1 - time.time()))  # due with no worker alive
        workers.start(concurrency=4)
        wait_for_all(app, job_ids, State.SUCCEEDED, timeout=60)
    rooms = Counter(call.body["roomId"] for call in sandbox.accepted(START))
    assert rooms == {f"restart-{n}": 1 for n in range(10)}


def test_a_cancelled_job_never_fires(app, running_worker, sandbox):
    """Of two jobs due at the same time, the cancelled one makes no call and stays cancelled."""
    start_at = epoch_iso(time.time() + 2)
    producer = Producer(app)
    kept = producer.enqueue(START_RECORDING, {"roomId": "kept", "startAt": start_at})
    dropped = producer.enqueue(START_RECORDING, {"roomId": "dropped", "startAt": start_at})
    app.producer_scheduler.cancel(dropped)
    wait_for_state(app.store, kept, State.SUCCEEDED, timeout=15)
    time.sleep(1.0)  # a dispatcher tick or two after the due time
    assert [call.body["roomId"] for call in sandbox.calls_to(START)] == ["kept"]
    assert app.store.get(dropped).state is State.CANCELLED


def test_a_meeting_that_begins_late_is_recorded_soon_after_it_begins(app, running_worker, sandbox):
    """Due at once, the room is live only 3 s later: the job waits, then starts within a
    poll interval (0.5 s here) of the meeting's beginning."""
    sandbox.end_session("late")
    live_at = time.time() + 3
    sandbox.make_live("late", at=live_at)
    job_id = Producer(app).enqueue(
        START_RECORDING, {"roomId": "late", "startAt": epoch_iso(time.time())}
    )
    wait_for_state(app.store, job_id, State.WAITING, timeout=10)
    record = wait_for_state(app.store, job_id, State.SUCCEEDED, State.FAILED, timeout=20)
    [start] = sandbox.accepted(START)
    print(f"\nmeeting began late: recorded {start.at - live_at:.2f} s after it began")
    assert record.state is State.SUCCEEDED
    assert 0 <= start.at - live_at < 1.5
    assert [entry["state"] for entry in record.history][:3] == ["queued", "waiting", "waiting"]


def test_a_scheduled_stop_ends_the_recording_on_time(app, running_worker, sandbox):
    """startAt in 1 s, stopAt in 3 s: the recording starts, then is stopped within 2 s of
    stopAt by the stop job `<id>:stop`."""
    now = time.time()
    start_at, stop_at = now + 1, now + 3
    job = {"roomId": "timed", "startAt": epoch_iso(start_at), "stopAt": epoch_iso(stop_at)}
    job_id = Producer(app).enqueue(START_RECORDING, job)
    wait_for_state(app.store, job_id, State.SUCCEEDED, timeout=15)
    assert sandbox.recording_running("timed")
    wait_for_state(app.store, f"{job_id}:stop", State.SUCCEEDED, timeout=15)
    [stop] = sandbox.accepted(STOP)
    print(f"\nscheduled stop: made {stop.at - stop_at:.2f} s after stopAt")
    assert stop.body == {"roomId": "timed"}
    assert 0 <= stop.at - stop_at < 2.0
    assert not sandbox.recording_running("timed")


REDIS_AHEAD = 600.0


@pytest.fixture
def app_behind_redis(app):
    """The app on a host whose clock is 10 minutes behind Redis's: its ``fleet_time`` (Redis's,
    :mod:`worker.clock`) reads this host's time plus 10 minutes. Requested before
    ``running_worker``, so that the worker's parts are built on it."""
    app.fleet_time = lambda: time.time() + REDIS_AHEAD
    return app


def test_a_host_whose_clock_is_behind_keeps_the_fleet_s_time(
    app_behind_redis, running_worker, sandbox
):
    """The producer and the worker are 10 minutes behind Redis: a start due in 2 s and its stop
    due in 4 s, on Redis's time, are each made within 2 s of their time, not 10 minutes late
    (each host used to compare due times with its own clock)."""
    app = app_behind_redis
    now = app.fleet_time()
    start_at, stop_at = now + 2, now + 4
    job = {"roomId": "skewed", "startAt": epoch_iso(start_at), "stopAt": epoch_iso(stop_at)}
    job_id = Producer(app).enqueue(START_RECORDING, job)
    wait_for_state(app.store, f"{job_id}:stop", State.SUCCEEDED, timeout=15)
    [start], [stop] = sandbox.accepted(START), sandbox.accepted(STOP)
    late = (start.at + REDIS_AHEAD - start_at, stop.at + REDIS_AHEAD - stop_at)
    print(f"\n10 minutes behind Redis: start {late[0]:.2f} s, stop {late[1]:.2f} s after due")
    assert 0 <= late[0] < 2.0
    assert 0 <= late[1] < 2.0


def test_slow_meeting_checks_do_not_take_the_fleet_past_its_rate_limit(settings, sandbox):
    """Two `recq worker` processes at RECQ_RATE_LIMIT=2/s; VideoSDK takes 0.4 s to answer
    each meeting check. Four scheduled starts and eight plain ones: counted by when VideoSDK saw
    them, no second holds more than two calls, and every job starts. (A start's slot used to be
    logged at its check's grant: with checks slower than the 50 ms margin, the fleet put a third
    call into a second.)"""
    env = worker_env(settings, RECQ_RATE_LIMIT="2/s")
    sandbox.inject(Fault(latency=0.4, path=Endpoints.SESSIONS, times=10))
    with create_app(settings) as app, Workers(env) as workers:
        workers.start(concurrency=4)
        workers.start(concurrency=4)
        wait_for_workers(app, 2)
        scheduled = scheduled_rooms(app, "checked", 4, time.time())
        plain = Producer(app).enqueue_many(
            START_RECORDING, [{"roomId": f"plain-{n}"} for n in range(8)]
        )
        wait_for_all(app, scheduled + plain, State.SUCCEEDED, timeout=60)
    arrivals = [call.at for call in sandbox.calls]
    most = busiest_window(arrivals, 1.0)
    print(f"\n2/s, 0.4 s checks: {len(arrivals)} calls; at most {most} in any second")
    assert len(sandbox.calls_to(START)) == 12
    assert most <= 2
