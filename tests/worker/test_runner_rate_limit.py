"""The runner under the fleet-wide rate limit: a job without a slot waits on the schedule, not
in a thread; a 429 seen by one worker slows every worker."""

from __future__ import annotations

import threading
import time

import pytest

from worker.jobs import START_RECORDING
from worker.metrics import Metrics
from worker.rate_limit import Rate, RateLimiter
from worker.runner import Limits
from worker.sandbox import Fault
from worker.scheduler import Scheduler
from worker.state import State, epoch_iso
from worker.testing import busiest_window
from worker.videosdk import Endpoints


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


def test_a_job_waiting_for_its_turn_says_when_until_it_moves_on(make_runner, limiter, store, clock):
    """Its record holds its turn (`slotAt`, shown by `recq status`); the next write drops it."""
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0))
    runner.run(START_RECORDING, {"roomId": "r1"}, job_id="first")
    runner.run(START_RECORDING, {"roomId": "r2"}, job_id="second")
    record = store.get("second")
    assert 59 < record.slot_at - clock.now <= 60
    assert record.to_json()["slotAt"] == epoch_iso(record.slot_at)
    store.transition("second", State.RUNNING)
    assert "slotAt" not in store.get("second").to_json()


def test_the_wait_metric_counts_the_time_on_the_schedule_too(
    make_runner, limiter, redis_client, namespace
):
    """A job handed back to wait a minute for its slot is observed waiting that minute, not
    the moment its thread spent asking."""
    metrics = Metrics()
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0), metrics=metrics)
    runner.run(START_RECORDING, {"roomId": "r1"}, job_id="first")
    runner.run(START_RECORDING, {"roomId": "r2"}, job_id="second")
    waited = metrics.registry.get_sample_value("recq_rate_limit_wait_seconds_sum")
    assert 59 < waited <= 61
    within_a_minute = metrics.registry.get_sample_value(
        "recq_rate_limit_wait_seconds_bucket", {"le": "60.0"}
    )
    assert within_a_minute == 2


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

    def try_acquire(self, ticket: str | None = None, **pairing: bool) -> float:
        self.asked += 1
        return super().try_acquire(ticket, **pairing)


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


def test_a_slow_check_does_not_let_one_call_too_many_into_a_second(
    make_runner, redis_client, namespace, sandbox, clock
):
    """At 2/s a scheduled start's check takes 0.4 s to answer, and four starts queue behind
    it. Its start reaches VideoSDK at 0.4 s; its slot used to be logged at the check's grant,
    so two of the queued starts went at 1.05 s: three calls in [0.4, 1.4). Counted by when
    VideoSDK saw them, no second holds more than two."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=Rate(2, 1.0))
    scheduled = make_runner(limiter=limiter)
    queued = make_runner(limiter=limiter, limits=Limits(rate_wait=5.0))
    sandbox.inject(Fault(latency=0.4, path=Endpoints.SESSIONS))
    job = {"roomId": "r0", "startAt": epoch_iso(clock.now)}
    check = threading.Thread(
        target=scheduled.run, args=(START_RECORDING, job), kwargs={"job_id": "s"}
    )
    check.start()
    time.sleep(0.1)
    for n in range(1, 5):
        assert queued.run(START_RECORDING, {"roomId": f"r{n}"}, job_id=f"q{n}").state is (
            State.SUCCEEDED
        )
    check.join()
    arrivals = [call.at for call in sandbox.calls]
    assert len(arrivals) == 6
    assert busiest_window(arrivals, 1.0) <= 2


def test_at_one_call_a_second_a_start_after_its_check_goes_before_the_jobs_queued_meanwhile(
    make_runner, redis_client, namespace, sandbox, clock
):
    """At 1/s three jobs queue while the check runs. The start, asking after them, has the
    next slot: it used to join the line behind them, wait past what a delivery may (1 s, plus
    one step), go back on the schedule and be checked again, each time, until its deadline."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=Rate(1, 1.0))
    runner = make_runner(limiter=limiter)
    sandbox.inject(Fault(latency=0.3, path=Endpoints.SESSIONS))
    others = RateLimiter(redis_client, namespace=namespace, rate=Rate(1, 1.0))
    queue = threading.Timer(0.1, lambda: [others.try_acquire(ticket) for ticket in "abc"])
    queue.start()
    job = {"roomId": "r1", "startAt": epoch_iso(clock.now)}
    outcome = runner.run(START_RECORDING, job, job_id="s")
    queue.join()
    assert outcome.state is State.SUCCEEDED
    assert [c.method for c in sandbox.calls] == ["GET", "POST"]
    assert others.try_acquire("a") > 0, "the slot after the start's is still to come"


