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

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.errors import (
    UNREACHABLE,
    BrokerUnavailable,
    ErrorInfo,
    InvalidJob,
    JobConflict,
    UnknownJob,
    Violation,
    which_failed,
)
from worker.jobs import BY_TASK, Job, JobKind
from worker.publisher import CHUNK, TaskMessage, queue_envelope
from worker.state import Queued, State, epoch_iso
from worker.timing import Timing
from worker.validation import validate

if TYPE_CHECKING:
    from worker.celery_app import RecqCelery
    from worker.dead_letters import DeadLetter

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
        if not letter.job:
            # Its message could not be run at all (malformed, undecodable): validating the
            # nothing it kept said "roomId is required", as if the job had been written wrong.
            reason = letter.error["reason"]
            raise InvalidJob(
                [
                    Violation(
                        "",
                        "no-job",
                        f"the dead letter keeps no job to replay: its message could not be run "
                        f"({reason}); publish the job again instead",
                    )
                ],
                job_id=job_id,
            )
        job = validate(kind.name, letter.job, job_id=job_id)
        if (too_late := _too_late(kind, job, self._app.fleet_time)) is not None:
            raise InvalidJob([too_late], job_id=job_id)
        app = self._app
        replayed = Job(job_id, kind, job)
        try:
            timing = self._due_later(kind, job)
            if timing is not None:
                found = app.producer_scheduler.hold(
                    replayed, timing, fresh=True, replacing=State.FAILED
                )
            else:
                # Queued again, its counters cleared, and its message pushed by the same script
                # on the default broker (worker.enqueuer). On another, published after: a crash
                # between the two leaves the dead letter, removed only below, and the job
                # queued (see _not_replayable).
                message = TaskMessage(kind.task_name, job_id, job)
                queue = app.settings.queue
                push = (queue, queue_envelope(message, queue)) if app.broker_is_store else None
                found = app.producer_store.enqueue(
                    job_id,
                    kind=kind.name,
                    target=kind.target(job),
                    metadata=job.get("metadata") or {},
                    fresh=True,
                    replacing=State.FAILED,
                    push=push,
                )
                if found is None and push is None:
                    self._publish_replay(message, letter)
        except UNREACHABLE as exc:
            raise BrokerUnavailable(
                f"could not publish job {job_id}: {which_failed(exc)}"
            ) from None
        if found is not None:
            raise _not_replayable(app, letter, found)
        # Unless its replay failed again already: that newer letter stays.
        app.dead_letters.remove_if_unchanged(letter)
        return job_id

    def _publish_replay(self, message: TaskMessage, letter: DeadLetter) -> None:
        """Publish a replayed job; if the broker refuses it, the job is failed again as its
        letter says (it was recorded queued, with nothing on its way), so that the replay can
        be made again."""
        try:
            self._app.task_publisher.publish([message])
        except UNREACHABLE:
            self._app.producer_store.transition(
                message.job_id, State.FAILED, error=ErrorInfo.from_json(letter.error)
            )
            raise

    def check(
        self, kind: JobKind, jobs: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[RejectedJob]]:
        """What :meth:`enqueue_many` checks, publishing nothing: the valid jobs, and the others
        with their positions and every violation.

        Besides its schema, a job must not take a ``jobId`` an earlier job of the batch took
        (one of the two would be lost), and a start must not be past a ``startDeadline`` or
        ``stopAt`` it names: it could only fail. (Not ``startAt`` plus the start grace, which
        is the workers' setting.) A job that already ended is left as it was by the enqueue
        whatever its times, so it is not refused for them.
        """
        named: set[str] = set()
        checked: list[dict[str, Any] | InvalidJob] = []
        late: dict[int, tuple[str, dict[str, Any]]] = {}  # starts past a deadline they name
        for index, job in enumerate(jobs):
            job_id = job.get("jobId") if isinstance(job, Mapping) else None
            named_id = job_id if isinstance(job_id, str) else None
            found: list[Violation] = []
            if named_id is not None:
                if named_id in named:
                    found.append(_duplicate(named_id))
                named.add(named_id)
            try:
                body = validate(kind.name, job)
            except InvalidJob as exc:
                found[:0] = exc.violations
            else:
                too_late = None if found else _too_late(kind, body, self._app.fleet_time)
                if too_late is not None:
                    found.append(too_late)
                    if named_id is not None:
                        late[index] = (named_id, body)
            checked.append(InvalidJob(found, job_id=named_id) if found else body)
        ended = self._ended([job_id for job_id, _body in late.values()])
        for (index, (_job_id, body)), gone in zip(late.items(), ended, strict=True):
            if gone:  # the enqueue leaves it as it was
                checked[index] = body
        valid = [job for job in checked if not isinstance(job, InvalidJob)]
        rejected = [
            RejectedJob(index, error)
            for index, error in enumerate(checked)
            if isinstance(error, InvalidJob)
        ]
        return valid, rejected

    def _ended(self, job_ids: Sequence[str]) -> list[bool]:
        """Whether each job has ended (one round trip; none for no ids)."""
        if not job_ids:
            return []
        states = self._app.producer_store.states(job_ids)
        return [state is not None and state.terminal for state, _error in states]

    def _due_later(self, kind: JobKind, job: Mapping[str, Any]) -> Timing | None:
        """The job's timing when it is due later than now and is to be held until then."""
        timing = kind.timing(job, grace=self._app.settings.start_grace)
        if timing.due is None:
            return None  # due now: the fleet's time is not read
        return timing if timing.early(self._app.fleet_time()) else None


def _duplicate(job_id: str) -> Violation:
    message = (
        f"{job_id!r} is already the jobId of an earlier job here: each job needs its own, or "
        "one of the two is lost"
    )
    return Violation("jobId", "duplicate", message)


def _not_replayable(app: RecqCelery, letter: DeadLetter, found: State) -> JobConflict:
    """Why a dead letter's job was not replayed: it is no longer failed. A letter whose job
    ended since (its earlier replay succeeded, but the letter was left: that replay's process
    died before removing it) is out of date and removed; replaying it could start a recording
    that was stopped since."""
    if found.terminal:
        app.dead_letters.remove_if_unchanged(letter)
        return JobConflict(
            f"job {letter.job_id} is {found} since this letter was kept: nothing was replayed, "
            "and the out-of-date letter is removed"
        )
    return JobConflict(
        f"job {letter.job_id} is {found}: it is being replayed or run already, nothing was "
        "replayed (if it stays so, its message was lost: enqueue the job again)"
    )


def _too_late(kind: JobKind, job: Mapping[str, Any], now: Callable[[], float]) -> Violation | None:
    """The violation of a start already past a deadline it names (``startDeadline`` or
    ``stopAt``, the earlier of the two), or None. The job's timing as a worker judges it, but
    with an endless start grace: the grace is the workers' setting, not the job's. ``now`` is
    read only for a job with a deadline."""
    timing = kind.timing(job, grace=math.inf)
    if timing.deadline is None or not timing.past_deadline(now()):
        return None
    deadline = timing.deadline
    field = "stopAt" if deadline == timing.stop_at else "startDeadline"
    message = (
        f"puts the start deadline at {epoch_iso(deadline)}, already past: the job could only "
        "fail (start_deadline_passed); give a later time"
    )
    return Violation(field, "too-late", message)
