"""The fleet-wide rate limit: a sliding-window log and a waiting line in a real Redis."""

from __future__ import annotations

import heapq
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import pytest
import redis

from worker.errors import SettingsError
from worker.rate_limit import Rate, RateLimiter, parse_rate
from worker.testing import busiest_window


@pytest.fixture
def make_limiter(redis_client, namespace):
    """Limiters in this test's namespace, as separate workers would build them."""

    def make(rate: Rate | None, **options: float) -> RateLimiter:
        return RateLimiter(redis_client, namespace=namespace, rate=rate, **options)

    return make


def fill(limiter: RateLimiter) -> None:
    """Take every slot of the window, at once."""
    assert limiter.rate is not None
    assert [limiter.try_acquire() for _ in range(limiter.rate.count)] == [0.0] * limiter.rate.count


class TestParseRate:
    @pytest.mark.parametrize(
        ("text", "rate"),
        [
            ("5/s", Rate(5, 1.0)),
            ("300/m", Rate(300, 60.0)),
            ("1000/h", Rate(1000, 3600.0)),
            (" 5 / second ", Rate(5, 1.0)),
            ("2/Minute", Rate(2, 60.0)),
            ("7/hours", Rate(7, 3600.0)),
            ("10/30s", Rate(10, 30.0)),
            ("5/0.5s", Rate(5, 0.5)),
            ("100/2m", Rate(100, 120.0)),
        ],
    )
    def test_reads_calls_per_second_minute_or_hour(self, text, rate):
        """A count over a unit, its long name, or a multiple of it."""
        assert parse_rate(text) == rate

    @pytest.mark.parametrize("text", ["", "5", "5/", "/s", "0/s", "-1/s", "5/d", "5/0s", "x/s"])
    def test_anything_else_is_a_settings_error_naming_the_variable(self, text):
        """The message names RECQ_RATE_LIMIT, the bad value and a good example."""
        with pytest.raises(SettingsError) as caught:
            parse_rate(text)
        message = str(caught.value)
        assert "RECQ_RATE_LIMIT" in message
        assert repr(text) in message
        assert "5/s" in message

    @pytest.mark.parametrize(
        ("text", "spread", "doubled"),
        [("1/m", "2/2m", "2/m"), ("1/h", "2/2h", "2/h"), ("1/3s", "2/6s", "2/3s")],
    )
    def test_one_call_a_period_longer_than_a_start_can_wait_is_refused(self, text, spread, doubled):
        """A scheduled start checks its meeting, then starts: with one call a minute the start
        waited for the next minute's slot on the schedule, checked again, and never ran. Two
        rates are named instead, each for what it is: 2/2m is not the same limit as 1/m (it
        lets two calls go together), so it is not offered as one."""
        with pytest.raises(SettingsError) as caught:
            parse_rate(text)
        message = str(caught.value)
        assert f"RECQ_RATE_LIMIT={spread} keeps the same average rate but lets two calls go" in (
            message
        )
        assert f"RECQ_RATE_LIMIT={doubled} doubles it" in message
        assert "same rate as two calls" not in message

    @pytest.mark.parametrize("text", ["1/s", "1/2s", "1/0.5s"])
    def test_one_call_a_period_a_start_can_wait_for_is_read(self, text):
        """At 1/s (or up to 1/2s) the start waits for the next slot in its delivery."""
        assert parse_rate(text).count == 1

    @pytest.mark.parametrize("text", ["5/s", "300/m", "10/h", "10/30s", "5/0.5s", "100/2m"])
    def test_a_rate_prints_as_it_is_written(self, text):
        """str() gives back the setting, so logs show the rate in force."""
        assert str(parse_rate(text)) == text


