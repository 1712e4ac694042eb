"""The one retry policy for calls to VideoSDK, declared as tenacity values.

Only :class:`~worker.errors.UpstreamUnavailable` is retried (connection errors, timeouts, 429,
5xx); every other error passes straight through. Attempts are bounded in number and in total
time; waits grow exponentially with jitter, and a ``Retry-After`` from VideoSDK is honoured: the
next attempt is never earlier than the service asked. When honouring it would overrun the time
budget, the policy stops and the error surfaces (the caller decides what a longer outage means).
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


class stop_when_retry_after_exceeds_budget(tenacity.stop.stop_base):  # noqa: N801
    """Stop when the service asks for a wait longer than what is left of the time budget."""

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        asked = _retry_after(retry_state)
        if asked is None:
            return False
        return (retry_state.seconds_since_start or 0.0) + asked > self.budget


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one VideoSDK call before giving the error back to the caller."""

    attempts: int = 5
    window: float = 60.0
    initial_wait: float = 0.5
    max_wait: float = 8.0
    jitter: float = 0.25
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def retrying(self, before: Callable[[RetryCallState], None] | None = None) -> tenacity.Retrying:
        """A fresh :class:`tenacity.Retrying` for one call; ``before`` sees each attempt."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(UpstreamUnavailable),
            stop=(
                tenacity.stop_after_attempt(self.attempts)
                | tenacity.stop_after_delay(self.window)
                | stop_when_retry_after_exceeds_budget(self.window)
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
        self, fn: Callable[[], _T], before: Callable[[RetryCallState], None] | None = None
    ) -> _T:
        """Run ``fn`` under this policy and return its result, or raise its last error."""
        return self.retrying(before)(fn)
