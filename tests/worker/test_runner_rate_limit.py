"""The runner under the fleet-wide rate limit: a job without a slot waits on the schedule, not
in a thread; a 429 seen by one worker slows every worker."""

from __future__ import annotations

import pytest

from worker.jobs import START_RECORDING
from worker.rate_limit import Rate, RateLimiter
from worker.runner import Limits
from worker.sandbox import Fault
from worker.state import State, epoch_iso


@pytest.fixture
def limiter(redis_client, namespace):
    return RateLimiter(redis_client, namespace=namespace, rate=Rate(1, 60.0), margin=0)


def test_a_job_without_a_slot_goes_back_on_the_schedule_without_a_call(
    make_runner, limiter, sandbox, schedule, store, clock
):
    """The slot is taken before the attempt is counted: the job made no call and says so."""
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0))
    assert runner.run(START_RECORDING, {"roomId": "r1"}, job_id="first").state is State.SUCCEEDED
    outcome = runner.run(START_RECORDING, {"roomId": "r2"}, job_id="second")
    assert (outcome.state, outcome.deferred, outcome.attempts) == (State.QUEUED, True, 0)
    assert len(sandbox.calls) == 1
    [delivery] = schedule.pending()
    assert delivery.job_id == "second"
    assert 59 < delivery.due - clock.now <= 60
    assert store.get("second").attempts == 0


def test_a_429_pauses_every_worker(make_runner, redis_client, namespace, sandbox, schedule, clock):
    """Worker A meets a 429 with Retry-After: 30; worker B, a limiter of its own on the same
    Redis, then makes no call and re-queues its job for about that long."""
    unlimited = RateLimiter(redis_client, namespace=namespace, rate=None)
    other = RateLimiter(redis_client, namespace=namespace, rate=None)
    worker_a = make_runner(limiter=unlimited, limits=Limits(rate_wait=0.0))
    worker_b = make_runner(limiter=other, limits=Limits(rate_wait=0.0))
    sandbox.inject(Fault(status=429, retry_after="30"))
    worker_a.run(START_RECORDING, {"roomId": "r1"}, job_id="a")
    calls_before = len(sandbox.calls)
    outcome = worker_b.run(START_RECORDING, {"roomId": "r2"}, job_id="b")
    assert outcome.deferred
    assert len(sandbox.calls) == calls_before
    assert 29 < schedule.get("b").due - clock.now <= 30


def test_a_429_asking_for_hours_pauses_the_fleet_for_30_seconds_at_most(
    make_runner, redis_client, namespace, sandbox, schedule, clock
):
    """The job that met it waits its Retry-After; the other workers only 30 s."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=None)
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0, outage_window=10_000))
    sandbox.inject(Fault(status=429, retry_after="7200"))
    runner.run(START_RECORDING, {"roomId": "r1"}, job_id="a")
    runner.run(START_RECORDING, {"roomId": "r2"}, job_id="b")
    assert schedule.get("a").due - clock.now >= 7200
    assert 29 < schedule.get("b").due - clock.now <= 30


class CountingLimiter(RateLimiter):
    """A limiter that counts how often it is asked for a slot."""

    asked = 0

    def try_acquire(self, ticket: str | None = None, *, pair: bool = False) -> float:
        self.asked += 1
        return super().try_acquire(ticket, pair=pair)


def test_without_a_limit_the_claim_reads_the_pause_for_the_first_call(
    make_runner, redis_client, namespace, sandbox
):
    """With no RECQ_RATE_LIMIT, the limiter checks only for a 429's pause, and the claim has
    just read it: the delivery's first call asks nothing more; a retry asks again."""
    limiter = CountingLimiter(redis_client, namespace=namespace, rate=None)
    runner = make_runner(limiter=limiter)
    assert runner.run(START_RECORDING, {"roomId": "r1"}, job_id="a").state is State.SUCCEEDED
    assert limiter.asked == 0
    sandbox.inject(Fault(status=503))
    assert runner.run(START_RECORDING, {"roomId": "r2"}, job_id="b").state is State.SUCCEEDED
    assert limiter.asked == 1  # the second attempt, after the 503


def test_a_pause_found_by_the_claim_holds_the_first_call(
    make_runner, redis_client, namespace, sandbox, schedule, clock
):
    """A pause already in force when the job is claimed: no call, the job waits it out."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=None)
    limiter.pause(20)
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0))
    outcome = runner.run(START_RECORDING, {"roomId": "r1"}, job_id="a")
    assert outcome.deferred
    assert sandbox.calls == []
    assert 19 < schedule.get("a").due - clock.now <= 20


def test_with_a_limit_every_call_asks_the_limiter(make_runner, redis_client, namespace):
    """The claim reads no pause under a rate limit: the limiter's log must count each call."""
    limiter = CountingLimiter(redis_client, namespace=namespace, rate=Rate(100, 1.0))
    runner = make_runner(limiter=limiter)
    runner.run(START_RECORDING, {"roomId": "r1"}, job_id="a")
    assert limiter.asked == 1


@pytest.mark.parametrize("rate", [Rate(1, 1.0), Rate(5, 1.0), Rate(30, 60.0)], ids=str)
def test_a_scheduled_start_makes_its_start_after_its_check(
    make_runner, redis_client, namespace, sandbox, clock, rate
):
    """The check and the start are two calls. With two or more a period they take one turn, a
    pair of slots, so the start follows at once; at 1/s the start waits for the next second.
    A start used to join the line behind every waiter, and at 1/s (or 30/m) never fit in the
    wait after its check: deferred, checked again on every delivery, it never started."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=rate)
    runner = make_runner(limiter=limiter)
    job = {"roomId": "r1", "startAt": epoch_iso(clock.now)}
    outcome = runner.run(START_RECORDING, job, job_id="s")
    assert outcome.state is State.SUCCEEDED
    assert [c.method for c in sandbox.calls] == ["GET", "POST"]


def test_a_check_and_its_start_count_as_two_calls(
    make_runner, redis_client, namespace, sandbox, clock
):
    """At 2/s a scheduled start's pair fills the second: no other call is granted in it."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=Rate(2, 1.0))
    runner = make_runner(limiter=limiter)
    job = {"roomId": "r1", "startAt": epoch_iso(clock.now)}
    assert runner.run(START_RECORDING, job, job_id="s").state is State.SUCCEEDED
    assert limiter.try_acquire() > 0