class TestSlidingWindow:
    def test_count_calls_are_granted_then_the_next_waits_at_most_a_window(self, make_limiter):
        """Five grants, then a wait > 0 and no longer than the window (period + margin)."""
        limiter = make_limiter(Rate(5, 0.5), margin=0.05)
        assert [limiter.try_acquire() for _ in range(5)] == [0.0] * 5
        wait = limiter.try_acquire()
        assert 0.5 < wait <= 0.55

    def test_calls_are_granted_again_once_the_window_has_passed(self, make_limiter):
        """After the advised wait the oldest grant has left the window and a slot is free."""
        limiter = make_limiter(Rate(5, 0.5))
        fill(limiter)
        time.sleep(limiter.try_acquire())
        assert limiter.try_acquire() == 0.0

    def test_a_denied_call_takes_no_slot(self, make_limiter):
        """Refusals are not logged, so waiting callers do not push the window forward."""
        limiter = make_limiter(Rate(1, 0.3), margin=0)
        limiter.try_acquire()
        for _ in range(20):
            assert limiter.try_acquire() > 0
        time.sleep(0.3)
        assert limiter.try_acquire() == 0.0

    def test_every_worker_shares_one_log(self, make_limiter):
        """Slots taken by one limiter are gone for another on the same namespace."""
        first, second = make_limiter(Rate(3, 10.0)), make_limiter(Rate(3, 10.0))
        fill(first)
        assert second.try_acquire() > 9

    def test_the_log_expires_one_window_after_the_last_grant(
        self, make_limiter, redis_client, namespace
    ):
        """An idle limiter leaves nothing behind in Redis."""
        make_limiter(Rate(5, 2.0), margin=0.05).try_acquire()
        assert 2000 < redis_client.pttl(f"{namespace}:ratelimit:log") <= 2050

    def test_an_unlimited_limiter_always_grants_and_keeps_no_log(
        self, make_limiter, redis_client, namespace
    ):
        """rate=None grants every call, with a ticket or without, and writes nothing."""
        limiter = make_limiter(None)
        assert [limiter.try_acquire() for _ in range(50)] == [0.0] * 50
        assert [limiter.try_acquire(f"job-{n}") for n in range(50)] == [0.0] * 50
        assert list(redis_client.scan_iter(match=f"{namespace}:*")) == []


class TestMargin:
    def test_the_window_is_the_period_plus_the_margin(self, make_limiter):
        """At 2 per 0.5 s with a margin of 0.2 s, the third grant comes 0.7 s after the first."""
        limiter = make_limiter(Rate(2, 0.5), margin=0.2)
        started = time.monotonic()
        fill(limiter)
        time.sleep(0.5)
        assert limiter.try_acquire() > 0.15, "one period later the window is still full"
        assert limiter.acquire(max_wait=1.0) == 0.0
        assert time.monotonic() - started >= 0.7

    def test_a_limiter_refuses_a_negative_margin_or_no_patience(self, make_limiter):
        """A margin below zero would break the promise; patience must be positive."""
        with pytest.raises(ValueError, match="margin"):
            make_limiter(Rate(5, 1.0), margin=-0.01)
        with pytest.raises(ValueError, match="patience"):
            make_limiter(Rate(5, 1.0), patience=0)


