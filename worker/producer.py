"""The producer API: validate jobs, record them as queued, and publish them for the workers.

Bad jobs fail here first, before anything is published: :meth:`Producer.enqueue_many` checks
every job of a batch and publishes none of them if one is invalid, names a ``jobId`` an earlier
job of the batch already took (one of the two would be lost), or is a start already past its
deadline (it could only fail). A job's id is its ``jobId`` when it names one (the idempotency
key), else a fresh UUID; it becomes the Celery task id.

A job due later (``startAt``, or a stop job's ``stopAt``) is not published yet: it is recorded
``scheduled`` and put on the durable schedule in Redis, from which the workers publish it when it
comes due (see :mod:`worker.scheduler`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.errors import (
    UNREACHABLE,
    BrokerUnavailable,
    InvalidJob,
    UnknownJob,
    Violation,
    which_failed,
)
from worker.jobs import BY_TASK, Job, JobKind
from worker.publisher import CHUNK, TaskMessage
from worker.state import Queued, epoch_iso
from worker.timing import Timing, optional_time
from worker.validation import validate

if TYPE_CHECKING:
    from worker.celery_app import RecqCelery

# A producer facing a down broker gets an error after about two seconds, never a hang.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.4, "interval_max": 1}


@dataclass(frozen=True, slots=True)
class RejectedJob:
    """One job of a batch that failed validation, with its position in the batch."""

    index: int
    error: InvalidJob


class BatchRejected(InvalidJob):
    """Some jobs of a batch are invalid; none of the batch was published."""

    def __init__(self, rejected: Sequence[RejectedJob]) -> None:
        self.rejected = tuple(rejected)
        first = self.rejected[0]
        super().__init__(first.error.violations, job_id=first.error.job_id)
        self.args = (f"{len(self.rejected)} invalid job(s); nothing was published",)


class Producer:
    """Publishes jobs onto the broker for recq workers."""

    def __init__(self, app: RecqCelery) -> None:
        self._app = app

    def enqueue(self, kind: JobKind, job: Mapping[str, Any]) -> str:
        """Validate and publish one job; return its id. Raises InvalidJob or BrokerUnavailable."""
        return self.enqueue_many(kind, [job])[0]

    def enqueue_many(self, kind: JobKind, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Validate every job, then publish them all; return their ids in order."""
        valid, rejected = self.check(kind, jobs)
        if rejected:
            raise BatchRejected(rejected)
        ids = [job.get("jobId") or str(uuid.uuid4()) for job in valid]
        try:
            self._publish_all(kind, list(zip(ids, valid, strict=True)))
        except UNREACHABLE as exc:
            raise BrokerUnavailable(f"could not publish the jobs: {which_failed(exc)}") from None
        return ids

    def _publish_all(self, kind: JobKind, jobs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Hold the jobs due later; record the others queued and publish them, a chunk at a
        time (:mod:`worker.enqueuer`)."""
        app = self._app
        now: list[tuple[str, dict[str, Any]]] = []
        for job_id, job in jobs:
            timing = self._due_later(kind, job)
            if timing is not None:
                app.producer_scheduler.hold(Job(job_id, kind, job), timing)
            else:
                now.append((job_id, job))
        for start in range(0, len(now), CHUNK):
            app.producer_enqueuer.enqueue(
                [
                    (
                        Queued(job_id, kind.name, kind.target(job), job.get("metadata") or {}),
                        TaskMessage(kind.task_name, job_id, job),
                    )
                    for job_id, job in now[start : start + CHUNK]
                ]
            )

    def replay(self, job_id: str) -> str:
        """Publish a dead letter's job again under the same id, after validating it again."""
        letter = self._app.dead_letters.get(job_id)
        if letter is None:
            raise UnknownJob(job_id, f"no dead letter {job_id!r}")
        kind = BY_TASK.get(letter.task or "")
        if kind is None:
            raise InvalidJob([Violation("", "unknown-task", f"no task is named {letter.task!r}")])
        job = validate(kind.name, letter.job, job_id=job_id)
        app = self._app
        try:
            timing = self._due_later(kind, job)
            if timing is not None:
                app.producer_scheduler.hold(Job(job_id, kind, job), timing, fresh=True)
            else:
                # Not in one script with its message (worker.enqueuer): a replay is queued
                # again whatever its state, its counters cleared. A crash between the two
                # leaves the dead letter, removed only below, to replay again.
                app.producer_store.enqueue(
                    job_id,
                    kind=kind.name,
                    target=kind.target(job),
                    metadata=job.get("metadata") or {},
                    fresh=True,
                )
                app.task_publisher.publish([TaskMessage(kind.task_name, job_id, job)])
        except UNREACHABLE as exc:
            raise BrokerUnavailable(
                f"could not publish job {job_id}: {which_failed(exc)}"
            ) from None
        app.dead_letters.remove(job_id)
        return job_id

    def check(
        self, kind: JobKind, jobs: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[RejectedJob]]:
        """What :meth:`enqueue_many` checks, publishing nothing: the valid jobs, and the others
        with their positions and violations."""
        valid: list[dict[str, Any]] = []
        rejected: list[RejectedJob] = []
        named: set[str] = set()
        now = time.time()
        for index, job in enumerate(jobs):
            try:
                body = validate(kind.name, job)
                self._refuse_unrunnable(kind, body, named, now)
            except InvalidJob as exc:
                rejected.append(RejectedJob(index, exc))
            else:
                valid.append(body)
        return valid, rejected

    def _refuse_unrunnable(
        self, kind: JobKind, job: Mapping[str, Any], named: set[str], now: float
    ) -> None:
        """Raise InvalidJob for a valid job that still cannot run as given: its ``jobId`` taken
        by an earlier job of the batch (``named``, which it joins), or its start deadline past."""
        job_id = job.get("jobId")
        if job_id is not None:
            if job_id in named:
                message = (
                    f"{job_id!r} is already the jobId of an earlier job here: each job needs "
                    "its own, or one of the two is lost"
                )
                raise InvalidJob([Violation("jobId", "duplicate", message)], job_id=job_id)
            named.add(job_id)
        timing = kind.timing(job, grace=self._app.settings.start_grace)
        if timing.deadline is not None and timing.past_deadline(now):
            field = _deadline_field(job, timing.deadline)
            message = (
                f"puts the start deadline at {epoch_iso(timing.deadline)}, already past: the "
                "job could only fail (start_deadline_passed); give a later time"
            )
            raise InvalidJob([Violation(field, "too-late", message)], job_id=job_id)

    def _due_later(self, kind: JobKind, job: Mapping[str, Any]) -> Timing | None:
        """The job's timing when it is due later than now and is to be held until then."""
        timing = kind.timing(job, grace=self._app.settings.start_grace)
        return timing if timing.early(time.time()) else None


def _deadline_field(job: Mapping[str, Any], deadline: float) -> str:
    """The field that set a start's deadline: ``stopAt`` when it is the earlier, else
    ``startDeadline`` when given, else ``startAt`` (plus the start grace)."""
    if "stopAt" in job and optional_time(job, "stopAt") == deadline:
        return "stopAt"
    return "startDeadline" if "startDeadline" in job else "startAt"
