"""One time for the whole fleet: Redis's.

A job's times are absolute (its ``startAt``, ``stopAt``, a retry's due time), and whichever
process holds the job compares them with "now": the producer holding it, the dispatcher taking
it off the schedule, the worker checking it is due and not past its deadline. On each host's
own clock, a worker N seconds off would start scheduled recordings N seconds early or late, and a
worker behind would hand back a job the dispatcher of another had just found due. They all read
:class:`RedisClock` instead: this host's monotonic clock, set to Redis's ``TIME`` (read once a
minute), so that every process agrees with Redis, and with the rate limiter, which keeps Redis's
time inside its script.

What stays on the host's clock: the tokens a worker signs (VideoSDK checks them against its own
clock), the health file's beat, and kombu's visibility timeout for messages a dead worker held
(an hour by default; its restore sweep compares with each host's clock, so a host some seconds
off restores such a message some seconds early or late).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

logger = logging.getLogger(__name__)

RESYNC = 60.0
"""How often (seconds) the clock reads Redis's time again: a monotonic clock drifts by well under
a millisecond a minute."""
RETRY = 5.0
"""How soon (seconds) it tries again after Redis could not be read."""
SKEW_WARNING = 1.0
"""A host clock more than this off Redis's is logged (once, and again when it moves by more)."""


class RedisClock:
    """Epoch seconds on Redis's clock, read without a round trip (callable like ``time.time``).

    Redis's ``TIME`` is read with this host's clock on either side, and taken to be the time at
    the midpoint (so it is off by at most half the round trip). Until Redis has answered once,
    the host's own clock stands in; when it cannot be read later, the last reading stands.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        host: Callable[[], float] = time.time,
        every: float = RESYNC,
    ) -> None:
        self._redis = client
        self._monotonic = monotonic
        self._host = host
        self._every = every
        self._lock = threading.Lock()
        self._base: float | None = None
        """Redis's epoch time minus this host's monotonic time, as last read."""
        self._next_read = float("-inf")
        self._skew_told = 0.0

    def __call__(self) -> float:
        if self._monotonic() >= self._next_read:
            self._read()
        base = self._base
        return self._host() if base is None else self._monotonic() + base

    @property
    def skew(self) -> float | None:
        """How far this host's clock is ahead of Redis's, in seconds (behind if negative);
        None until Redis has answered."""
        base = self._base
        return None if base is None else self._host() - (self._monotonic() + base)

    def _read(self) -> None:
        # One thread reads; the others go on with the last reading rather than wait for it
        # (a Redis that does not answer holds the reader for its timeouts).
        if not self._lock.acquire(blocking=self._base is None):
            return
        try:
            if self._monotonic() < self._next_read:
                return  # another thread read it meanwhile
            before = self._monotonic()
            try:
                seconds, microseconds = self._redis.time()
            except redis.RedisError as exc:
                self._next_read = self._monotonic() + RETRY
                logger.warning("cannot read Redis's time (%s): %s", type(exc).__name__, exc)
                return
            after = self._monotonic()
            self._base = seconds + microseconds / 1e6 - (before + after) / 2
            self._next_read = after + self._every
            self._tell_skew()
        finally:
            self._lock.release()

    def _tell_skew(self) -> None:
        skew = self.skew or 0.0
        if abs(skew) > SKEW_WARNING and abs(skew - self._skew_told) > SKEW_WARNING:
            ahead = "ahead of" if skew > 0 else "behind"
            logger.warning(
                "this host's clock is %.1f s %s Redis's: recq keeps Redis's time for "
                "schedules and deadlines; set the host's clock right (NTP) all the same",
                abs(skew),
                ahead,
            )
            self._skew_told = skew
