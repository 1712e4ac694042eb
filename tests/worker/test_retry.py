"""The retry policy: transient errors only, bounded, jittered, and Retry-After honoured."""

from __future__ import annotations

import pytest

from worker.errors import Answer, UpstreamRejected, UpstreamUnavailable
from worker.retry import RetryPolicy


class Flaky:
    """Fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def unavailable(status: int = 503, retry_after: float | None = None) -> UpstreamUnavailable:
    answer = Answer(status=status, body="busy", retry_after=retry_after)
    return UpstreamUnavailable("busy", endpoint="/v2/recordings/start", answer=answer)


class Time:
    """A clock that only the policy's waits move: each call's start can be read off it."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


class TestRetryPolicy:
    def test_no_attempt_starts_after_the_window(self):
        """A wait that would end at or past the window ends the retries instead: the delivery
        lasts at most the window and one call, as the claim's lease is sized."""
        time = Time()
        starts: list[float] = []

        def down() -> str:
            starts.append(time.now)
            raise unavailable()

        policy = RetryPolicy(
            attempts=100, window=10, initial_wait=4, max_wait=4, jitter=0,
            sleep=time.sleep, clock=time,
        )  # fmt: skip
        with pytest.raises(UpstreamUnavailable):
            policy.call(down)
        assert starts == [0, 4, 8]

    def test_calls_of_one_delivery_can_share_a_deadline(self):
        """A scheduled start's meeting check and its start share one window: the second call
        makes its first attempt, but retries no later than the first one's deadline."""
        time = Time()
        policy = RetryPolicy(
            attempts=100, window=10, initial_wait=3, max_wait=3, jitter=0,
            sleep=time.sleep, clock=time,
        )  # fmt: skip
        deadline = policy.deadline()
        assert policy.call(Flaky(unavailable(), unavailable()), deadline=deadline) == "ok"
        assert time.now == 6
        second = Flaky(unavailable(), unavailable(), unavailable())
        with pytest.raises(UpstreamUnavailable):
            policy.call(second, deadline=deadline)
        assert (second.calls, time.now) == (2, 9)

    def test_a_transient_error_is_retried_until_success(self, sleeps):
        """Two 503s then success: three calls, two waits."""
        flaky = Flaky(unavailable(), unavailable())
        assert RetryPolicy(sleep=sleeps).call(flaky) == "ok"
        assert flaky.calls == 3
        assert len(sleeps.waits) == 2

    def test_waits_grow_exponentially_with_bounded_jitter(self, sleeps):
        """Waits start at initial_wait, double, and carry at most `jitter` seconds extra."""
        flaky = Flaky(*(unavailable() for _ in range(4)))
        RetryPolicy(attempts=5, initial_wait=0.5, max_wait=8, jitter=0.25, sleep=sleeps).call(flaky)
        for wait, base in zip(sleeps.waits, [0.5, 1.0, 2.0, 4.0], strict=True):
            assert base <= wait <= base + 0.25

    def test_a_permanent_error_is_never_retried(self, sleeps):
        """A 4xx rejection surfaces after one call."""
        rejected = UpstreamRejected("no", endpoint="/x", answer=Answer(status=400, body="no"))
        flaky = Flaky(rejected)
        with pytest.raises(UpstreamRejected):
            RetryPolicy(sleep=sleeps).call(flaky)
        assert flaky.calls == 1
        assert sleeps.waits == []

    def test_attempts_are_bounded(self, sleeps):
        """After `attempts` calls the last transient error is raised."""
        flaky = Flaky(*(unavailable() for _ in range(10)))
        with pytest.raises(UpstreamUnavailable):
            RetryPolicy(attempts=3, sleep=sleeps).call(flaky)
        assert flaky.calls == 3

    def test_a_429_is_retried_after_its_retry_after_delay(self, sleeps):
        """Retry-After: 7 makes the next attempt wait at least 7 seconds."""
        flaky = Flaky(unavailable(429, retry_after=7))
        RetryPolicy(sleep=sleeps).call(flaky)
        assert 7 <= sleeps.waits[0] <= 7.25

    def test_a_retry_after_beyond_the_time_budget_stops_retrying(self, sleeps):
        """Asked to wait longer than the window allows, the policy gives the error back."""
        flaky = Flaky(unavailable(429, retry_after=120))
        with pytest.raises(UpstreamUnavailable):
            RetryPolicy(window=60, sleep=sleeps).call(flaky)
        assert flaky.calls == 1
        assert sleeps.waits == []

    def test_other_exceptions_pass_straight_through(self, sleeps):
        """A programming error is not an outage and is not retried."""
        flaky = Flaky(KeyError("bug"))
        with pytest.raises(KeyError):
            RetryPolicy(sleep=sleeps).call(flaky)
        assert flaky.calls == 1
