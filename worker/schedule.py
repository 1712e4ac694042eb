"""A durable schedule of future deliveries in Redis, instead of Celery ETA/countdown.

ETA messages on the Redis broker are held in a worker's memory, unacknowledged, and are handed to
another worker once the visibility timeout passes, so a long countdown runs twice (celery#2481,
#7009, #9882; kombu#337). recq keeps what must happen later here instead, and every worker runs a
small dispatcher (:mod:`worker.dispatcher`) that publishes what is due.

Layout for namespace ``recq``:

- ``recq:schedule`` a sorted set of job ids scored by the time they are due;
- ``recq:schedule:inflight`` job ids a dispatcher has taken, scored by when its lease ends;
- ``recq:schedule:deliveries`` a hash of job id to the delivery (task name and job).

Taking due deliveries moves them atomically from the schedule to the in-flight set, so one
dispatcher gets each however many run. Once published, a delivery is marked done; if its
dispatcher died first, the lease runs out and it goes back on the schedule. A delivery can thus be
published twice in a crash, never lost: the job's claim makes the second one harmless.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from worker.scripts import ScriptCall, as_text
from worker.state import WRITE_FUNCTION

_TAKE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[3], id)
end
return ids
"""

_DONE = """
redis.call('ZREM', KEYS[2], ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HDEL', KEYS[3], ARGV[1])
end
"""

_RECOVER = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], ARGV[1], id)
end
return #ids
"""

_CANCEL = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return removed
"""

# Replace a delivery still waiting on the schedule, if it is unchanged since it was read; with
# the job's hash and history as KEYS[4..5] and a state write's ARGV after the first four, record
# the job first, in the same step, unless it has ended (then nothing changes).
_REPLACE = (
    WRITE_FUNCTION
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
if #KEYS > 3 and write_state({KEYS[4], KEYS[5]}, {unpack(ARGV, 5)}) then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job to publish at a given time."""

    job_id: str
    task: str
    job: dict[str, Any]
    due: float

    def encoded(self) -> str:
        """The delivery as the schedule keeps it, in its deliveries hash under its job id."""
        return json.dumps({"task": self.task, "job": self.job, "due": self.due})


class Schedule:
    """Adds, takes and cancels future deliveries."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        lease: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._keys = [
            f"{namespace}:schedule",
            f"{namespace}:schedule:inflight",
            f"{namespace}:schedule:deliveries",
        ]
        self._lease = lease
        self._clock = clock
        self._take: Any = client.register_script(_TAKE)
        self._done: Any = client.register_script(_DONE)
        self._recover: Any = client.register_script(_RECOVER)
        self._cancel: Any = client.register_script(_CANCEL)
        self._replace: Any = client.register_script(_REPLACE)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    @property
    def keys(self) -> tuple[str, str, str]:
        """The schedule's keys: the pending set, the in-flight set and the deliveries hash."""
        return self._keys[0], self._keys[1], self._keys[2]

    def size(self) -> int:
        """How many deliveries wait on the schedule (taken but not yet published included)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(self._keys[0])
        pipe.zcard(self._keys[1])
        return sum(int(n) for n in pipe.execute())

    def add(self, delivery: Delivery, *, within: Pipeline | None = None) -> None:
        """Schedule ``delivery`` (replacing any earlier one of the same job); ``within`` a
        transaction of the caller's, as part of it."""
        pipe = within if within is not None else self._redis.pipeline(transaction=True)
        pipe.hset(self._keys[2], delivery.job_id, delivery.encoded())
        pipe.zadd(self._keys[0], {delivery.job_id: delivery.due})
        if within is None:
            pipe.execute()

    def get(self, job_id: str) -> Delivery | None:
        """The job's delivery while it waits on the schedule (not once a dispatcher took it)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zscore(self._keys[0], job_id)
        pipe.hget(self._keys[2], job_id)
        score, payload = pipe.execute()
        return None if score is None or payload is None else _delivery(job_id, payload)

    def replace(self, old: Delivery, new: Delivery, *, record: ScriptCall | None = None) -> bool:
        """Swap ``old`` for ``new`` (same job) if it still waits unchanged; True if done.

        ``record``, the job's state write (:meth:`worker.state.JobStore.write_call`, with
        ``unless_ended``), is made in the same step, before the new delivery can be taken: no
        delivery of it then runs before the record says what the move did. A job that ended
        is neither recorded nor moved (False).
        """
        keys: list[str] = list(self._keys)
        args: list[str | bytes | int | float] = [old.job_id, old.encoded(), new.encoded(), new.due]
        if record is not None:
            if len(record.keys) != 2:  # noqa: PLR2004 - the job's hash and history
                raise ValueError("a schedule's replace records a plain state write only")
            keys += record.keys
            args += record.args
        return bool(self._replace(keys=keys, args=args))

    def cancel(self, job_id: str) -> bool:
        """Remove a pending delivery; True if there was one."""
        return bool(self._cancel(keys=self._keys, args=[job_id]))

    def take_due(self, limit: int = 100) -> list[Delivery]:
        """Take the deliveries due now, leased to the caller until published or expired."""
        now = self._clock()
        ids = self._take(keys=self._keys, args=[now, limit, now + self._lease])
        if not ids:
            return []
        payloads = self._redis.hmget(self._keys[2], ids)
        taken = []
        for job_id, payload in zip(ids, payloads, strict=True):
            if payload is None:  # cancelled while being taken: nothing to publish
                self.done(as_text(job_id))
            else:
                taken.append(_delivery(job_id, payload))
        return taken

    def done(self, job_id: str) -> None:
        """A taken delivery was published: forget it (unless it was scheduled again)."""
        self._done(keys=self._keys, args=[job_id])

    def recover(self) -> int:
        """Put back deliveries whose dispatcher's lease ran out; return how many."""
        return int(self._recover(keys=self._keys, args=[self._clock()]))

    def pending(self) -> list[Delivery]:
        """Every scheduled delivery, soonest first."""
        entries: list[bytes] = self._redis.zrange(self._keys[0], 0, -1)  # type: ignore[assignment]
        payloads = self._redis.hmget(self._keys[2], entries) if entries else []
        return [
            _delivery(job_id, payload)
            for job_id, payload in zip(entries, payloads, strict=True)
            if payload is not None
        ]


def _delivery(job_id: bytes | str, payload: bytes | str) -> Delivery:
    data = json.loads(payload)
    return Delivery(as_text(job_id), task=data["task"], job=data["job"], due=float(data["due"]))
