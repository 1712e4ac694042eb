"""Telling what happened to a job: its state in the store, its event, and its dead letter.

The runner, the scheduler and the producer all report through one :class:`Reporter`, so a job's
record and its events always say the same thing in the same words. It is also where a batch
learns that a child ended: every terminal state passes here, and the child that completes its
batch records the batch's outcome and publishes ``batch.completed`` with every child's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.batches import Batches, Counted, Progress, child_outcomes
from worker.dead_letters import DeadLetters
from worker.errors import ErrorInfo
from worker.events import Event, Events, build_event
from worker.jobs import BY_NAME, Job
from worker.metrics import Metrics
from worker.scripts import ScriptCall
from worker.state import Extra, JobStore, State

logger = logging.getLogger(__name__)
_RECOMPLETIONS = 5
"""How many times a completion writes again while replayed children keep changing the counts."""


@dataclass(frozen=True, slots=True)
class Report:
    """What to say about a job: its state, and whatever else is known at that moment."""

    state: State
    attempt: int = 0
    unapplied: int | None = None
    """Of the attempts, how many were answered in a way that proves they changed nothing (a
    429, a refusal, a connection never made): recorded (as ``unapplied``), never announced.
    None leaves the recorded count as it is."""
    error: ErrorInfo | None = None
    reconciled: bool = False
    due_at: float | None = None
    """When it runs next (scheduled and waiting jobs)."""
    deadline: float | None = None
    counts: Mapping[str, int] | None = None
    """A batch's counts: total, succeeded, failed, pending."""
    children: Sequence[Mapping[str, Any]] | None = None
    """A completed batch's children, each with its outcome."""


