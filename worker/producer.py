"""The producer API: validate jobs, record them as queued, and publish them for the workers.

Bad jobs fail here first, before anything is published: :meth:`Producer.enqueue_many` checks
every job of a batch and publishes none of them if one is invalid. A job's id is its ``jobId``
when it names one (the idempotency key), else a fresh UUID; it becomes the Celery task id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError

from worker.errors import BrokerUnavailable, InvalidJob
from worker.jobs import JobKind
from worker.state import State
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
        valid: list[dict[str, Any]] = []
        rejected: list[RejectedJob] = []
        for index, job in enumerate(jobs):
            try:
                valid.append(validate(kind.name, job))
            except InvalidJob as exc:
                rejected.append(RejectedJob(index, exc))
        if rejected:
            raise BatchRejected(rejected)
        return [self._publish(kind, job) for job in valid]

    def _publish(self, kind: JobKind, job: dict[str, Any]) -> str:
        job_id = job.get("jobId") or str(uuid.uuid4())
        metadata = job.get("metadata") or {}
        store = self._app.store
        store.transition(
            job_id, State.QUEUED, kind=kind.name, target=kind.target(job), metadata=metadata
        )
        try:
            self._app.send_task(
                kind.task_name,
                kwargs={"job": job},
                task_id=job_id,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except OperationalError as exc:
            error = BrokerUnavailable(f"the broker did not take job {job_id}: {exc}")
            store.transition(job_id, State.FAILED, error=error.info())
            raise error from None
        return str(job_id)
