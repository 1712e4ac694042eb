"""The call log: every VideoSDK call the sandbox received, what it carried and what it answered.

Tests assert on it (outcomes, not mocks). The raw token is never stored: only its claims, decoded
without verification, so a log printed in a failing test leaks nothing usable.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Call:
    """One call to the VideoSDK API.

    ``status`` is what the client was answered, 0 when the answer was dropped; ``fault``
    describes the injected fault that shaped the answer, if any; ``at`` is the sandbox clock's
    time when the call arrived.
    """

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str | None
    claims: dict[str, Any] | None
    auth_prefix: str | None
    status: int
    fault: str | None
    at: float

    @property
    def ok(self) -> bool:
        """Whether the client was answered with a 2xx."""
        return self.status // 100 == 2  # noqa: PLR2004 (the 2xx class)

    def to_json(self) -> dict[str, Any]:
        """The call as a JSON object (field names as in the class)."""
        return dataclasses.asdict(self)


class CallLog:
    """An append-only list of calls that can be waited on; safe across threads."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._changed = threading.Condition()

    def append(self, call: Call) -> None:
        """Log a call and wake whoever waits for calls."""
        with self._changed:
            self._calls.append(call)
            self._changed.notify_all()

    def snapshot(self, path: str | None = None) -> list[Call]:
        """A copy of the calls so far, only those to ``path`` when given."""
        with self._changed:
            return self._matching(path)

    def wait_for(self, count: int, timeout: float, path: str | None = None) -> list[Call]:
        """The calls (to ``path``) once there are at least ``count``; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._matching(path)) >= count, timeout):
                seen = len(self._matching(path))
                where = f" to {path}" if path else ""
                raise TimeoutError(f"{seen} of {count} calls{where} arrived in {timeout:g} s")
            return self._matching(path)

    def clear(self) -> None:
        """Forget every call."""
        with self._changed:
            self._calls.clear()

    def _matching(self, path: str | None) -> list[Call]:
        if path is None:
            return list(self._calls)
        return [call for call in self._calls if call.path == path]
