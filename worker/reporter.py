"""Telling what happened to a job: its state in the store, its event, and its dead letter.

The runner, the scheduler and the producer all report through one :class:`Reporter`, so a job's
record and its events always say the same thing in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.dead_letters import DeadLetters
from worker.errors import ErrorInfo
from worker.events import Events, build_event
from worker.jobs import Job
from worker.state import Extra, JobStore, State


@dataclass(frozen=True, slots=True)
class Report:
    """What to say about a job: its state, and whatever else is known at that moment."""

    state: State
    attempt: int = 0
    error: ErrorInfo | None = None
    reconciled: bool = False
    due_at: float | None = None
    """When it runs next (scheduled and waiting jobs)."""
    deadline: float | None = None


class Reporter:
    """Records states, publishes events and keeps dead letters."""

    def __init__(self, store: JobStore, events: Events, dead_letters: DeadLetters) -> None:
        self.store = store
        self._events = events
        self._dead = dead_letters

    def record(self, job: Job, report: Report, *, extra: Extra | None = None) -> None:
        """Write the job's new state, with its kind, target, metadata and times."""
        fields = dict(extra or {})
        if report.due_at is not None:
            fields["dueAt"] = report.due_at
        if report.deadline is not None:
            fields["deadline"] = report.deadline
        self.store.transition(
            job.id,
            report.state,
            kind=job.kind.name,
            attempt=report.attempt,
            target=job.target,
            metadata=job.metadata,
            error=report.error,
            reconciled=report.reconciled,
            extra=fields,
        )

    def announce(self, job: Job, outcome: str, report: Report) -> None:
        """Publish the event ``<prefix>.<outcome>`` about the job."""
        self._events.publish(
            build_event(
                job.kind.event_type(outcome),
                job_id=job.id,
                kind=job.kind.name,
                state=report.state,
                target=job.target,
                attempt=report.attempt,
                metadata=job.metadata,
                error=report.error,
                reconciled=report.reconciled,
                due_at=report.due_at,
                deadline=report.deadline,
            )
        )

    def dead_letter(
        self, job_id: str, *, task: str | None, job: object, error: ErrorInfo, attempts: int
    ) -> None:
        """Keep a failed job, as it was received, for an operator to inspect and replay."""
        self._dead.add(job_id, task=task, job=job, error=error.to_json(), attempts=attempts)