class TestLine:
    def test_waiters_are_told_turns_in_the_order_they_queued_a_step_apart(self, make_limiter):
        """With the window full, a, b and c are told waits window/count apart, in that order."""
        limiter = make_limiter(Rate(2, 1.0), margin=0)
        fill(limiter)
        a, b, c = (limiter.try_acquire(ticket) for ticket in "abc")
        assert 0.99 < a <= 1.0
        assert b - a == pytest.approx(0.5, abs=0.01)
        assert c - b == pytest.approx(0.5, abs=0.01)

    def test_a_newcomer_queues_behind_everyone_waiting(self, make_limiter):
        """A caller with a new ticket, or with none, is told to wait at least as long as c."""
        limiter = make_limiter(Rate(2, 1.0), margin=0)
        fill(limiter)
        last = [limiter.try_acquire(ticket) for ticket in "abc"][-1]
        assert limiter.try_acquire() >= last
        assert limiter.try_acquire("d") >= last

    def test_freed_slots_go_to_the_front_of_the_line(self, make_limiter):
        """When slots free up, a and b are granted, while c, asking first, is still refused."""
        limiter = make_limiter(Rate(2, 0.3), margin=0)
        fill(limiter)
        wait, _, _ = (limiter.try_acquire(ticket) for ticket in "abc")
        time.sleep(wait + 0.02)
        assert limiter.try_acquire("c") > 0
        assert limiter.try_acquire() > 0, "a caller without a ticket does not jump the line"
        assert limiter.try_acquire("a") == 0.0
        assert limiter.try_acquire("b") == 0.0

    def test_a_ticket_keeps_its_place_when_it_asks_again(self, make_limiter):
        """Re-asking does not send a waiter to the back: a stays ahead of b, however often."""
        limiter = make_limiter(Rate(1, 1.0), margin=0)
        fill(limiter)
        first = limiter.try_acquire("a")
        behind = limiter.try_acquire("b")
        for _ in range(5):
            assert limiter.try_acquire("a") <= first
        assert limiter.try_acquire("b") > first
        assert limiter.try_acquire("c") > behind

    def test_a_waiter_overdue_by_more_than_its_patience_no_longer_blocks_the_line(
        self, make_limiter
    ):
        """A ticket expected back 0.4 s in keeps its slot until 0.7 s, then the next one has it."""
        limiter = make_limiter(Rate(1, 0.4), margin=0, patience=0.3)
        fill(limiter)
        started = time.monotonic()
        limiter.try_acquire("gone")
        limiter.try_acquire("b")
        time.sleep(0.5 - (time.monotonic() - started))
        assert limiter.try_acquire("b") > 0, "the slot is free but kept for 'gone'"
        time.sleep(0.85 - (time.monotonic() - started))
        assert limiter.try_acquire("b") == 0.0

    def test_a_ticket_that_leaves_gives_up_its_place(self, make_limiter):
        """After leave(a), the slot a waited for goes to b; leaving twice changes nothing."""
        limiter = make_limiter(Rate(1, 0.3), margin=0)
        fill(limiter)
        wait = limiter.try_acquire("a")
        limiter.try_acquire("b")
        assert limiter.leave("a") == 1
        assert limiter.leave("a") == 0
        time.sleep(wait)
        assert limiter.try_acquire("b") == 0.0

    def test_many_tickets_leave_at_once(self, make_limiter, redis_client, namespace):
        """A batch's cancelled children leave together, in one round trip."""
        limiter = make_limiter(Rate(1, 10.0), margin=0)
        fill(limiter)
        for ticket in "abc":
            limiter.try_acquire(ticket)
        assert limiter.leave("a", "b", "c", "never-queued") == 3
        assert redis_client.exists(f"{namespace}:ratelimit:line") == 0
        assert limiter.leave() == 0

    def test_a_ticket_that_leaves_gives_up_the_slot_kept_for_its_second_call(self, make_limiter):
        """A check granted as a pair keeps its start a slot; if the start will not be made
        (the meeting is not live), leave() gives that slot to the others at once."""
        limiter = make_limiter(Rate(2, 10.0), margin=0)
        assert limiter.try_acquire("s", pair=True) == 0.0
        assert limiter.try_acquire() > 9, "the start's slot is kept"
        assert limiter.leave("s") == 1
        assert limiter.try_acquire() == 0.0

    def test_the_line_expires_patience_after_the_last_waiter_is_due(
        self, make_limiter, redis_client, namespace
    ):
        """An abandoned line leaves nothing behind; an emptied one is gone at once."""
        limiter = make_limiter(Rate(1, 1.0), margin=0, patience=2.0)
        fill(limiter)
        waits = [limiter.try_acquire(ticket) for ticket in "ab"]
        for key in ("line", "back"):
            ttl = redis_client.pttl(f"{namespace}:ratelimit:{key}") / 1000
            assert waits[-1] + 1.9 < ttl <= waits[-1] + 2.01
        limiter.leave("a")
        limiter.leave("b")
        assert redis_client.exists(f"{namespace}:ratelimit:line") == 0


