"""Running one delivery of a job: validate, claim, call VideoSDK, record and announce the outcome.

This is the whole life of a delivered job, free of Celery: the task hands it the decoded job and
its id. Every path ends in a recorded state and an event:

- an invalid job fails at once (no call is made) and becomes a dead letter;
- a duplicate of a finished job is acknowledged without a call, reporting the original outcome;
- a job another delivery is running is put back on the schedule until that claim's lease ends;
- a job whose in-process retries are spent on an outage goes back on the schedule with a growing
  delay, so it does not pin a worker slot, until the outage window closes and it fails;
- a job VideoSDK rejects fails and becomes a dead letter.

Reconciling "already running": VideoSDK has no idempotency key and a start returns no id. When an
attempt of this job may have reached VideoSDK without its answer reaching us (a timeout, a dropped
connection, a 5xx, or an earlier delivery that made a call), a later refusal saying the recording
is already running is that earlier attempt's success, and is recorded as such (``reconciled``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.claims import Claim, Claims, ClaimStatus
from worker.dead_letters import DeadLetters
from worker.errors import ErrorInfo, InvalidJob, UpstreamError, UpstreamUnavailable
from worker.events import Events, build_event
from worker.jobs import BY_TASK, JobKind
from worker.messages import job_from_arguments, job_id_of
from worker.retry import RetryPolicy
from worker.schedule import Delivery, Schedule
from worker.state import JobStore, State
from worker.validation import validate
from worker.videosdk import VideoSDKClient, refused_as_already_running


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one delivery of a job ended."""

    job_id: str
    state: State
    attempts: int
    error: ErrorInfo | None = None
    reconciled: bool = False
    duplicate: bool = False
    """The job had already ended: this delivery changed nothing."""
    deferred: bool = False
    """The job went back on the schedule, to be delivered again later."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a job may keep trying across deliveries."""

    outage_window: float = 3600.0
    max_deliveries: int = 5
    requeue_delay: float = 15.0
    max_requeue_delay: float = 300.0


@dataclass(slots=True)
class _Attempts:
    """What this delivery has learnt so far about its calls."""

    before: int
    made: int = 0
    maybe_applied: bool = False
    last_error: UpstreamUnavailable | None = None

    @property
    def total(self) -> int:
        return self.before + self.made


