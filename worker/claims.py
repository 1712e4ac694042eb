"""Claims: a job id runs to completion once, and never in two places at the same time.

Before a delivery may call VideoSDK it claims its job id: one Lua script, atomic in Redis, that

- answers ``done`` when the job already reached a terminal state (a duplicate delivery: the
  caller acknowledges it and reports the original outcome, without calling VideoSDK);
- otherwise sets ``<ns>:claim:<id>`` to a fresh token with a lease (``SET NX PX``) and counts the
  delivery, answering ``claimed`` with what earlier deliveries left in the job's state (attempts
  made, and how many of those were proven to change nothing, when an outage began, how often it
  was re-queued, its state, its batch), so the delivery needs no second read;
- or answers ``busy`` with the lease's remaining time when another delivery holds the claim.

Given the rate limiter's pause key (a worker with no ``RECQ_RATE_LIMIT``, where a 429's pause is
all the limiter checks), a claim also answers how long calls stay paused, so the delivery's
first call needs no round trip of its own to learn it (:attr:`Claim.paused`).

Given a :class:`Start` (a delivery that will call VideoSDK at once), a claim also records the
job running its next attempt, in the same script: the delivery's first state write takes no
round trip of its own.

The lease expires on its own if its holder dies, so a redelivered job is never blocked for longer
than a job's longest delivery. Releasing checks the token, so a holder whose lease expired
cannot release a claim that someone else has since taken. A delivery's last state write (its
end, or handing the job back to the schedule) releases the claim in the same Lua call
(:attr:`Claim.lease`): a replay or redelivery that sees the new state never finds the claim
still taken and waits out a lease for nothing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from worker.scripts import ScriptCall, as_text
from worker.state import WRITE_FUNCTION

# ``terminal`` (the ended states) and ``write_state`` come from worker.state's WRITE_FUNCTION.
# KEYS: the job's hash, its claim, its history (and the 429 pause). ARGV: token, lease (ms),
# state ttl, then for a start (:class:`Start`) its delivery limit and its state write's
# arguments, whose attempt number the claim adds: only it knows how many came before.
_ACQUIRE = (
    WRITE_FUNCTION
    + """
local job = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'outageSince', 'requeues', 'batchId',
                      'unapplied')
local state = job[1]
if state and terminal[state] then
  return {'done', 0, 0}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  local paused = -1
  if KEYS[4] then
    paused = math.max(redis.call('PTTL', KEYS[4]), 0)
  end
  local started = 0
  if ARGV[4] and deliveries <= tonumber(ARGV[4]) and paused <= 0 then
    local attempt = tonumber(job[2] or '0') + 1
    local write = {unpack(ARGV, 5)}
    write[2] = string.sub(write[2], 1, -2) .. ', "attempt": ' .. attempt .. '}'
    table.insert(write, 'attempts')
    table.insert(write, attempt)
    write_state({KEYS[1], KEYS[3]}, write)
    started = 1
  end
  return {'claimed', deliveries, 0, job[2] or '0', job[3] or '', job[4] or '0', state or '',
          job[5] or '', job[6] or '0', paused, started}
end
return {'busy', 0, redis.call('PTTL', KEYS[2])}
"""
)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"
    DONE = "done"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: its status, the token to release it, and what else is known."""

    status: ClaimStatus
    token: str
    key: str = ""
    """The claim's key in Redis."""
    deliveries: int = 0
    retry_in: float = 0.0
    """For a busy claim: seconds until its lease runs out."""
    attempts: int = 0
    """Calls earlier deliveries of the job made to VideoSDK."""
    unapplied: int = 0
    """Of those attempts, how many were answered in a way that proves they changed nothing."""
    outage_since: float | None = None
    requeues: int = 0
    state: str | None = None
    """The job's recorded state when it was claimed (None before its first record)."""
    batch_id: str | None = None
    """The batch the job is a child of."""
    paused: float | None = None
    """Seconds calls stay paused after a 429, as the claim found it (0.0: not paused); None
    when the claim was not asked (a worker with a rate limit asks the limiter each time)."""
    started: bool = False
    """The claim made its :class:`Start` write: the job is recorded running its next attempt."""

    @property
    def lease(self) -> tuple[str, str] | None:
        """The key and token that release this claim, if it was taken (for a state write that
        gives the claim back in the same step: :meth:`worker.state.JobStore.transition`)."""
        return (self.key, self.token) if self.status is ClaimStatus.CLAIMED else None


@dataclass(frozen=True, slots=True)
class Start:
    """A delivery about to call VideoSDK at once: the claim records the job running.

    ``write`` is the job's state write (:meth:`worker.state.JobStore.write_call`, with no
    attempt), made by the claim's script when it claims the job, the delivery is within
    ``max_deliveries`` and calls are not paused after a 429; the claim adds the attempt's number
    (the attempts earlier deliveries made, and one). The claim and the delivery's first state
    write so take one round trip instead of two.
    """

    write: ScriptCall
    max_deliveries: int


class Claims:
    """Takes and releases claims on job ids."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        state_keys: Callable[[str], Sequence[str]],
        lease: float,
        state_ttl: int,
        pause_key: str | None = None,
    ) -> None:
        self.namespace = namespace
        self._state_keys = state_keys
        self._pause = [pause_key] if pause_key else []
        self._lease_ms = int(lease * 1000)
        self._state_ttl = state_ttl
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._release: Any = client.register_script(_RELEASE)

    def _acquire_keys(self, job_id: str) -> list[str]:
        record, history = self._state_keys(job_id)
        return [record, self.key(job_id), history, *self._pause]

    @property
    def reads_pause(self) -> bool:
        """Whether a claim answers how long calls stay paused after a 429 (:attr:`Claim.paused`)."""
        return bool(self._pause)

    def key(self, job_id: str) -> str:
        """The claim's key: it exists while a delivery of the job runs."""
        return f"{self.namespace}:claim:{job_id}"

    def acquire(self, job_id: str, start: Start | None = None) -> Claim:
        """Try to claim ``job_id`` for this delivery; with ``start``, record it running too."""
        token = uuid.uuid4().hex
        args: list[Any] = [token, self._lease_ms, self._state_ttl]
        if start is not None:
            args += [start.max_deliveries, *start.write.args]
        status, deliveries, pttl, *job = self._acquire(keys=self._acquire_keys(job_id), args=args)
        name = status.decode() if isinstance(status, bytes) else status
        claim = Claim(
            ClaimStatus(name), token, self.key(job_id), int(deliveries), max(int(pttl), 0) / 1000
        )
        if not job:
            return claim
        *found, paused, started = job
        attempts, since, requeues, state, batch_id, unapplied = (as_text(v) for v in found)
        return dataclasses.replace(
            claim,
            attempts=int(attempts),
            unapplied=int(unapplied),
            outage_since=float(since) if since else None,
            requeues=int(requeues),
            state=state or None,
            batch_id=batch_id or None,
            paused=int(paused) / 1000 if int(paused) >= 0 else None,
            started=bool(started),
        )

    def release(self, job_id: str, claim: Claim) -> None:
        """Give the claim back, if it is still ours."""
        if claim.status is ClaimStatus.CLAIMED:
            self._release(keys=[self.key(job_id)], args=[claim.token])
