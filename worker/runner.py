"""Running one job: validate, call VideoSDK under the retry policy, record and announce the outcome.

This is the whole life of a delivered job, free of Celery: the task hands it the decoded job and
its id. Every path ends in a terminal state and an event, including a job that fails validation
(no call is made) and one whose retries are spent.

Reconciling "already running": VideoSDK has no idempotency key and a start returns no id. When an
attempt of this job may have reached VideoSDK without its answer reaching us (a timeout, a dropped
connection, a 5xx, or an earlier delivery of the same job), a later refusal saying the recording
is already running is that earlier attempt's success, and is recorded as such (``reconciled``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import ErrorInfo, InvalidJob, UpstreamError, UpstreamUnavailable
from worker.events import Events, build_event
from worker.jobs import JobKind
from worker.retry import RetryPolicy
from worker.state import JobStore, State
from worker.validation import validate
from worker.videosdk import VideoSDKClient, refused_as_already_running


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended."""

    job_id: str
    state: State
    attempts: int
    error: ErrorInfo | None = None
    reconciled: bool = False


@dataclass(slots=True)
class _Attempts:
    """What this run has learnt so far about its calls."""

    before: int
    made: int = 0
    maybe_applied: bool = False
    last_error: UpstreamUnavailable | None = None


class JobRunner:
    """Runs delivered jobs against VideoSDK."""

    def __init__(
        self,
        *,
        client: VideoSDKClient,
        store: JobStore,
        events: Events,
        policy: RetryPolicy,
        validator: Callable[..., dict[str, Any]] = validate,
    ) -> None:
        self._client = client
        self._store = store
        self._events = events
        self._policy = policy
        self._validate = validator

    def run(self, kind: JobKind, raw: object, *, job_id: str) -> Outcome:
        """Run one delivery of a job and return how it ended; never raises for a job's fault."""
        try:
            job = self._validate(kind.name, raw, job_id=job_id)
        except InvalidJob as exc:
            partial = raw if isinstance(raw, Mapping) else {}
            return self._finish(kind, job_id, partial, _Attempts(before=0), error=exc.info())
        previous = self._store.get(job_id)
        earlier = previous.attempts if previous else 0
        # An earlier delivery that made a call may have started the recording.
        attempts = _Attempts(before=earlier, maybe_applied=earlier > 0)
        try:
            self._policy.call(
                lambda: self._call(kind, job, attempts),
                before=lambda _state: self._before_attempt(kind, job_id, job, attempts),
            )
        except UpstreamError as exc:
            if attempts.maybe_applied and refused_as_already_running(exc):
                return self._finish(kind, job_id, job, attempts, reconciled=True)
            return self._finish(kind, job_id, job, attempts, error=exc.info())
        return self._finish(kind, job_id, job, attempts)

    def _call(self, kind: JobKind, job: Mapping[str, Any], attempts: _Attempts) -> None:
        attempts.made += 1
        try:
            self._client.post(kind.endpoint, kind.request_body(job))
        except UpstreamUnavailable as exc:
            attempts.maybe_applied = attempts.maybe_applied or exc.maybe_applied
            attempts.last_error = exc
            raise

    def _before_attempt(
        self,
        kind: JobKind,
        job_id: str,
        job: Mapping[str, Any],
        attempts: _Attempts,
    ) -> None:
        number = attempts.before + attempts.made + 1
        first = attempts.made == 0
        state = State.RUNNING if first else State.RETRYING
        target, metadata = kind.target(job), _metadata(job)
        self._store.transition(
            job_id, state, kind=kind.name, attempt=number, target=target, metadata=metadata
        )
        if attempts.last_error is not None:
            info = attempts.last_error.info()
            self._events.publish(
                build_event(
                    kind.event_type("retrying"),
                    job_id=job_id,
                    kind=kind.name,
                    state=state,
                    target=target,
                    attempt=number,
                    metadata=metadata,
                    error=info,
                )
            )

    def _finish(
        self,
        kind: JobKind,
        job_id: str,
        job: Mapping[str, Any],
        attempts: _Attempts,
        *,
        error: ErrorInfo | None = None,
        reconciled: bool = False,
    ) -> Outcome:
        state = State.FAILED if error else State.SUCCEEDED
        total = attempts.before + attempts.made
        target, metadata = kind.target(job), _metadata(job)
        self._store.transition(
            job_id,
            state,
            kind=kind.name,
            attempt=total,
            target=target,
            metadata=metadata,
            error=error,
            reconciled=reconciled,
        )
        self._events.publish(
            build_event(
                kind.event_type("failed" if error else "started"),
                job_id=job_id,
                kind=kind.name,
                state=state,
                target=target,
                attempt=total,
                metadata=metadata,
                error=error,
                reconciled=reconciled,
            )
        )
        return Outcome(job_id, state, total, error=error, reconciled=reconciled)


def _metadata(job: Mapping[str, Any]) -> dict[str, Any]:
    metadata = job.get("metadata")
    return dict(metadata) if isinstance(metadata, Mapping) else {}