def test_a_check_that_finds_no_meeting_gives_back_its_starts_slot(
    make_runner, redis_client, namespace, sandbox, clock
):
    """The start will not follow this delivery: at 2 calls a period the slot kept for it goes
    back to the others at once. It used to stay taken for the rest of the period."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=Rate(2, 10.0))
    runner = make_runner(limiter=limiter)
    sandbox.end_session("r1")
    job = {"roomId": "r1", "startAt": epoch_iso(clock.now)}
    assert runner.run(START_RECORDING, job, job_id="s").state is State.WAITING
    assert limiter.try_acquire("other") == 0.0


def test_at_one_call_a_period_a_check_that_finds_no_meeting_leaves_the_head_of_the_line(
    make_runner, redis_client, namespace, sandbox, clock
):
    """At one call a period the check's grant puts its ticket at the head of the line for the
    start; with no meeting the ticket leaves it, so the next slot is not kept for a start that
    will not come."""
    limiter = RateLimiter(redis_client, namespace=namespace, rate=Rate(1, 0.3), margin=0)
    runner = make_runner(limiter=limiter)
    sandbox.end_session("r1")
    job = {"roomId": "r1", "startAt": epoch_iso(clock.now)}
    assert runner.run(START_RECORDING, job, job_id="s").state is State.WAITING
    assert redis_client.zcard(f"{namespace}:ratelimit:line") == 0
    assert limiter.acquire(max_wait=0.5, ticket="other") == 0.0


def test_a_retry_with_no_slot_is_re_queued_as_a_retry_after_an_outage(
    make_runner, limiter, sandbox, schedule, store, clock, sink
):
    """A 503, and the retry finds no slot: the job is re-queued retrying, its outage counted
    from now. It used to go back as if merely waiting for a slot, its outage never recorded:
    each delivery made one attempt, met the limit for the next, and it retried forever."""
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0, outage_window=300))
    sandbox.inject(Fault(status=503))
    outcome = runner.run(START_RECORDING, {"roomId": "r1"}, job_id="a")
    assert (outcome.state, outcome.deferred, outcome.attempts) == (State.RETRYING, True, 1)
    record = store.get("a")
    assert (record.state, record.outage_since, record.requeues) == (State.RETRYING, clock.now, 1)
    assert 59 < schedule.get("a").due - clock.now <= 60
    assert sink.types == ["recording.retrying"]


def test_a_retry_whose_turn_is_past_the_outage_window_fails(
    make_runner, limiter, sandbox, store, clock
):
    """The slot is a minute away and the outage window 30 s: the job fails now, saying so."""
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0, outage_window=30))
    sandbox.inject(Fault(status=503))
    outcome = runner.run(START_RECORDING, {"roomId": "r1"}, job_id="a")
    assert outcome.state is State.FAILED
    assert "beyond the 30 s outage window" in outcome.error.message
    assert len(sandbox.calls) == 1


def in_line(redis_client, namespace: str) -> list[str]:
    return [t.decode() for t in redis_client.zrange(f"{namespace}:ratelimit:line", 0, -1)]


def test_a_job_cancelled_while_waiting_for_its_turn_leaves_the_line(
    make_runner, limiter, redis_client, namespace, schedule, reporter, claims, clock
):
    """The jobs behind it are no longer told to wait for a job that will never come back."""
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0))
    runner.run(START_RECORDING, {"roomId": "r1"}, job_id="first")
    runner.run(START_RECORDING, {"roomId": "r2"}, job_id="second")
    assert in_line(redis_client, namespace) == ["second"]
    scheduler = Scheduler(
        schedule=schedule, reporter=reporter, claim_key=claims.key, clock=clock, limiter=limiter
    )
    assert scheduler.cancel("second").cancelled == ("second",)
    assert in_line(redis_client, namespace) == []


def test_a_job_that_fails_while_waiting_for_its_turn_leaves_the_line(
    make_runner, limiter, redis_client, namespace, clock
):
    """Its start deadline came before its turn: it fails, and gives up its place."""
    runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0))
    runner.run(START_RECORDING, {"roomId": "r1"}, job_id="first")
    job = {
        "roomId": "r2",
        "startAt": epoch_iso(clock.now),
        "startDeadline": epoch_iso(clock.now + 30),
    }
    assert runner.run(START_RECORDING, job, job_id="late").deferred
    assert in_line(redis_client, namespace) == ["late"]
    clock.now += 45
    outcome = runner.run(START_RECORDING, job, job_id="late")
    assert outcome.error.reason == "start_deadline_passed"
    assert in_line(redis_client, namespace) == []
