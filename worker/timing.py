"""When a job is due, and until when it may still start: its ``startAt``, ``stopAt`` and
``startDeadline`` read as epoch seconds.

The fields are RFC 3339 date-times with a time zone (the schema guarantees the shape). A start
job is due at ``startAt`` (now when absent). It may start until its deadline: ``startDeadline``
when given, else ``startAt`` plus the grace window (``RECQ_START_GRACE``, 15 minutes by default),
and never once ``stopAt`` has come. A stop job is due at its ``stopAt`` and has no deadline: a
recording left running is stopped late rather than never.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

DEFAULT_GRACE = 15 * 60.0
"""How long a scheduled start may wait for its meeting when the job names no deadline."""

EARLY_TOLERANCE = 1.0
"""A job delivered less than this before it is due runs at once (clocks differ slightly)."""


def parse_time(text: str) -> float:
    """Epoch seconds of an RFC 3339 date-time with a time zone (digits past microseconds drop)."""
    moment = datetime.fromisoformat(text.upper())  # RFC 3339 allows a lower-case 't' and 'z'
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.timestamp()


def optional_time(job: Mapping[str, Any], field: str) -> float | None:
    value = job.get(field)
    return parse_time(value) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Timing:
    """A valid job's times, in epoch seconds."""

    due: float | None = None
    """When the job's call is to be made; None for now."""
    start_at: float | None = None
    stop_at: float | None = None
    deadline: float | None = None
    """The last moment a start may still be made; None for stops and unscheduled starts."""

    @classmethod
    def of_start(cls, job: Mapping[str, Any], *, grace: float = DEFAULT_GRACE) -> Timing:
        start_at, stop_at = optional_time(job, "startAt"), optional_time(job, "stopAt")
        deadline = optional_time(job, "startDeadline")
        if deadline is None and start_at is not None:
            deadline = start_at + grace
        if stop_at is not None:
            deadline = stop_at if deadline is None else min(deadline, stop_at)
        return cls(due=start_at, start_at=start_at, stop_at=stop_at, deadline=deadline)

    @classmethod
    def of_stop(cls, job: Mapping[str, Any]) -> Timing:
        stop_at = optional_time(job, "stopAt")
        return cls(due=stop_at, stop_at=stop_at)

    def early(self, now: float) -> bool:
        """Whether ``now`` is before the job is due by more than :data:`EARLY_TOLERANCE`: then
        it is held (or, delivered, sent back) until it is due, else it runs at once."""
        return self.due is not None and self.due - now > EARLY_TOLERANCE

    def past_deadline(self, now: float) -> bool:
        """Whether a start is too late at ``now`` (never for a job with no deadline)."""
        return self.deadline is not None and now > self.deadline

    @property
    def scheduled(self) -> bool:
        """Whether the job named a start time (and so waits for its meeting to be live)."""
        return self.start_at is not None
