"""Job state in Redis: each job's current state and a short history, with a TTL.

Layout, for namespace ``recq`` and job ``J``:

- ``recq:job:J`` a hash: ``id``, ``kind``, ``state``, ``attempts``, ``createdAt``,
  ``updatedAt``, and JSON-encoded ``target``, ``metadata``, ``error``, ``reconciled``;
- ``recq:job:J:history`` a list of the last :data:`HISTORY_LENGTH` transitions.

Each transition is one pipelined round trip. Both keys expire ``ttl`` seconds after the last one,
so ``recq status`` can answer long after the job's events are gone, and nothing grows forever.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis

from worker.errors import ErrorInfo, Target
from worker.redact import redact_values
from worker.scripts import KEEP, ScriptCall, as_text, run_together

HISTORY_LENGTH = 20


class State(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    """Accepted, on the broker, waiting for a worker."""
    SCHEDULED = "scheduled"
    """On the schedule until its ``startAt`` (or a stop job's ``stopAt``)."""
    WAITING = "waiting"
    """Due, but its room has no live session yet: checked again until the deadline."""
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    """Cancelled before it ran; it never will."""
    PARTIALLY_FAILED = "partially_failed"
    """A batch whose children ended, some succeeded and some failed."""

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.PARTIALLY_FAILED}
)

# Write one transition, in one call: the hash's fields (createdAt only the first time; a stale
# error removed unless this one has its own), the history entry, both expiries. With
# ARGV[5] = '1' a job that already ended is left alone and its state returned (enqueueing).
# With a token in ARGV[7], the claim KEYS[3] is released in the same step if it still holds
# that token: a delivery's last write hands the job on, so a replay or a redelivery that sees
# the new state never finds the claim still taken.
# KEYS: the job's hash and history (and the claim). ARGV: now, the history entry, ttl, history
# length, unless-ended flag, clear-error flag, claim token or '', then the fields as name, value...
# A job's turn under the rate limit (slotAt) and the time a re-queued job retries (retryAt) are
# kept only by the write that set them: any later write means the job has moved on.
# The counts of attempts made and of those proven unapplied only ever rise: a writer holding an
# older count (a reschedule racing a delivery, a message failed before its claim) keeps the
# record's, so no write can make an attempt that may have started a recording look unmade.
# It is a Lua function so that the claim's script can make the same write (worker.claims).
TERMINAL_LUA = (
    "local terminal = {"
    + ", ".join(f"['{s.value}'] = true" for s in sorted(TERMINAL_STATES))
    + "}\n"
)
"""The ended states as a Lua table, ``terminal[state]``, for every script that checks one."""
WRITE_FUNCTION = (
    TERMINAL_LUA
    + """local function write_state(KEYS, ARGV)
  if ARGV[5] == '1' then
    local current = redis.call('HGET', KEYS[1], 'state')
    if current and terminal[current] then
      return current
    end
  end
  redis.call('HSETNX', KEYS[1], 'createdAt', ARGV[1])
  local fields = {unpack(ARGV, 8)}
  local passing = {slotAt = true, retryAt = true}
  for i = 1, #fields - 1, 2 do
    passing[fields[i]] = nil
    if fields[i] == 'attempts' or fields[i] == 'unapplied' then
      local held = tonumber(redis.call('HGET', KEYS[1], fields[i]) or '0')
      if tonumber(fields[i + 1]) < held then
        fields[i + 1] = held
      end
    end
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  if ARGV[6] == '1' then
    redis.call('HDEL', KEYS[1], 'error')
  end
  local gone = {}
  for name in pairs(passing) do
    gone[#gone + 1] = name
  end
  if #gone > 0 then
    redis.call('HDEL', KEYS[1], unpack(gone))
  end
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  if ARGV[7] ~= '' and redis.call('GET', KEYS[3]) == ARGV[7] then
    redis.call('DEL', KEYS[3])
  end
  return false
end
"""
)
_WRITE = WRITE_FUNCTION + "return write_state(KEYS, ARGV)\n"
# The same write, then, unless the job had already ended, its message LPUSHed onto the queue's
# list KEYS[3]: the message is the last argument. A job is then never recorded queued without
# its message on the queue, and the two take one round trip.
_WRITE_AND_PUSH = (
    WRITE_FUNCTION
    + """local message = table.remove(ARGV)
local ended = write_state({KEYS[1], KEYS[2]}, ARGV)
if not ended then
  redis.call('LPUSH', KEYS[3], message)
end
return ended
"""
)

