"""Dead letters: jobs that ended failed, kept with the job, the reason and the attempts.

An operator inspects them with ``recq dead list`` and ``recq dead show ID`` and, once the cause
is fixed, replays them with ``recq dead replay ID|--all``: the job is validated again and
published under the same id. Letters are kept until replayed (no TTL: a failure must not vanish
before someone has seen it), in ``<ns>:dead`` (id to letter) and ``<ns>:dead:index`` (by time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from worker.scripts import as_text
from worker.state import epoch_iso
from worker.validation import MAX_BULK_JOB_BYTES

MAX_JOB_BYTES = MAX_BULK_JOB_BYTES
"""The largest job a letter keeps, measured as validation measures a job: every job valid
enough to run (the largest kind is a bulk job) is kept whole for its replay."""
_PAGE = 500
"""Letters read per round trip when listing them."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A failed job, as it was received, and why it failed."""

    job_id: str
    task: str | None
    job: Any
    error: dict[str, Any]
    attempts: int
    failed_at: float

    def to_json(self) -> dict[str, Any]:
        """The letter as shown, its time in RFC 3339 as every other time recq shows."""
        return {**self.stored(), "failedAt": epoch_iso(self.failed_at)}

    def stored(self) -> dict[str, Any]:
        """The letter as kept in Redis (its time in epoch seconds)."""
        return {
            "id": self.job_id,
            "task": self.task,
            "job": self.job,
            "error": self.error,
            "attempts": self.attempts,
            "failedAt": self.failed_at,
        }


class DeadLetters:
    """Keeps, lists and removes dead letters."""

    def __init__(
        self, client: redis.Redis, *, namespace: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = client
        self._letters = f"{namespace}:dead"
        self._index = f"{namespace}:dead:index"
        self._clock = clock

    def add(
        self, job_id: str, *, task: str | None, job: Any, error: dict[str, Any], attempts: int
    ) -> None:
        """Keep a failed job (replacing an earlier letter of the same id)."""
        letter = DeadLetter(job_id, task, _kept(job), error, attempts, self._clock())
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._letters, job_id, json.dumps(letter.stored(), default=str))
        pipe.zadd(self._index, {job_id: letter.failed_at})
        pipe.execute()

    def get(self, job_id: str) -> DeadLetter | None:
        raw = self._redis.hget(self._letters, job_id)
        return None if raw is None else _letter(job_id, raw)

    def list(self, limit: int | None = None) -> list[DeadLetter]:
        """The most recent letters first: all of them, or the ``limit`` most recent. (It used
        to stop at 1,000 without a word, and `recq dead replay --all` with it.)"""
        letters: list[DeadLetter] = []
        seen: set[str] = set()
        start = 0
        while limit is None or start < limit:
            stop = start + _PAGE if limit is None else min(start + _PAGE, limit)
            ids: list[bytes] = self._redis.zrevrange(self._index, start, stop - 1)  # type: ignore[assignment]
            if ids:
                found = zip(ids, self._redis.hmget(self._letters, ids), strict=True)
                for job_id, raw in found:
                    # A letter added meanwhile shifts the pages: none is listed twice.
                    if raw is not None and (name := as_text(job_id)) not in seen:
                        seen.add(name)
                        letters.append(_letter(name, raw))
            if len(ids) < stop - start:
                break
            start = stop
        return letters

    def remove_if_unchanged(self, letter: DeadLetter) -> bool:
        """Remove ``letter`` unless a newer one replaced it meanwhile (its replay failed again
        already): that one stays, to be seen and replayed."""

        def remove(pipe: redis.client.Pipeline) -> bool:
            raw = pipe.hget(self._letters, letter.job_id)
            if raw is None or _letter(letter.job_id, raw).failed_at != letter.failed_at:
                return False
            pipe.multi()
            pipe.hdel(self._letters, letter.job_id)
            pipe.zrem(self._index, letter.job_id)
            return True

        transaction: Any = self._redis.transaction
        removed: bool = transaction(remove, self._letters, value_from_callable=True)
        return removed

    def remove(self, job_id: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._letters, job_id)
        pipe.zrem(self._index, job_id)
        removed, _ = pipe.execute()
        return bool(removed)


def _kept(job: Any) -> Any:
    """The job as a letter keeps it: whole, unless it is larger than any valid job."""
    try:
        text = json.dumps(job, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        return "(cannot be kept: not JSON)"
    return job if len(text.encode()) <= MAX_JOB_BYTES else "(too large to keep)"


def _letter(job_id: str, raw: bytes | str) -> DeadLetter:
    """A stored letter; one that cannot be read (written by hand, or by another program) is
    shown as such rather than stopping every command that lists letters."""
    try:
        data = json.loads(raw)
        error = dict(data["error"])
        # Every reader may count on a reason and a message (one written without them made the
        # replay of a job the broker refused raise KeyError).
        error["reason"] = str(error.get("reason") or "unknown")
        error["message"] = str(error.get("message") or "")
        return DeadLetter(
            job_id=str(data["id"]),
            task=data.get("task"),
            job=data.get("job"),
            error=error,
            attempts=int(data.get("attempts", 0)),
            failed_at=float(data["failedAt"]),
        )
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        problem = f"{type(exc).__name__} {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        message = f"this dead letter cannot be read ({problem}): it is not one recq wrote"
        error = {"reason": "unreadable_letter", "message": message}
        return DeadLetter(job_id, None, None, error, 0, 0.0)