class Reporter:
    """Records states, publishes events and keeps dead letters; completes batches."""

    def __init__(
        self,
        store: JobStore,
        events: Events,
        dead_letters: DeadLetters,
        batches: Batches | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self._events = events
        self._dead = dead_letters
        self._batches = batches
        self._metrics = metrics or Metrics()

    def record(
        self,
        job: Job,
        report: Report,
        *,
        extra: Extra | None = None,
        release: tuple[str, str] | None = None,
        unless_ended: bool = False,
        keep_until: float | None = None,
    ) -> bool:
        """Write the job's new state, with its kind, target, metadata and times; with
        ``release`` (a claim's key and token), give the delivery's claim back in the same write.
        With ``unless_ended``, a job that has ended is left as it is: False. With
        ``keep_until``, the record is kept until a TTL after it (:meth:`JobStore.keep`)."""
        write = self.write_call(
            job, report, extra, release, unless_ended=unless_ended, keep_until=keep_until
        )
        if write.run():
            return False
        self._recorded(job, report)
        return True

    def announce(self, job: Job, outcome: str, report: Report) -> None:
        """Publish the event ``<prefix>.<outcome>`` about the job."""
        self._events.publish(self._event(job, outcome, report))

    def record_and_announce(
        self,
        job: Job,
        outcome: str,
        report: Report,
        *,
        extra: Extra | None = None,
        release: tuple[str, str] | None = None,
        keep_until: float | None = None,
    ) -> None:
        """:meth:`record` and then :meth:`announce`, in one round trip to Redis where the event
        is published on the state store's Redis (the default). With ``keep_until`` (a stop's
        due time), the record is kept until a TTL after it (:meth:`JobStore.keep`)."""
        write = self.write_call(job, report, extra, release, keep_until=keep_until)
        self._events.publish(self._event(job, outcome, report), after=write)
        self._recorded(job, report)

    def running_write(self, job: Job) -> ScriptCall:
        """The write recording ``job`` running, without the attempt's number: for a claim that
        counts the attempt and makes the write itself (:class:`worker.claims.Start`)."""
        return self.store.write_call(
            job.id, State.RUNNING, kind=job.kind.name, target=job.target, metadata=job.metadata
        )

    def write_call(
        self,
        job: Job,
        report: Report,
        extra: Extra | None = None,
        release: tuple[str, str] | None = None,
        *,
        unless_ended: bool = False,
        keep_until: float | None = None,
    ) -> ScriptCall:
        """:meth:`record`'s write, to make in a step of a caller's own (a reschedule's)."""
        fields = dict(extra or {})
        if report.due_at is not None:
            fields["dueAt"] = report.due_at
        if report.deadline is not None:
            fields["deadline"] = report.deadline
        if report.unapplied is not None:
            fields["unapplied"] = report.unapplied
        return self.store.write_call(
            job.id,
            report.state,
            kind=job.kind.name,
            attempt=report.attempt,
            target=job.target,
            metadata=job.metadata,
            error=report.error,
            reconciled=report.reconciled,
            extra=fields,
            release=release,
            unless_ended=unless_ended,
            keep_until=keep_until,
        )

    def _recorded(self, job: Job, report: Report) -> None:
        """What follows a recorded state: a terminal one is counted, logged, and told to its
        batch, whose last child completes it."""
        if not report.state.terminal:
            return
        self._metrics.jobs.labels(kind=job.kind.name, outcome=report.state.value).inc()
        # Celery already logs every task at INFO: recq adds a line of its own for failures.
        level = logging.WARNING if report.state is State.FAILED else logging.DEBUG
        logger.log(level, "%s %s (attempt %d)", job.kind.name, report.state.value, report.attempt)
        # A child knows its batch from its claim (or its record): no extra read per transition.
        if job.batch_id is not None and self._batches is not None:
            succeeded = report.state is State.SUCCEEDED
            counted = self._batches.child_ended(job.batch_id, job.id, succeeded=succeeded)
            if counted in (Counted.COMPLETED, Counted.CHANGED):
                self._complete(job.batch_id, first=counted is Counted.COMPLETED)

    @property
    def batches(self) -> Batches:
        """The batches this reporter counts children in (a cancel reads a batch's progress)."""
        if self._batches is None:
            raise RuntimeError("this reporter was built without batches")
        return self._batches

    def ended_again(self, job: Job, state: State) -> None:
        """Tell a child's end to its batch again, from a delivery that found the child ended.

        The delivery that ended it may have died (or lost Redis) after the child's write but
        before its count, or after the count that made it the last but before the batch was
        recorded complete. Counting is once per child, so a true duplicate changes nothing.
        """
        if job.batch_id is None or self._batches is None:
            return
        succeeded = state is State.SUCCEEDED
        counted = self._batches.child_ended(job.batch_id, job.id, succeeded=succeeded)
        if counted is Counted.CHANGED:
            self._complete(job.batch_id, first=False)
            return
        # Not the last: complete it still if every child was counted but the batch was never
        # recorded ended (the delivery that counted the last one died before recording it).
        self._complete(job.batch_id, first=True, only_if_left=counted is not Counted.COMPLETED)

    def _event(self, job: Job, outcome: str, report: Report) -> Event:
        return build_event(
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
            batch_id=job.batch_id,
            counts=report.counts,
            children=report.children,
        )

    def dead_letter(
        self, job_id: str, *, task: str | None, job: object, error: ErrorInfo, attempts: int
    ) -> None:
        """Keep a failed job, as it was received, for an operator to inspect and replay."""
        self._dead.add(job_id, task=task, job=job, error=error.to_json(), attempts=attempts)

    def _complete(self, batch_id: str, *, first: bool, only_if_left: bool = False) -> None:
        """Record and announce a batch whose last child just ended; ``only_if_left``, only if
        every child was counted and the batch is not recorded ended.

        ``first``: the batch's first completion, recorded and announced once. The delivery that
        counted the last child and one that repairs its work (a child's duplicate, which finds
        every child counted and the batch not yet recorded) may both get here: the record is
        written unless the batch ended, and only the write that made it announces. Later
        completions (``first`` False: a failed child replayed to success) always write."""
        assert self._batches is not None  # noqa: S101 - only called when batches are counted
        progress = self._batches.progress(batch_id)
        if progress is None or (only_if_left and not progress.completed):
            return
        record = self.store.get(batch_id)
        if record is None or (only_if_left and record.state.terminal):
            return
        body = self._batches.job(batch_id)
        if body is None:  # expired meanwhile
            return
        batch = Job(batch_id, BY_NAME[record.kind or "bulk-track-recording"], body)
        # Its children's stops wait for its stopAt: a cancel or a move of the batch acts on
        # them, so the batch is kept until a TTL after it.
        stop_at = batch.kind.timing(body).stop_at
        if stop_at is not None:
            self._batches.keep(batch_id, stop_at)
        # Children replayed to success at once each complete the batch again: whichever writes
        # last may have read older counts, so each writer reads them again after its write and
        # writes anew until they hold still. The last write then has the latest counts.
        for _ in range(_RECOMPLETIONS):
            report = self._outcome(batch, progress)
            if first:
                if not self.record(batch, report, unless_ended=True, keep_until=stop_at):
                    return  # another writer completed it, and goes on from here
                self.announce(batch, "completed", report)
                first = False
            else:
                self.record_and_announce(batch, "completed", report, keep_until=stop_at)
            latest = self._batches.progress(batch_id)
            if latest is None or latest.counts() == progress.counts():
                return
            progress = latest

    def _outcome(self, batch: Job, progress: Progress) -> Report:
        """A completed batch's report, from its counts and its children's records."""
        outcomes = child_outcomes(self.store, batch)
        cancelled = sum(outcome["state"] == State.CANCELLED for outcome in outcomes)
        failure = None
        if progress.failed == 0:
            state = State.SUCCEEDED
        elif progress.succeeded == 0 and cancelled == progress.total:
            state = State.CANCELLED  # every child cancelled (recq cancel on the batch)
        elif progress.succeeded == 0:
            state = State.FAILED
            of_them = f" ({cancelled} of them cancelled)" if cancelled else ""
            message = f"all {progress.total} children failed{of_them}"
            failure = ErrorInfo("children_failed", message)
        else:
            state = State.PARTIALLY_FAILED
        return Report(state, error=failure, counts=progress.counts(), children=outcomes)