# Delete the records of KEYS (each job's hash, then its history) that are still only what one
# enqueue wrote: queued, with one history entry. Returns how many were deleted.
_WITHDRAW = """
local withdrawn = 0
for i = 1, #KEYS, 2 do
  if redis.call('HGET', KEYS[i], 'state') == 'queued' and redis.call('LLEN', KEYS[i + 1]) == 1 then
    redis.call('DEL', KEYS[i], KEYS[i + 1])
    withdrawn = withdrawn + 1
  end
end
return withdrawn
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_iso(epoch: float) -> str:
    return iso(datetime.fromtimestamp(epoch, UTC))


Extra = Mapping[str, float | int | str]
"""Further fields of a job's record, such as ``dueAt`` (epoch seconds) or ``stopJobId``."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's state as stored."""

    id: str
    state: State
    kind: str | None = None
    attempts: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    target: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    reconciled: bool = False
    deliveries: int = 0
    outage_since: float | None = None
    requeues: int = 0
    retry_at: float | None = None
    due_at: float | None = None
    """When a scheduled or waiting job runs next."""
    slot_at: float | None = None
    """When a job back on the schedule for want of a slot under the rate limit has its turn."""
    deadline: float | None = None
    stop_job_id: str | None = None
    """The stop job a start with ``stopAt`` scheduled when it succeeded."""
    batch_id: str | None = None
    """The batch a child job belongs to."""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "attempts": self.attempts,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "target": self.target,
            "metadata": self.metadata or {},
            "history": self.history,
        }
        if self.error is not None:
            data["error"] = self.error
        if self.reconciled:
            data["reconciled"] = True
        if self.retry_at is not None and self.state is State.RETRYING:
            data["retryAt"] = epoch_iso(self.retry_at)
        if self.due_at is not None and self.state in (State.SCHEDULED, State.WAITING):
            data["dueAt"] = epoch_iso(self.due_at)
        if self.slot_at is not None and not self.state.terminal:
            data["slotAt"] = epoch_iso(self.slot_at)
        if self.deadline is not None and not self.state.terminal:
            data["deadline"] = epoch_iso(self.deadline)
        if self.stop_job_id is not None:
            data["stopJobId"] = self.stop_job_id
        if self.batch_id is not None:
            data["batchId"] = self.batch_id
        return data


class JobStore:
    """Reads and writes job states in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "recq",
        ttl: int = 7 * 24 * 3600,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._redis = client
        self._namespace = namespace
        self._ttl = ttl
        self._clock = clock
        self._write_script: Any = client.register_script(_WRITE)
        self._push_script: Any = client.register_script(_WRITE_AND_PUSH)
        self._withdraw_script: Any = client.register_script(_WITHDRAW)
        self._keep_script: Any = client.register_script(KEEP)

    def key(self, job_id: str) -> str:
        return f"{self._namespace}:job:{job_id}"

    def keys(self, job_id: str) -> list[str]:
        """The job's record and its history: the keys each write of its state touches."""
        key = self.key(job_id)
        return [key, f"{key}:history"]

    def transition(
        self,
        job_id: str,
        state: State,
        *,
        kind: str | None = None,
        attempt: int | None = None,
        target: Target | None = None,
        metadata: Mapping[str, Any] | None = None,
        error: ErrorInfo | None = None,
        reconciled: bool = False,
        extra: Extra | None = None,
        release: tuple[str, str] | None = None,
    ) -> None:
        """Record that ``job_id`` is now in ``state``, with whatever else is known; with
        ``release`` (a claim's key and token) give that claim back in the same step."""
        self.write_call(
            job_id,
            state,
            kind=kind,
            attempt=attempt,
            target=target,
            metadata=metadata,
            error=error,
            reconciled=reconciled,
            extra=extra,
            release=release,
        ).run()

    def enqueue(
        self,
        job_id: str,
        *,
        kind: str,
        target: Target,
        metadata: Mapping[str, Any],
        fresh: bool = False,
        state: State = State.QUEUED,
        extra: Extra | None = None,
        then: Callable[[redis.client.Pipeline], None] | None = None,
        replacing: State | None = None,
        push: tuple[str, bytes] | None = None,
    ) -> State | None:
        """Record a job as queued (or ``state``), unless it already ended: then return its
        terminal state. ``then`` adds commands to the same transaction, made only with the
        write (a scheduled job's schedule entry: never one without the other); ``push`` (a
        list's key and a message) is pushed by the write's own script, as in
        :meth:`enqueue_many` (a replay's message, on a broker that is this store's Redis).

        With ``fresh`` (a replay) the job is queued again whatever its state, and its delivery
        and outage counters start over. Its attempts are kept, here and in
        :meth:`enqueue_many`: a job enqueued again (or replayed) after an attempt that may have
        started its recording must still take "already running" for that attempt's success.
        With ``replacing`` (a replay of a failed job), the write is made only while the job is
        in that state (or has no record); otherwise its state is returned, whatever it is.
        """
        key = self.key(job_id)

        def write(pipe: redis.client.Pipeline) -> State | None:
            current = pipe.hget(key, "state")
            found = None if current is None else State(as_text(current))
            if replacing is not None and found not in (None, replacing):
                return found
            if not fresh and found is not None and found.terminal:
                return found
            pipe.multi()
            if fresh:
                pipe.hdel(key, "deliveries", "outageSince", "requeues", "retryAt", "reconciled")
            call = self.write_call(
                job_id, state, kind=kind, target=target, metadata=metadata, extra=extra, push=push
            )
            call.script(keys=call.keys, args=call.args, client=pipe)
            if then is not None:
                then(pipe)
            return None

        # redis-py types transaction()'s callable as returning None; it returns its value.
        transaction: Any = self._redis.transaction
        result: State | None = transaction(write, key, value_from_callable=True)
        return result

    def write_call(
        self,
        job_id: str,
        state: State,
        *,
        kind: str | None = None,
        attempt: int | None = None,
        target: Target | None = None,
        metadata: Mapping[str, Any] | None = None,
        error: ErrorInfo | None = None,
        reconciled: bool = False,
        extra: Extra | None = None,
        unless_ended: bool = False,
        now: str | None = None,
        release: tuple[str, str] | None = None,
        push: tuple[str, bytes] | None = None,
        keep_until: float | None = None,
    ) -> ScriptCall:
        """One transition's :data:`_WRITE`, to make now (:meth:`transition`) or in a round trip
        shared with other calls on this store's client (:func:`worker.scripts.run_together`).

        With ``push`` (a list's key and a message) the message is pushed onto that list by the
        same script once the write is made; not with ``unless_ended`` when the job had ended.
        With ``keep_until`` (an epoch) the record is kept until a TTL after it (see
        :meth:`keep`).
        """
        if push is not None and release is not None:
            raise ValueError("a write that pushes a message releases no claim")
        now = now or iso(self._clock())
        fields, entry = _fields(
            job_id,
            state,
            now,
            kind=kind,
            attempt=attempt,
            target=target,
            metadata=metadata,
            error=error,
            reconciled=reconciled,
            extra=extra,
        )
        flat = [str(item) for pair in fields.items() for item in pair]
        flags = ["1" if unless_ended else "0", "1" if error is None else "0"]
        claim, token = release or (None, "")
        keys = self.keys(job_id) + ([claim] if claim else [])
        ttl = self._ttl_for(extra, keep_until)
        args: list[str | bytes | int] = [now, entry, ttl, HISTORY_LENGTH, *flags, token]
        args += flat
        if push is None:
            return ScriptCall(self._redis, self._write_script, keys, args)
        queue, message = push
        return ScriptCall(self._redis, self._push_script, [*keys, queue], [*args, message])

    def _ttl_for(self, extra: Extra | None, keep_until: float | None = None) -> int:
        """How long a record is kept: the store's TTL after this write, or, for a job due
        later (``dueAt``) or kept for another that is (``keep_until``), that long after it is
        due. A job scheduled a month ahead lost its record after a week: it could no longer be
        cancelled or moved, and still ran."""
        due = (extra or {}).get("dueAt")
        if not isinstance(due, int | float):
            due = None
        if keep_until is not None and (due is None or keep_until > due):
            due = keep_until
        if due is None:
            return self._ttl
        return ttl_after(due, ttl=self._ttl, now=self._clock().timestamp())

    def keep(
        self, job_id: str, until: float, *, within: redis.client.Pipeline | None = None
    ) -> None:
        """Keep ``job_id``'s record until a TTL after ``until`` (an epoch), or longer if it was
        to be kept longer: a start's record while its stop is pending, so that a cancel or a
        move of the start still finds it. ``within``: a pipeline to add the step to."""
        self._keep_script(keys=self.keys(job_id), args=[self._ttl_for(None, until)], client=within)

    def enqueue_many(self, jobs: Sequence[Queued]) -> list[State | None]:
        """:meth:`enqueue` for many jobs in one round trip (never ``fresh``): for each, None
        when it was recorded queued (and its ``push`` made), or the terminal state it had
        already reached (and nothing pushed)."""
        now = iso(self._clock())
        calls = [
            self.write_call(
                job.id,
                State.QUEUED,
                kind=job.kind,
                target=job.target,
                metadata=job.metadata,
                extra=job.extra,
                unless_ended=True,
                now=now,
                push=job.push,
            )
            for job in jobs
        ]
        ended = []
        for answer in run_together(calls):
            if isinstance(answer, Exception):
                raise answer
            ended.append(State(as_text(answer)) if answer else None)
        return ended

    def withdraw(self, job_ids: Sequence[str]) -> int:
        """Delete the records :meth:`enqueue_many` just created for jobs whose messages could
        not be published: those still queued with that one write in their history. A job
        recorded before (its message may be on its way) or that a worker has reached since is
        left alone. Returns how many were deleted."""
        keys = [key for job_id in job_ids for key in self.keys(job_id)]
        return int(self._withdraw_script(keys=keys)) if keys else 0

    def states(self, job_ids: Sequence[str]) -> list[tuple[State | None, dict[str, Any] | None]]:
        """Each job's state and error (None for an unknown job), in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.key(job_id), ["state", "error"])
        found = []
        for state, error in pipe.execute():
            found.append(
                (
                    None if state is None else State(as_text(state)),
                    None if error is None else json.loads(error),
                )
            )
        return found

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when it is unknown (or expired)."""
        key, history_key = self.keys(job_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.lrange(history_key, 0, -1)
        raw, history = pipe.execute()
        if not raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        return JobRecord(
            id=fields.get("id", job_id),
            # A claim may count a delivery before the job's first state is written.
            state=State(fields.get("state", State.QUEUED.value)),
            kind=fields.get("kind"),
            attempts=int(fields.get("attempts", 0)),
            created_at=fields.get("createdAt"),
            updated_at=fields.get("updatedAt"),
            target=_json(fields.get("target")),
            metadata=_json(fields.get("metadata")),
            error=_json(fields.get("error")),
            reconciled=fields.get("reconciled") == "true",
            deliveries=int(fields.get("deliveries", 0)),
            outage_since=_float(fields.get("outageSince")),
            requeues=int(fields.get("requeues", 0)),
            retry_at=_float(fields.get("retryAt")),
            due_at=_float(fields.get("dueAt")),
            slot_at=_float(fields.get("slotAt")),
            deadline=_float(fields.get("deadline")),
            stop_job_id=fields.get("stopJobId"),
            batch_id=fields.get("batchId"),
            history=[json.loads(as_text(h)) for h in history],
        )


def ttl_after(due: float, *, ttl: int, now: float) -> int:
    """The expiry (seconds from ``now``) that keeps a key ``ttl`` seconds after ``due``, or
    ``ttl`` from now if ``due`` has passed."""
    return ttl + max(0, math.ceil(due - now))


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


@dataclass(frozen=True, slots=True)
class Queued:
    """A job to record as queued: what :meth:`JobStore.enqueue_many` takes."""

    id: str
    kind: str
    target: Target
    metadata: Mapping[str, Any]
    extra: Extra | None = None
    push: tuple[str, bytes] | None = None
    """A list's key and a message, pushed onto it by the same script as the record."""


def _fields(
    job_id: str,
    state: State,
    now: str,
    *,
    kind: str | None,
    attempt: int | None,
    target: Target | None,
    metadata: Mapping[str, Any] | None,
    error: ErrorInfo | None = None,
    reconciled: bool = False,
    extra: Extra | None = None,
) -> tuple[dict[Any, str | int | float], str]:
    """A transition's hash fields, and its history entry as JSON."""
    fields: dict[Any, str | int | float] = {"id": job_id, "state": state.value, "updatedAt": now}
    if kind is not None:
        fields["kind"] = kind
    if attempt is not None:
        fields["attempts"] = attempt
    if target is not None:
        fields["target"] = json.dumps(target.to_json())
    if metadata is not None:
        fields["metadata"] = json.dumps(redact_values(metadata))
    if error is not None:
        fields["error"] = json.dumps(error.to_json())
    if reconciled:
        fields["reconciled"] = "true"
    fields.update(extra or {})
    entry: dict[str, Any] = {"state": state.value, "at": now}
    if attempt is not None:
        entry["attempt"] = attempt
    if error is not None:
        entry["reason"] = error.reason
    return fields, json.dumps(entry)