class TestPairs:
    """A scheduled start's check and start: two calls in a row, one turn of the limit."""

    def test_the_second_call_is_logged_when_it_goes_not_at_the_first_grant(self, make_limiter):
        """At 2/s a check is granted with its start's slot at t=0 and answered at 0.3 s, when
        the start goes. Logged at 0 (where it used to stay), the start's slot came free at 1.0
        s with the check's, and two more calls went then: three in [0.3, 1.3). Logged at 0.3,
        only the check's slot comes free at 1.0; the next after it waits until 1.3."""
        limiter = make_limiter(Rate(2, 1.0), margin=0)
        began = time.monotonic()
        assert limiter.try_acquire("s", pair=True) == 0.0
        time.sleep(0.3)
        assert limiter.try_acquire("s", second=True) == 0.0
        assert limiter.acquire(max_wait=2.0) == 0.0
        assert 0.95 < time.monotonic() - began < 1.25
        assert limiter.try_acquire() > 0.15

    def test_the_second_call_is_granted_however_full_the_window_is(self, make_limiter):
        """Calls granted while the check ran cannot take the start's slot, nor jump ahead."""
        limiter = make_limiter(Rate(3, 10.0), margin=0)
        assert limiter.try_acquire("s", pair=True) == 0.0
        assert limiter.try_acquire() == 0.0
        assert limiter.try_acquire("other") > 9
        assert limiter.try_acquire("s", second=True) == 0.0
        assert limiter.try_acquire() > 9

    def test_a_second_call_without_a_kept_slot_asks_like_any_other(self, make_limiter):
        """Its slot left the window (the check took longer than a window), or the kept slot
        was given up: the call is granted only if the window has room."""
        limiter = make_limiter(Rate(2, 10.0), margin=0)
        fill(limiter)
        assert limiter.try_acquire("s", second=True) > 9

    def test_at_one_call_a_period_the_second_call_has_the_next_slot_before_anyone(
        self, make_limiter
    ):
        """At 1/0.4s the check takes the window's one slot; others queue meanwhile; the start,
        asking after them, is still told the next slot, and granted it when it comes. It used
        to join the line at the back and, at 1/s or 1/2s, wait past what a delivery may."""
        limiter = make_limiter(Rate(1, 0.4), margin=0)
        assert limiter.try_acquire("s", pair=True) == 0.0
        waits = [limiter.try_acquire(ticket) for ticket in "abc"]
        wait = limiter.try_acquire("s", second=True)
        assert 0.3 < wait <= 0.4
        assert wait < min(waits) + 0.01
        time.sleep(wait)
        assert limiter.try_acquire("a") > 0, "the next slot is the start's"
        assert limiter.try_acquire("s", second=True) == 0.0

    def test_a_pause_sends_the_second_call_to_the_head_of_the_line(self, make_limiter):
        """A 429 meanwhile: the start waits out the pause, then goes before the others."""
        limiter = make_limiter(Rate(2, 0.2), margin=0)
        assert limiter.try_acquire("s", pair=True) == 0.0
        limiter.try_acquire("a")
        limiter.pause(0.3)
        wait = limiter.try_acquire("s", second=True)
        assert wait > 0.25
        time.sleep(wait)
        assert limiter.try_acquire("s", second=True) == 0.0

    def test_a_pair_is_granted_to_a_ticket(self, make_limiter):
        """The second call finds its turn by the ticket: without one there is no pair."""
        limiter = make_limiter(Rate(2, 1.0))
        with pytest.raises(ValueError, match="ticket"):
            limiter.try_acquire(pair=True)
        with pytest.raises(ValueError, match="not both"):
            limiter.try_acquire("s", pair=True, second=True)


@dataclass
class Run:
    """What a crowd of jobs saw: when each grant came back, and how many tries it took."""

    grants: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    tries: int = 0
    took: float = 0.0


def run_jobs(limiter: RateLimiter, jobs: int) -> Run:
    """Publish `jobs` jobs at once; a refused job is re-delivered when told, as the runner does.

    A heap of re-deliveries stands for the durable schedule; each try is one try_acquire.
    """
    run = Run()
    started = time.time()
    due = [(started, order, f"job-{order}") for order in range(jobs)]
    while due:
        at, order, ticket = heapq.heappop(due)
        time.sleep(max(at - time.time(), 0))
        run.tries += 1
        if wait := limiter.try_acquire(ticket):
            run.waits.append(wait)
            heapq.heappush(due, (time.time() + wait, order, ticket))
        else:
            run.grants.append(time.time())
    run.took = time.time() - started
    return run


