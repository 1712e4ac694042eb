"""The one exception tree of recq, split by what the caller does next.

::

    RecqError
    ├── SettingsError          the environment is wrong: stop at start, say which variable and why
    ├── InvalidJob             the job breaks its schema: permanent, VideoSDK is never called
    ├── BrokerUnavailable      a producer could not publish within its short retry budget
    ├── UnknownJob             no job has that id (never known, or its state expired)
    ├── JobConflict            the job is not in a state that allows it (cancel a finished job...)
    ├── RateLimited            no VideoSDK call may start within the short wait: re-queue the job
    └── UpstreamError          VideoSDK answered badly, or not at all (carries status, body, ids)
        ├── UpstreamRejected   a 4xx other than 429: permanent, never retried
        └── UpstreamUnavailable  connection error, timeout, 429 or 5xx: transient, retried

Every error can describe itself as an :class:`ErrorInfo`, the ``error`` object of job
states and failure events. Nothing secret is ever put into an error: request bodies are not
kept, only the answer's status, text and request id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from amqp.exceptions import AMQPError
from kombu.exceptions import OperationalError

from worker.redact import redact, redact_values

UNREACHABLE: tuple[type[Exception], ...] = (redis.RedisError, OperationalError, AMQPError)
"""Redis (the state store, or a Redis broker) or the broker failing us: no fault of the job's
nor of recq's code. A producer reports it (:class:`BrokerUnavailable`); a worker hands the
message back to be delivered again, as it would if it had died. (kombu wraps the errors it may
retry; RabbitMQ's refusals of a login or a vhost, AccessRefused and NotAllowed, come as py-amqp
raised them.)"""


def which_failed(exc: Exception) -> str:
    """Which of Redis or the broker raised ``exc``, how, and which variable names it."""
    if isinstance(exc, redis.RedisError):
        which = "Redis (RECQ_REDIS_URL, or CELERY_BROKER_URL when that is Redis)"
    else:
        which = "the broker (CELERY_BROKER_URL)"
    return redact(f"{which} failed: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The machine-readable description of why a job failed."""

    reason: str
    message: str
    status: int | None = None
    body: str | None = None
    request_id: str | None = None
    violations: tuple[Violation, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        """The inverse of :meth:`to_json`."""
        return cls(
            reason=data["reason"],
            message=data["message"],
            status=data.get("status"),
            body=data.get("body"),
            request_id=data.get("requestId"),
            violations=tuple(
                Violation(v["field"], v["code"], v["message"]) for v in data.get("violations", ())
            ),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.status is not None:
            data["status"] = self.status
        if self.body is not None:
            data["body"] = self.body
        if self.request_id is not None:
            data["requestId"] = self.request_id
        if self.violations:
            data["violations"] = [v.to_json() for v in self.violations]
        # Recorded in states, events and dead letters: whatever an error quotes loses its
        # secrets here, however it was built (the body and violations are redacted already).
        redacted: dict[str, Any] = redact_values(data)
        return redacted


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a job breaks its schema: the field's dotted path, a code, and a sentence."""

    path: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(job)'}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"field": self.path, "code": self.code, "message": self.message}


class RecqError(Exception):
    """The root of every error recq raises on purpose."""

    reason = "error"

    def info(self) -> ErrorInfo:
        return ErrorInfo(reason=self.reason, message=str(self))


class SettingsError(RecqError):
    """The environment does not describe a usable configuration."""

    reason = "settings"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"recq is not configured correctly:\n{lines}")


class InvalidJob(RecqError):
    """The job breaks its schema. Permanent: no call is made to VideoSDK."""

    reason = "invalid_job"

    def __init__(self, violations: Sequence[Violation], *, job_id: str | None = None) -> None:
        self.violations = tuple(violations)
        self.job_id = job_id
        what = "; ".join(str(v) for v in self.violations)
        prefix = f"job {job_id} is invalid" if job_id else "invalid job"
        super().__init__(f"{prefix}: {what}")

    def info(self) -> ErrorInfo:
        return ErrorInfo(reason=self.reason, message=str(self), violations=self.violations)


class BrokerUnavailable(RecqError):
    """The broker did not take a message within the producer's short retry budget."""

    reason = "broker_unavailable"


class UnknownJob(RecqError):
    """No job has this id: it was never enqueued, or its state expired."""

    reason = "unknown_job"

    def __init__(self, job_id: str, message: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message or f"no job {job_id!r} (unknown, or its state expired)")


class RateLimited(RecqError):
    """The fleet-wide rate limit has no call slot within a short wait; ``wait`` says how long."""

    reason = "rate_limited"

    def __init__(self, wait: float) -> None:
        self.wait = wait
        super().__init__(f"no VideoSDK call slot for {wait:.2f} s (RECQ_RATE_LIMIT)")


class JobConflict(RecqError):
    """The job's state does not allow what was asked (cancelling a finished job...)."""

    reason = "job_conflict"


@dataclass(frozen=True, slots=True)
class Target:
    """What a VideoSDK call is about: a room, or one participant's track in it."""

    room_id: str
    participant_id: str | None = None
    kind: str | None = None

    def to_json(self) -> dict[str, str]:
        data = {"roomId": self.room_id}
        if self.participant_id is not None:
            data["participantId"] = self.participant_id
        if self.kind is not None:
            data["kind"] = self.kind
        return data


@dataclass(frozen=True, slots=True)
class Answer:
    """What VideoSDK said: status, body text, and its request id when it sent one.

    ``body`` is what may be shown (in errors, states and events): redacted, and cut to a
    length. ``data`` is the whole body parsed as JSON (None when it is not JSON), for the
    client's own decisions, such as reading a long sessions listing; it is never shown.
    """

    status: int
    body: str
    request_id: str | None = None
    retry_after: float | None = None
    data: Any = field(default=None, repr=False, compare=False)


class UpstreamError(RecqError):
    """VideoSDK answered with an error, or could not be reached."""

    reason = "upstream_error"
    maybe_applied = True
    """Whether the call may have taken effect all the same (only an answer can prove it did
    not)."""

    def __init__(self, message: str, *, endpoint: str, answer: Answer | None = None) -> None:
        self.endpoint = endpoint
        self.answer = answer
        super().__init__(message)

    @property
    def status(self) -> int | None:
        return self.answer.status if self.answer else None

    def info(self) -> ErrorInfo:
        answer = self.answer
        return ErrorInfo(
            reason=self.reason,
            message=str(self),
            status=answer.status if answer else None,
            body=answer.body if answer else None,
            request_id=answer.request_id if answer else None,
        )


class UpstreamRejected(UpstreamError):
    """VideoSDK refused the call (a 4xx other than 429). Permanent: retrying cannot help."""

    reason = "upstream_rejected"
    maybe_applied = False  # refused: it changed nothing


class UpstreamUnavailable(UpstreamError):
    """VideoSDK could not take the call now (network, timeout, 429, 5xx). Transient."""

    reason = "upstream_unavailable"

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        answer: Answer | None = None,
        maybe_applied: bool = True,
    ) -> None:
        super().__init__(message, endpoint=endpoint, answer=answer)
        # False only when the request certainly never reached VideoSDK (it could not connect).
        self.maybe_applied = maybe_applied

    @property
    def retry_after(self) -> float | None:
        return self.answer.retry_after if self.answer else None

    @property
    def too_many_requests(self) -> bool:
        """VideoSDK answered 429: the whole fleet should slow down."""
        return self.answer is not None and self.answer.status == 429  # noqa: PLR2004
