"""Batches: a bulk job's progress, counted in Redis, not by a Celery chord.

Chords on the Redis result backend have a long record of callbacks that never fire (celery#1401,
#6029, #8211, #9674): recq counts instead, the way Sidekiq's batches do. Layout for namespace
``recq`` and batch ``B``:

- ``recq:batch:B`` a hash: ``total``, ``succeeded``, ``failed``, ``published`` (how many children
  the fan-out has published, in order, so a redelivered batch resumes instead of starting over),
  ``stalls`` (how many deliveries of the batch began since the fan-out last published a chunk: a
  fan-out that kills its worker at the same chunk every time fails, instead of looping),
  ``completedAt`` once every child ended, and ``job``, the bulk job itself (its children are
  derived from it, see :func:`worker.jobs.child_jobs`);
- ``recq:batch:B:ended`` the set of children counted so far, and ``recq:batch:B:failed`` those
  of them counted failed.

A child that ends is counted once (a set membership guards the counters against a duplicate
report), and the child whose count completes the batch learns it, atomically, exactly once
(a failed child replayed to success later completes it again, below).
Cancelled children count as failed. A failed child replayed (``recq dead replay``) that then
succeeds moves from the failed count to the succeeded one; if the batch had completed, it is
completed again with the new counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis

from worker.jobs import Job, child_jobs
from worker.scripts import KEEP, KEEP_FUNCTION
from worker.state import JobStore, State, ttl_after

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'succeeded', 0, 'failed', 0, 'published', 0,
           'stalls', 1, 'job', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: the batch's hash. ARGV: '1' for the job's first delivery since it was queued afresh (a
# replay), whose count of stalled deliveries starts over. Nil when there is no such batch (its
# fan-out has not begun); else its progress, and the deliveries begun since the fan-out last
# published a chunk, this one included.
_RESUME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'stalls', 0)
end
redis.call('HINCRBY', KEYS[1], 'stalls', 1)
return redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
"""

# KEYS: the batch's hash, its counted children, those of them counted failed. ARGV: the child,
# '1' if it succeeded, now, ttl. Returns a :class:`Counted`: 0 (already counted as that), 1
# (counted), 2 (the last child: the batch completes), 3 (a completed batch's counts changed).
# Each count keeps the batch's keys for a TTL more: a batch may outlast RECQ_STATE_TTL. Never
# for less than they were kept: a completed batch is kept until a TTL after its stopAt.
_ENDED = (
    KEEP_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
keep(KEYS[1], ARGV[4])
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  -- Counted before. Only a failed child replayed to success changes the counts.
  if ARGV[2] == '0' or redis.call('SREM', KEYS[3], ARGV[1]) == 0 then return 0 end
  redis.call('HINCRBY', KEYS[1], 'failed', -1)
  redis.call('HINCRBY', KEYS[1], 'succeeded', 1)
  if redis.call('HEXISTS', KEYS[1], 'completedAt') == 1 then return 3 end
  return 1
end
keep(KEYS[2], ARGV[4])
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'succeeded', 1)
else
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
  redis.call('SADD', KEYS[3], ARGV[1])
  keep(KEYS[3], ARGV[4])
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if redis.call('SCARD', KEYS[2]) >= total
    and redis.call('HSETNX', KEYS[1], 'completedAt', ARGV[3]) == 1 then
  return 2
end
return 1
"""
)


class Counted(IntEnum):
    """What counting a child's end did to its batch (:meth:`Batches.child_ended`)."""

    ALREADY = 0
    """Counted before, as that: nothing changed."""
    COUNTED = 1
    COMPLETED = 2
    """The last child: the batch is complete, and to be recorded so, once."""
    CHANGED = 3
    """A completed batch's counts changed (a failed child replayed to success): to be
    recorded complete again, with the new counts."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a batch is: its counts, and how far its fan-out got."""

    total: int
    succeeded: int
    failed: int
    published: int
    completed: bool
    stalls: int = 0
    """Deliveries of the batch begun since its fan-out last published a chunk, this one
    included (as :meth:`Batches.resume` counts them; 0 elsewhere)."""

    @property
    def fanned_out(self) -> bool:
        """Whether every child has been published."""
        return self.published >= self.total

    @property
    def pending(self) -> int:
        return self.total - self.succeeded - self.failed

    def counts(self) -> dict[str, int]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.pending,
        }