class TestNoHerd:
    def test_jobs_published_at_once_come_back_at_their_own_turns(self, make_limiter):
        """60 jobs at once under 10/s: all granted in about 6 windows, at most 10 in any 1 s, and
        few tries, since each refused job is told its own turn, not the same wait as all the rest.

        Grant times are read just after Redis answers, so windows are checked 0.95 s wide.
        """
        limiter = make_limiter(Rate(10, 1.0), margin=0.05)
        run = run_jobs(limiter, 60)
        print(
            f"60 jobs: {run.tries} tries in {run.took:.2f} s, "
            f"at most {busiest_window(run.grants, 0.95)} grants in any 0.95 s; "
            f"{sum(w < 0.05 for w in run.waits)} refusals were short waits (< 50 ms) "
            f"that acquire(max_wait=1.0) would have slept in-thread"
        )
        assert len(run.grants) == 60
        assert run.took <= 7.5
        assert busiest_window(run.grants, 0.95) <= 10
        assert run.tries <= 3 * 60


def hammer(
    redis_url: str, namespace: str, ready: threading.Barrier, duration: float, threads: int
) -> list[float]:
    """One worker process: threads acquiring a 5/s slot for ``duration`` seconds, counted from
    when every process has met at ``ready`` (so that an interpreter slow to start under load
    takes no time from the run).

    Each try-until-granted has a ticket of its own, so the threads wait in the shared line; a
    thread that gives up at the end leaves it. Returns the wall time at which each grant came back.
    """
    client = redis.Redis.from_url(redis_url)
    limiter = RateLimiter(client, namespace=namespace, rate=Rate(5, 1.0))
    grants: list[float] = []
    ready.wait(timeout=60)
    stop = time.time() + duration

    def run() -> None:
        calls = 0
        while (left := stop - time.time()) > 0:
            calls += 1
            ticket = f"{os.getpid()}-{threading.get_ident()}-{calls}"
            if limiter.acquire(max_wait=left, ticket=ticket) == 0.0:
                grants.append(time.time())
            else:
                limiter.leave(ticket)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.close()
    return grants


class TestAcrossProcesses:
    PROCESSES = 3
    THREADS = 3
    DURATION = 3.0

    def test_no_window_of_a_period_holds_more_than_count_grants_fleet_wide(
        self, redis_url, namespace
    ):
        """3 processes of 3 threads each, for 3 s at 5/s: at most 5 grants in any 1 s, ~15 in all.

        Grant times are read just after Redis answers, so windows are checked 0.95 s wide to
        allow for that delay.
        """
        context = multiprocessing.get_context("spawn")
        with (
            context.Manager() as manager,
            ProcessPoolExecutor(self.PROCESSES, mp_context=context) as pool,
        ):
            ready = manager.Barrier(self.PROCESSES)
            futures = [
                pool.submit(hammer, redis_url, namespace, ready, self.DURATION, self.THREADS)
                for _ in range(self.PROCESSES)
            ]
            per_process = [future.result(timeout=90) for future in futures]
        grants = [t for times in per_process for t in times]
        assert all(times for times in per_process), "every process was granted calls"
        assert busiest_window(grants, 0.95) <= 5, sorted(grants)
        assert 5 * self.DURATION - 5 <= len(grants) <= 5 * (self.DURATION + 1)


