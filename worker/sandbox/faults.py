"""Faults injected on demand: slow answers, lost answers, error statuses, applied or not.

A fault sits in front of the API like a gateway: it is taken before authentication, by the first
VideoSDK call whose path it matches, and it is used up after ``times`` calls.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from typing import Any

from worker.sandbox.messages import Reply, error_body

_STATUSES = range(100, 600)

# The JSON type each field of a fault accepts (None: may be null).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "status": (int, type(None)),
    "retry_after": (str, type(None)),
    "latency": (int, float),
    "drop_answer": (bool,),
    "applies": (bool,),
    "path": (str, type(None)),
    "room": (str, type(None)),
    "times": (int,),
    "body": (str, type(None)),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """What goes wrong with the next matching call(s).

    - ``latency``: seconds slept before answering (a client with a shorter read timeout sees a
      timeout); alone, the call is otherwise served normally.
    - ``applies``: the call takes its real effect first, then the fault replaces the answer.
    - ``drop_answer``: the connection is closed without an answer (a connection error).
    - ``status``: answer this status, with ``Retry-After: retry_after`` when given and ``body``
      (or a JSON error) as the body.
    - ``path``: only calls to this exact path take the fault (None: any call).
    - ``room``: only calls about this ``roomId`` (in the body or the query) take the fault, so a
      test can script each job's faults while many jobs run at once.
    - ``times``: how many calls the fault answers before it is used up.
    """

    status: int | None = None
    retry_after: str | None = None
    latency: float = 0.0
    drop_answer: bool = False
    applies: bool = False
    path: str | None = None
    room: str | None = None
    times: int = 1
    body: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in _STATUSES:
            raise ValueError(f"status {self.status} is not an HTTP status")
        if self.status is not None and self.drop_answer:
            raise ValueError("a fault either answers a status or drops the answer, not both")
        if self.status is None and (self.retry_after is not None or self.body is not None):
            raise ValueError("retry_after and body need a status")
        if self.latency < 0 or self.times < 1:
            raise ValueError("latency must be >= 0 and times >= 1")

    @classmethod
    def from_json(cls, value: Any) -> Fault:
        """A fault from its JSON object (field names as in the class); raises ValueError."""
        if not isinstance(value, dict):
            raise ValueError("a fault must be a JSON object")  # noqa: TRY004 (a 400, not a bug)
        for name, given in value.items():
            kinds = _FIELD_TYPES.get(name)
            if kinds is None:
                raise ValueError(f"unknown fault field {name!r}")
            if (isinstance(given, bool) and bool not in kinds) or not isinstance(given, kinds):
                raise ValueError(f"fault field {name!r} has the wrong type")
        return cls(**value)

    def to_json(self) -> dict[str, Any]:
        """The fault as a JSON object."""
        return dataclasses.asdict(self)

    @property
    def replaces_answer(self) -> bool:
        """Whether the fault answers instead of the API (else it only slows the answer)."""
        return self.status is not None or self.drop_answer

    def matches(self, path: str, room: str | None = None) -> bool:
        """Whether a call to ``path`` about ``room`` takes this fault."""
        return (self.path is None or self.path == path) and (self.room is None or self.room == room)

    def reply(self) -> Reply:
        """The answer the fault gives in place of the API's (none at all without a status)."""
        if self.status is None:
            return Reply.dropped()
        extra = () if self.retry_after is None else (("Retry-After", self.retry_after),)
        if self.body is None:
            return Reply.json(self.status, error_body(self.status, "Injected fault"), extra)
        kind = "application/json" if _is_json(self.body) else "text/plain; charset=utf-8"
        return Reply(self.status, self.body.encode(), (("Content-Type", kind), *extra))

    def describe(self, real_status: int | None) -> str:
        """A short description for the call log, e.g. ``status 503 after applying (real 200)``."""
        parts = []
        if self.latency:
            parts.append(f"latency {self.latency:g}s")
        if self.drop_answer:
            parts.append("answer dropped")
        elif self.status is not None:
            parts.append(f"status {self.status}")
        if self.applies and self.replaces_answer:
            parts.append(f"after applying (real {real_status})")
        return ", ".join(parts)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class _Queued:
    fault: Fault
    left: int


class FaultQueue:
    """Queued faults, taken in order by matching calls; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Queued] = []

    def add(self, *faults: Fault) -> None:
        """Queue faults after those already queued."""
        with self._lock:
            self._queue.extend(_Queued(fault, fault.times) for fault in faults)

    def take(self, path: str, room: str | None = None) -> Fault | None:
        """The first queued fault matching ``path`` and ``room``, using up one of its times."""
        with self._lock:
            for index, entry in enumerate(self._queue):
                if entry.fault.matches(path, room):
                    entry.left -= 1
                    if entry.left == 0:
                        del self._queue[index]
                    return entry.fault
        return None

    def pending(self) -> list[Fault]:
        """The faults still queued (each listed once)."""
        with self._lock:
            return [entry.fault for entry in self._queue]

    def clear(self) -> None:
        """Forget every queued fault."""
        with self._lock:
            self._queue.clear()
