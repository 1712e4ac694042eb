"""The one retry policy for calls to VideoSDK, declared as tenacity values.

Only :class:`~worker.errors.UpstreamUnavailable` is retried (connection errors, timeouts, 429,
5xx); every other error passes straight through. Attempts are bounded in number and in time: no
attempt starts after the deadline (the window from the first attempt, or a deadline the caller
shares between several calls of one delivery), so a delivery lasts at most the window plus one
call, which is what the claim's lease and the visibility timeout are sized for. Waits grow
exponentially with jitter, and a ``Retry-After`` from VideoSDK is honoured: the next attempt is
never earlier than the service asked. When a wait would end at or past the deadline, the policy
stops and the error surfaces (the caller decides what a longer outage means).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity
from tenacity import RetryCallState

from worker.errors import UpstreamUnavailable

_T = TypeVar("_T")


def _retry_after(state: RetryCallState) -> float | None:
    outcome = state.outcome
    if outcome is None or not outcome.failed:
        return None
    error = outcome.exception()
    return error.retry_after if isinstance(error, UpstreamUnavailable) else None


class wait_retry_after(tenacity.wait.wait_base):  # noqa: N801 - named like tenacity's waits
    """Wait what ``Retry-After`` says when it was given, else what ``fallback`` computes."""

    def __init__(self, fallback: tenacity.wait.wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        asked = _retry_after(retry_state)
        computed = self.fallback(retry_state)
        return max(asked, computed) if asked is not None else computed


class stop_before_deadline(tenacity.stop.stop_base):  # noqa: N801 - named like tenacity's stops
    """Stop when the next attempt, after its wait (``Retry-After`` included), would start at or
    after ``deadline`` on ``clock``."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep >= self.deadline


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one VideoSDK call before giving the error back to the caller."""

    attempts: int = 5
    window: float = 60.0
    initial_wait: float = 0.5
    max_wait: float = 8.0
    jitter: float = 0.25
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def deadline(self) -> float:
        """The deadline of calls that begin now: the window from now, on :attr:`clock`."""
        return self.clock() + self.window

    def retrying(
        self,
        before: Callable[[RetryCallState], None] | None = None,
        *,
        deadline: float | None = None,
    ) -> tenacity.Retrying:
        """A fresh :class:`tenacity.Retrying` for one call; ``before`` sees each attempt. No
        attempt after the first starts at or after ``deadline`` (default: the window from
        now)."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(UpstreamUnavailable),
            stop=(
                tenacity.stop_after_attempt(self.attempts)
                | stop_before_deadline(
                    self.deadline() if deadline is None else deadline, self.clock
                )
            ),
            wait=wait_retry_after(
                tenacity.wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
                + tenacity.wait_random(0, self.jitter)
            ),
            sleep=self.sleep,
            before=before or (lambda _state: None),
            reraise=True,
        )

    def call(
        self,
        fn: Callable[[], _T],
        before: Callable[[RetryCallState], None] | None = None,
        *,
        deadline: float | None = None,
    ) -> _T:
        """Run ``fn`` under this policy and return its result, or raise its last error."""
        return self.retrying(before, deadline=deadline)(fn)