class TestPause:
    def test_a_pause_stops_every_worker(self, make_limiter):
        """After one worker's pause(1.0), another worker's limiter waits about 1 s."""
        make_limiter(Rate(5, 1.0)).pause(1.0)
        wait = make_limiter(Rate(5, 1.0)).try_acquire()
        assert 0.9 < wait <= 1.0

    def test_a_shorter_pause_never_shortens_a_longer_one(self, make_limiter):
        """pause(0.1) during a pause of 1 s leaves the 1 s in force."""
        first, second = make_limiter(Rate(5, 1.0)), make_limiter(Rate(5, 1.0))
        first.pause(1.0)
        assert second.pause(0.1) > 0.9
        assert second.try_acquire() > 0.9

    def test_a_longer_pause_extends_one_in_force(self, make_limiter):
        """pause(5) during a pause of 1 s makes the fleet wait about 5 s."""
        limiter = make_limiter(Rate(5, 1.0))
        limiter.pause(1.0)
        assert limiter.pause(5.0) > 4.9
        assert limiter.try_acquire() > 4.9

    def test_calls_are_granted_again_when_the_pause_ends(self, make_limiter):
        """A pause takes no slots: once over, the full count is free."""
        limiter = make_limiter(Rate(2, 1.0))
        limiter.pause(0.2)
        time.sleep(limiter.try_acquire())
        assert [limiter.try_acquire() for _ in range(2)] == [0.0, 0.0]

    def test_waiters_beyond_the_free_slots_are_told_turns_after_the_pause(self, make_limiter):
        """During a 1 s pause at 2/s, a and b may come back when it ends; c a window later."""
        limiter = make_limiter(Rate(2, 1.0), margin=0)
        limiter.pause(1.0)
        a, b, c = (limiter.try_acquire(ticket) for ticket in "abc")
        assert 0.9 < a <= 1.0
        assert 0.9 < b <= 1.0
        assert c == pytest.approx(2.0, abs=0.1)

    def test_an_unlimited_limiter_honours_a_pause(self, make_limiter):
        """With no rate configured, a 429 still slows the fleet."""
        make_limiter(Rate(5, 1.0)).pause(1.0)
        unlimited = make_limiter(None)
        assert 0.9 < unlimited.try_acquire() <= 1.0
        unlimited.pause(2.0)
        assert make_limiter(Rate(5, 1.0)).try_acquire() > 1.9

    def test_a_pause_of_nothing_changes_nothing(self, make_limiter):
        """pause(0) sets no pause."""
        limiter = make_limiter(None)
        assert limiter.pause(0) == 0.0
        assert limiter.try_acquire() == 0.0


class TestAcquire:
    def test_returns_zero_after_sleeping_the_advised_waits(self, make_limiter):
        """Each sleep is the wait Redis advised; once it has passed the slot is granted."""
        limiter = make_limiter(Rate(1, 0.2), margin=0)
        limiter.try_acquire()
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            time.sleep(seconds)

        assert limiter.acquire(max_wait=1.0, sleep=sleep) == 0.0
        assert len(waits) >= 1
        assert all(0 < w <= 0.2 for w in waits)

    def test_returns_the_wait_when_it_would_exceed_max_wait(self, make_limiter, sleeps):
        """A wait past max_wait is handed back unslept, for the caller to re-queue the job."""
        limiter = make_limiter(Rate(1, 10.0), margin=0)
        limiter.try_acquire()
        wait = limiter.acquire(max_wait=2.0, sleep=sleeps)
        assert 9 < wait <= 10
        assert sleeps.waits == []

    def test_never_sleeps_past_max_wait_in_total(self, make_limiter, sleeps):
        """Acquire stops sleeping before the sum of its sleeps would pass max_wait."""
        limiter = make_limiter(Rate(1, 0.4), margin=0)
        limiter.try_acquire()
        wait = limiter.acquire(max_wait=1.0, sleep=sleeps)
        assert wait > 0
        assert sleeps.waits
        assert sum(sleeps.waits) <= 1.0 < sum(sleeps.waits) + wait

    def test_asks_with_the_ticket_on_every_try(self, make_limiter, redis_client, namespace):
        """The ticket queues on the first try and is granted on a later one, leaving the line."""
        limiter = make_limiter(Rate(1, 0.2), margin=0)
        limiter.try_acquire()
        assert limiter.acquire(max_wait=1.0, ticket="a") == 0.0
        assert redis_client.exists(f"{namespace}:ratelimit:line") == 0

    def test_a_wait_handed_back_keeps_the_tickets_place(self, make_limiter, sleeps):
        """A job re-queued by acquire stays ahead of those that queued after it."""
        limiter = make_limiter(Rate(1, 10.0), margin=0)
        limiter.try_acquire()
        wait = limiter.acquire(max_wait=1.0, sleep=sleeps, ticket="a")
        assert limiter.try_acquire("b") > wait
        assert limiter.acquire(max_wait=1.0, sleep=sleeps, ticket="a") <= wait
