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

from worker.state import epoch_iso

MAX_JOB_CHARS = 256 * 1024


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
        kept = job if len(json.dumps(job, default=str)) <= MAX_JOB_CHARS else "(too large to keep)"
        letter = DeadLetter(job_id, task, kept, error, attempts, self._clock())
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._letters, job_id, json.dumps(letter.stored(), default=str))
        pipe.zadd(self._index, {job_id: letter.failed_at})
        pipe.execute()

    def get(self, job_id: str) -> DeadLetter | None:
        raw = self._redis.hget(self._letters, job_id)
        return None if raw is None else _letter(raw)

    def list(self, limit: int = 1000) -> list[DeadLetter]:
        """The most recent letters first."""
        ids: list[bytes] = self._redis.zrevrange(self._index, 0, limit - 1)  # type: ignore[assignment]
        if not ids:
            return []
        return [_letter(raw) for raw in self._redis.hmget(self._letters, ids) if raw is not None]

    def remove(self, job_id: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._letters, job_id)
        pipe.zrem(self._index, job_id)
        removed, _ = pipe.execute()
        return bool(removed)


def _letter(raw: bytes | str) -> DeadLetter:
    data = json.loads(raw)
    return DeadLetter(
        job_id=data["id"],
        task=data.get("task"),
        job=data.get("job"),
        error=data["error"],
        attempts=int(data.get("attempts", 0)),
        failed_at=float(data["failedAt"]),
    )