class Batches:
    """Creates batches and counts their children's ends."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        ttl: int = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._namespace = namespace
        self._ttl = ttl
        self._clock = clock
        self._create: Any = client.register_script(_CREATE)
        self._ended: Any = client.register_script(_ENDED)
        self._keep: Any = client.register_script(KEEP)
        self._resume: Any = client.register_script(_RESUME)

    def key(self, batch_id: str) -> str:
        """The batch's hash, which exists from the moment its fan-out begins."""
        return f"{self._namespace}:batch:{batch_id}"

    def create(self, batch_id: str, job: Mapping[str, Any], total: int) -> bool:
        """Record a batch of ``total`` children, once; False if it already exists."""
        args = [total, json.dumps(job), self._ttl]
        return bool(self._create(keys=[self.key(batch_id)], args=args))

    def advance(self, batch_id: str, published: int) -> None:
        """Note that the first ``published`` children have been published: the fan-out moved
        on, and no delivery has stalled since."""
        self._redis.hset(self.key(batch_id), mapping={"published": published, "stalls": 0})

    def resume(self, batch_id: str, *, afresh: bool) -> Progress | None:
        """Count a delivery of a batch whose fan-out began, and return its progress with the
        deliveries begun since the fan-out last moved on (:attr:`Progress.stalls`); None when
        there is no such batch (yet). ``afresh``: the job's first delivery since a replay queued
        it again, which starts that count over."""
        names = [*_PROGRESS, "stalls"]
        fields = self._resume(keys=[self.key(batch_id)], args=["1" if afresh else "0", *names])
        return None if fields is None else _progress(fields)

    def child_ended(self, batch_id: str, child_id: str, *, succeeded: bool) -> Counted:
        """Count a child's end (once, or again when a failed child replayed succeeds), and say
        whether the batch is to be recorded complete (:class:`Counted`)."""
        args = [child_id, "1" if succeeded else "0", self._clock(), self._ttl]
        return Counted(int(self._ended(keys=self._keys(batch_id), args=args)))

    def keep(self, batch_id: str, until: float) -> None:
        """Keep the batch until a TTL after ``until`` (an epoch: its children's stops), or
        longer if it was to be kept longer: a cancel or a move of the batch acts on them."""
        ttl = ttl_after(until, ttl=self._ttl, now=self._clock())
        self._keep(keys=self._keys(batch_id), args=[ttl])

    def _keys(self, batch_id: str) -> list[str]:
        """The batch's hash, its counted children, and those of them counted failed."""
        key = self.key(batch_id)
        return [key, f"{key}:ended", f"{key}:failed"]

    def progress(self, batch_id: str) -> Progress | None:
        """The batch's progress, or None when there is no such batch (yet)."""
        return _progress(self._redis.hmget(self.key(batch_id), _PROGRESS))

    def job(self, batch_id: str) -> dict[str, Any] | None:
        """The bulk job the batch was made from."""
        raw = self._redis.hget(self.key(batch_id), "job")
        return None if raw is None else dict(json.loads(raw))


_PROGRESS = ["total", "succeeded", "failed", "published", "completedAt"]


def _progress(fields: Sequence[Any]) -> Progress | None:
    """A batch's progress from its hash's fields (:data:`_PROGRESS`, then maybe ``stalls``)."""
    total, succeeded, failed, published, completed, *stalls = fields
    if total is None:
        return None
    return Progress(
        total=int(total),
        succeeded=int(succeeded or 0),
        failed=int(failed or 0),
        published=int(published or 0),
        completed=completed is not None,
        stalls=int(stalls[0]) if stalls else 0,
    )


def child_outcomes(store: JobStore, batch: Job) -> list[dict[str, Any]]:
    """Each child of ``batch`` with its state (and error), in the batch's order."""
    children = child_jobs(batch)
    outcomes = []
    for child, (state, error) in zip(children, store.states([c.id for c in children]), strict=True):
        outcome: dict[str, Any] = {
            "jobId": child.id,
            "participantId": child.body["participantId"],
            "kind": child.body["kind"],
            "state": (state or State.QUEUED).value,
        }
        if error is not None:
            outcome["error"] = error
        outcomes.append(outcome)
    return outcomes
