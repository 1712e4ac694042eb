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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis

from worker.errors import ErrorInfo, Target

HISTORY_LENGTH = 20


class State(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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

    def key(self, job_id: str) -> str:
        return f"{self._namespace}:job:{job_id}"

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
    ) -> None:
        """Record that ``job_id`` is now in ``state``, with whatever else is known."""
        now = iso(self._clock())
        fields: dict[Any, str | int] = {"id": job_id, "state": state.value, "updatedAt": now}
        if kind is not None:
            fields["kind"] = kind
        if attempt is not None:
            fields["attempts"] = attempt
        if target is not None:
            fields["target"] = json.dumps(target.to_json())
        if metadata is not None:
            fields["metadata"] = json.dumps(dict(metadata))
        if error is not None:
            fields["error"] = json.dumps(error.to_json())
        if reconciled:
            fields["reconciled"] = "true"
        entry: dict[str, Any] = {"state": state.value, "at": now}
        if attempt is not None:
            entry["attempt"] = attempt
        if error is not None:
            entry["reason"] = error.reason
        key, history = self.key(job_id), self.key(job_id) + ":history"
        pipe = self._redis.pipeline(transaction=False)
        pipe.hsetnx(key, "createdAt", now)
        pipe.hset(key, mapping=fields)
        if state is not State.FAILED and error is None:
            pipe.hdel(key, "error")
        pipe.rpush(history, json.dumps(entry))
        pipe.ltrim(history, -HISTORY_LENGTH, -1)
        pipe.expire(key, self._ttl)
        pipe.expire(history, self._ttl)
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when it is unknown (or expired)."""
        key = self.key(job_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.lrange(key + ":history", 0, -1)
        raw, history = pipe.execute()
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return JobRecord(
            id=fields.get("id", job_id),
            state=State(fields["state"]),
            kind=fields.get("kind"),
            attempts=int(fields.get("attempts", 0)),
            created_at=fields.get("createdAt"),
            updated_at=fields.get("updatedAt"),
            target=_json(fields.get("target")),
            metadata=_json(fields.get("metadata")),
            error=_json(fields.get("error")),
            reconciled=fields.get("reconciled") == "true",
            history=[json.loads(_text(h)) for h in history],
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)
