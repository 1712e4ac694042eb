"""The event log: every event, in a capped Redis stream, for ``recq events [--follow]``.

The topic exchange delivers only to queues bound before an event is published; the log keeps
the most recent :data:`MAX_EVENTS` so that an operator can read what happened after the fact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import redis

from worker.jobs import STOP_SUFFIX, is_child_stop

MAX_EVENTS = 10_000
EVENT_FIELD = "event"
"""The stream entry's one field, holding the event as JSON."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to show: by type pattern and by job.

    ``types`` are shell-style patterns (``recording.*``, ``*.failed``); an event matches when
    any does (none given: every type). ``jobs`` keeps the events about those jobs (none given:
    every job): each job's own, its stop job's (``<id>:stop``), and for a batch its children's
    and their stop jobs'.
    """

    types: Sequence[str] = ()
    jobs: Sequence[str] = ()

    def __call__(self, event: dict[str, Any]) -> bool:
        if self.types and not any(fnmatchcase(event.get("type", ""), t) for t in self.types):
            return False
        if not self.jobs:
            return True
        subject = event.get("subject") or ""
        batch = (event.get("data") or {}).get("batchId")
        return any(_about(job, subject, batch) for job in self.jobs)


def _about(job: str, subject: str, batch: str | None) -> bool:
    """Whether an event about ``subject`` (a child of ``batch``) is about ``job``: the job, its
    stop, a child of the batch it is, or such a child's stop."""
    return job in (subject, batch) or subject == job + STOP_SUFFIX or is_child_stop(subject, job)


class EventLog:
    """Appends events to, and reads them from, ``<namespace>:events``."""

    def __init__(self, client: redis.Redis, *, namespace: str = "recq") -> None:
        # redis-py's stream types are loose; the log is read through this one untyped handle.
        self._redis: Any = client
        self.key = f"{namespace}:events"

    def publish(self, event: dict[str, Any]) -> None:
        payload = json.dumps(event, separators=(",", ":"))
        self._redis.xadd(self.key, {EVENT_FIELD: payload}, maxlen=MAX_EVENTS, approximate=True)

    def read(self, *, follow: bool = False, block_ms: int = 1000) -> Iterator[dict[str, Any]]:
        """Every logged event, oldest first; with ``follow``, then each new one as it comes."""
        if not follow:
            for _entry_id, fields in self._redis.xrange(self.key):
                yield _decode(fields)
            return
        last: Any = "0-0"
        while True:
            batches = self._redis.xread({self.key: last}, count=500, block=block_ms)
            for entry_id, fields in batches[0][1] if batches else []:
                last = entry_id
                yield _decode(fields)


def _decode(fields: dict[Any, Any]) -> dict[str, Any]:
    raw = fields.get(EVENT_FIELD.encode()) or fields[EVENT_FIELD]
    event: dict[str, Any] = json.loads(raw)
    return event