@dataclass(frozen=True, slots=True)
class _Job:
    """A valid job with its id, kind and the parts every record and event repeats."""

    id: str
    kind: JobKind
    body: Mapping[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self.body.get("metadata")
        return dict(metadata) if isinstance(metadata, Mapping) else {}


class JobRunner:
    """Runs delivered jobs against VideoSDK."""

    def __init__(
        self,
        *,
        client: VideoSDKClient,
        store: JobStore,
        events: Events,
        policy: RetryPolicy,
        claims: Claims,
        schedule: Schedule,
        dead_letters: DeadLetters,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._store = store
        self._events = events
        self._policy = policy
        self._claims = claims
        self._schedule = schedule
        self._dead = dead_letters
        self._limits = limits
        self._clock = clock

    def run_message(
        self, kind: JobKind, args: tuple[Any, ...], kwargs: dict[str, Any], *, task_id: str
    ) -> Outcome:
        """Run the job a task message carries (its arguments as Celery decoded them)."""
        try:
            raw = job_from_arguments(args, kwargs)
        except InvalidJob as exc:
            received = {"args": list(args), "kwargs": kwargs}
            job = _Job(task_id, kind, {})
            return self._finish(job, _Attempts(before=0), error=exc.info(), received=received)
        return self.run(kind, raw, job_id=job_id_of(raw, task_id))

    def run(self, kind: JobKind, raw: object, *, job_id: str) -> Outcome:
        """Run one delivery of a job and return how it ended; never raises for a job's fault."""
        try:
            body = validate(kind.name, raw, job_id=job_id)
        except InvalidJob as exc:
            partial = raw if isinstance(raw, Mapping) else {}
            job = _Job(job_id, kind, partial)
            return self._finish(job, _Attempts(before=0), error=exc.info(), received=raw)
        job = _Job(job_id, kind, body)
        claim = self._claims.acquire(job_id)
        if claim.status is ClaimStatus.DONE:
            return self._duplicate(job_id)
        if claim.status is ClaimStatus.BUSY:
            return self._defer(job, claim.retry_in + 1.0)
        try:
            return self._deliver(job, claim)
        finally:
            self._claims.release(job_id, claim)

    def refuse(self, job_id: str, task: str | None, *, reason: str, message: str) -> None:
        """Record a message the worker could not run at all: failed, dead-lettered, announced."""
        error = ErrorInfo(reason=reason, message=message)
        kind = BY_TASK.get(task or "")
        if kind is None:
            self._store.transition(job_id, State.FAILED, error=error)
            self._dead.add(job_id, task=task, job=None, error=error.to_json(), attempts=0)
            return
        self._finish(_Job(job_id, kind, {}), _Attempts(before=0), error=error)

    def _deliver(self, job: _Job, claim: Claim) -> Outcome:
        # An earlier delivery that made a call may have started the recording.
        attempts = _Attempts(before=claim.attempts, maybe_applied=claim.attempts > 0)
        if claim.deliveries > self._limits.max_deliveries:
            error = ErrorInfo(
                reason="too_many_deliveries",
                message=f"delivered {claim.deliveries} times without finishing "
                f"(at most {self._limits.max_deliveries}): a worker may be dying on it",
            )
            return self._finish(job, attempts, error=error)
        try:
            self._policy.call(
                lambda: self._call(job, attempts),
                before=lambda _state: self._before_attempt(job, attempts),
            )
        except UpstreamUnavailable as exc:
            return self._requeue_or_fail(job, attempts, claim, exc)
        except UpstreamError as exc:
            if attempts.maybe_applied and refused_as_already_running(exc):
                return self._finish(job, attempts, reconciled=True)
            return self._finish(job, attempts, error=exc.info())
        return self._finish(job, attempts)

    def _call(self, job: _Job, attempts: _Attempts) -> None:
        attempts.made += 1
        try:
            self._client.post(job.kind.endpoint, job.kind.request_body(job.body))
        except UpstreamUnavailable as exc:
            attempts.maybe_applied = attempts.maybe_applied or exc.maybe_applied
            attempts.last_error = exc
            raise

    def _before_attempt(self, job: _Job, attempts: _Attempts) -> None:
        number = attempts.total + 1
        state = State.RUNNING if attempts.made == 0 else State.RETRYING
        self._record(job, state, attempt=number)
        if attempts.last_error is not None:
            self._announce(job, "retrying", state, number, error=attempts.last_error.info())

    def _requeue_or_fail(
        self,
        job: _Job,
        attempts: _Attempts,
        claim: Claim,
        error: UpstreamUnavailable,
    ) -> Outcome:
        now = self._clock()
        since = claim.outage_since or now
        requeues = claim.requeues
        delay = min(self._limits.requeue_delay * 2**requeues, self._limits.max_requeue_delay)
        delay = max(delay, error.retry_after or 0.0)
        info = error.info()
        if now + delay - since > self._limits.outage_window:
            window = f"VideoSDK stayed unavailable beyond the {self._limits.outage_window:.0f} s"
            final = dataclasses.replace(info, message=f"{info.message} ({window} outage window)")
            return self._finish(job, attempts, error=final)
        self._record(
            job,
            State.RETRYING,
            attempt=attempts.total,
            error=info,
            extra={"outageSince": since, "requeues": requeues + 1, "retryAt": now + delay},
        )
        self._schedule.add(Delivery(job.id, job.kind.task_name, dict(job.body), now + delay))
        self._announce(job, "retrying", State.RETRYING, attempts.total, error=info)
        return Outcome(job.id, State.RETRYING, attempts.total, error=info, deferred=True)

    def _defer(self, job: _Job, delay: float) -> Outcome:
        due = self._clock() + delay
        self._schedule.add(Delivery(job.id, job.kind.task_name, dict(job.body), due))
        record = self._store.get(job.id)
        state = record.state if record else State.QUEUED
        return Outcome(job.id, state, record.attempts if record else 0, deferred=True)

    def _duplicate(self, job_id: str) -> Outcome:
        record = self._store.get(job_id)
        if record is None:  # its state expired between the claim and this read
            return Outcome(job_id, State.SUCCEEDED, 0, duplicate=True)
        error = ErrorInfo.from_json(record.error) if record.error else None
        return Outcome(
            job_id, record.state, record.attempts, error, record.reconciled, duplicate=True
        )

    def _finish(
        self,
        job: _Job,
        attempts: _Attempts,
        *,
        error: ErrorInfo | None = None,
        reconciled: bool = False,
        received: object = None,
    ) -> Outcome:
        state = State.FAILED if error else State.SUCCEEDED
        self._record(job, state, attempt=attempts.total, error=error, reconciled=reconciled)
        if error is not None:
            self._dead.add(
                job.id,
                task=job.kind.task_name,
                job=received if received is not None else dict(job.body),
                error=error.to_json(),
                attempts=attempts.total,
            )
        outcome = "failed" if error else "started"
        self._announce(job, outcome, state, attempts.total, error=error, reconciled=reconciled)
        return Outcome(job.id, state, attempts.total, error=error, reconciled=reconciled)

    def _record(
        self,
        job: _Job,
        state: State,
        *,
        attempt: int,
        error: ErrorInfo | None = None,
        reconciled: bool = False,
        extra: Mapping[str, float | int] | None = None,
    ) -> None:
        self._store.transition(
            job.id,
            state,
            kind=job.kind.name,
            attempt=attempt,
            target=job.kind.target(job.body),
            metadata=job.metadata,
            error=error,
            reconciled=reconciled,
            extra=extra,
        )

    def _announce(
        self,
        job: _Job,
        outcome: str,
        state: State,
        attempt: int,
        *,
        error: ErrorInfo | None = None,
        reconciled: bool = False,
    ) -> None:
        self._events.publish(
            build_event(
                job.kind.event_type(outcome),
                job_id=job.id,
                kind=job.kind.name,
                state=state,
                target=job.kind.target(job.body),
                attempt=attempt,
                metadata=job.metadata,
                error=error,
                reconciled=reconciled,
            )
        )
