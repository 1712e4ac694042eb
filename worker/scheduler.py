"""Scheduled jobs: holding a job until its time, and cancelling or moving it before then.

A job due later (its ``startAt``, or a stop job's ``stopAt``) is not published on the broker,
where a long countdown is redelivered and run twice (see :mod:`worker.schedule`): it is recorded
``scheduled`` and put on the durable schedule, which the workers' dispatchers publish from when it
comes due. The producer holds future jobs this way; so does a worker given a job early (from a
producer in another language), and a start with ``stopAt`` holds its stop job once it succeeded.

Cancelling is one Lua script over the job's state, its claim and the schedule, so it can never
race a delivery: either the job is cancelled before any delivery claims it (a later delivery then
finds it ended and makes no call), or a delivery holds it and the cancel is refused. A start one
of whose attempts may have started its recording unanswered has its stop held by the same
script: no cancel, however it is cut short, leaves such a recording without its stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.errors import InvalidJob, JobConflict, UnknownJob
from worker.jobs import BY_NAME, BY_TASK, STOP_SUFFIX, Job, child_jobs, stop_job_for
from worker.rate_limit import RateLimiter
from worker.reporter import Report, Reporter
from worker.schedule import Delivery, Schedule
from worker.scripts import as_text
from worker.state import WRITE_FUNCTION, Extra, JobRecord, State, epoch_iso
from worker.timing import DEFAULT_GRACE, Timing
from worker.validation import validate

# KEYS: the job's hash, its claim, the schedule's keys (pending, in flight, deliveries), then for
# a start its stop job's hash and history, for a batch its batch hash. ARGV: the job's id, '1'
# for a batch, then for a start its stop job's id, schedule entry and due time, and the stop's
# state write (write_state's ARGV). Answers 'unknown', 'published' (a batch whose fan-out began,
# even if enqueued again since: its record may say queued), 'running' (claimed) or
# 'ended:<state>'; or 'cancelled', the job's attempts, and 'held' when it held the stop.
_CANCEL = (
    WRITE_FUNCTION
    + """
local job = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'unapplied')
local state = job[1]
if not state then return {'unknown'} end
if terminal[state] then return {'ended:' .. state} end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then return {'published'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'running'} end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'cancelled')
local attempts = tonumber(job[2] or '0')
if not ARGV[3] or attempts <= tonumber(job[3] or '0') then
  return {'cancelled', attempts, ''}
end
if write_state({KEYS[6], KEYS[7]}, {unpack(ARGV, 6)}) then
  return {'cancelled', attempts, ''}
end
redis.call('HSET', KEYS[5], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[1], 'stopJobId', ARGV[3])
return {'cancelled', attempts, 'held'}
"""
)

# A delivery holds its claim for a moment even when it only checks whether the meeting is live;
# a cancel that meets one tries again for this long before saying the job is running.
_BUSY_RETRY = (0.1, 0.2, 0.4, 0.8, 1.0)
_REPLACE_TRIES = 3


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What a cancel did."""

    job: Job
    """The job named."""
    cancelled: tuple[str, ...] = ()
    """The jobs cancelled before they ran: the one named, or a batch's children."""
    pending_stops: tuple[tuple[str, str], ...] = ()
    """The stops cancelled, each with its start (which succeeded: its recording keeps
    running): the named job's, or its children's for a batch."""
    stops: tuple[str, ...] = ()
    """Stops held, due now, for cancelled starts an unanswered attempt may have started."""
    busy: tuple[str, ...] = ()
    """A batch's children being run at that moment: not cancelled."""


@dataclass(frozen=True, slots=True)
class Moves:
    """What moving a batch's stop did to its children."""

    job: Job
    """The batch."""
    moved: tuple[str, ...]
    """The jobs moved: children still waiting on the schedule, and started children's stops."""
    refused: tuple[tuple[str, str], ...] = ()
    """Children that could not be moved (being run, or the time is invalid for them), and why."""


@dataclass(frozen=True, slots=True)
class _Tried:
    """One run of the cancel script: its answer, the job named and the job it acted on (the
    same, or the named start's pending stop), and the stop it held."""

    answer: str
    named: Job
    job: Job
    stops: tuple[str, ...] = ()

    def done(self) -> dict[str, tuple[Any, ...]]:
        """What this try cancelled, as :class:`Cancellation`'s fields."""
        if self.job.id == self.named.id:
            return {"cancelled": (self.job.id,), "pending_stops": (), "stops": self.stops}
        return {"cancelled": (), "pending_stops": ((self.named.id, self.job.id),), "stops": ()}


class Scheduler:
    """Holds jobs until they are due; cancels and reschedules them."""

    def __init__(
        self,
        *,
        schedule: Schedule,
        reporter: Reporter,
        claim_key: Callable[[str], str],
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._schedule = schedule
        self._limiter = limiter
        self._reporter = reporter
        self._store = reporter.store
        self._claim_key = claim_key
        self._grace = grace
        self._clock = clock
        self._sleep = sleep
        self._cancel: Any = schedule.redis.register_script(_CANCEL)

    def hold(
        self,
        job: Job,
        timing: Timing,
        *,
        fresh: bool = False,
        stopping: str | None = None,
        replacing: State | None = None,
        announce: bool = True,
    ) -> State | None:
        """Record ``job`` scheduled, put it on the schedule until ``timing.due``, and publish
        its ``scheduled`` event (unless not ``announce``).

        A job that already ended is left alone (unless ``fresh``, a replay): its terminal state
        is returned instead. A stop held for a start that ran already names that start in
        ``stopping``: the start's record then names it as its stop job, in the same step. With
        ``replacing``, only a job in that state is held (see :meth:`JobStore.enqueue`).
        """
        report, extra, delivery = _holding(job, timing)

        def then(pipe: Any) -> None:
            self._schedule.add(delivery, within=pipe)
            if stopping is not None:
                pipe.hset(self._store.key(stopping), "stopJobId", job.id)
                self._store.keep(stopping, delivery.due, within=pipe)

        ended = self._store.enqueue(
            job.id,
            kind=job.kind.name,
            target=job.target,
            metadata=job.metadata,
            state=State.SCHEDULED,
            extra=extra,
            fresh=fresh,
            # One transaction: a producer dying between the two would leave the job recorded
            # scheduled with nothing to ever deliver it.
            then=then,
            replacing=replacing,
        )
        if ended is not None:
            return ended
        if announce:
            self._reporter.announce(job, "scheduled", report)
        return None

    def hold_stop(self, start: Job, *, at: str | None = None) -> HeldStop:
        """Hold the stop job of ``start`` until its ``stopAt``, or ``at``, without announcing it
        yet: the caller records the start's own end first, and then announces the stop (see
        :class:`HeldStop`)."""
        stop = _stop_of(start, at=at)
        if stop is None:
            return HeldStop()
        timing = stop.kind.timing(stop.body)
        if self.hold(stop, timing, announce=False) is not None:
            return HeldStop({"stopJobId": stop.id})  # it ran already: nothing new to announce
        report = _holding(stop, timing)[0]
        return HeldStop(
            {"stopJobId": stop.id},
            timing.due,
            lambda: self._reporter.announce(stop, "scheduled", report),
        )

    def cancel(self, job_id: str) -> Cancellation:
        """Cancel a job that has not run yet, or the pending stop of a start that succeeded, or
        each of these among a batch's children once its fan-out published them.

        Raises :class:`~worker.errors.UnknownJob`, or :class:`~worker.errors.JobConflict` when
        the job already ended (with no stop pending) or is being run right now.
        """
        done = self._cancel_one(job_id)
        if self._limiter is not None and done.cancelled:
            # A job waiting for its turn under the rate limit gives up its place in line: the
            # jobs behind it are not made to wait for one that will never come.
            self._limiter.leave(*done.cancelled)
        return done

    def _cancel_one(self, job_id: str) -> Cancellation:
        tried = self._patiently(job_id)
        if tried.answer == "published" or (
            tried.job.kind.fans_out
            and tried.answer != "cancelled"
            and self._reporter.batches.progress(job_id) is not None
        ):
            # Its children are out (or it ended with them): they are what there is to cancel.
            ended = tried.answer.startswith("ended:")
            return self._cancel_children(tried.named, ended=ended)
        if tried.answer != "cancelled":
            raise _refusal(tried.job, tried.answer)
        return Cancellation(tried.named, **tried.done())

    def _patiently(self, job_id: str) -> _Tried:
        """One cancel, tried again for a moment while a delivery holds the job's claim (it may
        only be checking its meeting). Each try reads the job afresh: a start that succeeded
        meanwhile has its pending stop cancelled, as if the cancel had come a moment later."""
        for last in self._tries():
            tried = self._try(job_id)
            if tried.answer != "running" or last:
                break
        return tried

    def _try(self, job_id: str) -> _Tried:
        """Run the cancel script once on ``job_id``, or on its pending stop if it started."""
        record = self._get(job_id)
        named = _job_of(record)
        pending_stop = self._pending_stop(record)
        job = named if pending_stop is None else _job_of(self._get(pending_stop))
        keys = [self._store.key(job.id), self._claim_key(job.id), *self._schedule.keys]
        args: list[str | bytes | int | float] = [job.id, "1" if job.kind.fans_out else "0"]
        if job.kind.fans_out:
            keys.append(self._reporter.batches.key(job.id))
        # An attempt VideoSDK never answered may have started the recording: the script holds
        # this stop, due now, unless every attempt was answered as having changed nothing (a
        # stop that finds nothing recording succeeds, reconciled).
        stop = _stop_of(job, at=epoch_iso(self._clock()))
        if stop is not None:
            held, fields, delivery = _holding(stop, stop.kind.timing(stop.body))
            write = self._store.write_call(
                stop.id,
                State.SCHEDULED,
                kind=stop.kind.name,
                target=stop.target,
                metadata=stop.metadata,
                extra=fields,
                unless_ended=True,
            )
            keys += write.keys
            args += [stop.id, delivery.encoded(), delivery.due, *write.args]
        answer, *found = (as_text(item) for item in self._cancel(keys=keys, args=args))
        if answer.startswith("ended:"):
            # A batch's child cancelled by a cancel cut short after its script (Redis lost) was
            # never counted: counted now, once (a child counted already changes nothing).
            self._reporter.ended_again(job, State(answer.removeprefix("ended:")))
        if answer != "cancelled":
            return _Tried(answer, named, job)
        attempts, stopped = found
        held_stop = stop if stop is not None and stopped else None
        extra: Extra = {} if held_stop is None else {"stopJobId": held_stop.id}
        report = Report(State.CANCELLED, attempt=int(attempts))
        self._reporter.record_and_announce(job, "cancelled", report, extra=extra)
        if held_stop is None:
            return _Tried(answer, named, job)
        # Held by the script already; announced after the start's own end, as a start's is.
        self._reporter.announce(held_stop, "scheduled", held)
        return _Tried(answer, named, job, (held_stop.id,))

    def _cancel_children(self, batch: Job, *, ended: bool) -> Cancellation:
        """Cancel, as :meth:`cancel` would one by one, each child of a batch whose fan-out
        began: those that have not run, and the pending stops of those that started. Children
        being run stay busy; each is tried again for a moment, all of them together."""
        done: dict[str, tuple[Any, ...]] = {"cancelled": (), "pending_stops": (), "stops": ()}
        busy = self._children(batch, ended=ended)
        for last in self._tries():
            still_busy = []
            for child_id in busy:
                try:
                    tried = self._try(child_id)
                except UnknownJob:  # expired: nothing is left to cancel
                    continue
                if tried.answer == "cancelled":
                    for outcome, ids in tried.done().items():
                        done[outcome] += ids
                elif tried.answer == "running":
                    still_busy.append(child_id)
            busy = still_busy
            if not busy or last:
                break
        if not any(done.values()) and not busy:
            raise JobConflict(
                f"batch {batch.id}: every child already ended, none with a stop pending: "
                "there is nothing to cancel"
            )
        return Cancellation(batch, **done, busy=tuple(busy))

    def _children(self, batch: Job, *, ended: bool) -> list[str]:
        """The ids of a batch's children, once its fan-out published every one of them: a
        child not yet published cannot be cancelled (the fan-out would publish it after).
        Unless the batch ended (failed mid-fan-out): nothing publishes the rest, and those never
        made are skipped as unknown."""
        batches = self._reporter.batches
        published = total = 0
        for _ in self._tries():
            progress, body = batches.progress(batch.id), batches.job(batch.id)
            if progress is None or body is None:
                raise JobConflict(f"batch {batch.id} has no progress left to read (expired)")
            published, total = progress.published, progress.total
            if ended or progress.fanned_out:
                return [child.id for child in child_jobs(Job(batch.id, batch.kind, body))]
        raise JobConflict(
            f"batch {batch.id} has published {published} of its {total} children and "
            "publishes the rest when its delivery resumes: try again then"
        )

    def _tries(self) -> Iterator[bool]:
        """One per try of a step that meets a delivery at work, True for the last: between
        two, the next pause of :data:`_BUSY_RETRY` (none once the caller stops asking)."""
        for pause in _BUSY_RETRY:
            yield False
            self._sleep(pause)
        yield True

    def reschedule(
        self,
        job_id: str,
        *,
        start_at: str | None = None,
        stop_at: str | None = None,
        start_deadline: str | None = None,
    ) -> tuple[Job, Timing]:
        """Move a job that still waits on the schedule to new times (validated as a whole job).

        A start that already succeeded can have its pending stop moved with ``stop_at`` alone.
        Returns the job as rescheduled and its new times.
        """
        record = self._get(job_id)
        if stop_at is not None and start_at is None and start_deadline is None:
            pending_stop = self._pending_stop(record)
            if pending_stop is not None:
                return self.reschedule(pending_stop, stop_at=stop_at)
            if record.state is State.SUCCEEDED:
                return self._stop_started(record, stop_at)
        for _ in range(_REPLACE_TRIES):
            if record.state.terminal:
                raise JobConflict(
                    f"job {job_id} already ended ({record.state}): too late to move it"
                )
            delivery = self._schedule.get(job_id)
            if delivery is None:
                raise JobConflict(
                    f"job {job_id} is {record.state}, not waiting on the schedule: it is due or "
                    "being run now, too late to move it"
                )
            kind = BY_TASK[delivery.task]
            body = _with_times(delivery.job, kind.stops, start_at, stop_at, start_deadline)
            body = validate(kind.name, body, job_id=job_id)
            timing = kind.timing(body, grace=self._grace)
            if timing.past_deadline(self._clock()):
                raise JobConflict(
                    f"job {job_id} would be past its start deadline "
                    f"({epoch_iso(timing.deadline or 0)}) at once, and fail without starting: "
                    "give a later --start-at or --start-deadline"
                )
            due = self._clock() if timing.due is None else timing.due
            job = Job(job_id, kind, body, record.batch_id)
            report = Report(
                State.SCHEDULED, attempt=record.attempts, due_at=due, deadline=timing.deadline
            )
            # Recorded in the same step as the move: moved due, the job may be delivered at
            # once, and its delivery's own record ('running', 'retrying') must come after.
            write = self._reporter.write_call(
                job, report, extra={"deliveries": 0}, unless_ended=True
            )
            moved = Delivery(job_id, delivery.task, body, due)
            if self._schedule.replace(delivery, moved, record=write):
                self._keep_start_of(job, due)
                break
            record = self._get(job_id)  # it changed, or ended, since it was read
        else:
            raise JobConflict(f"job {job_id} kept changing while being rescheduled; try again")
        # Unless a delivery has taken it on already (moved due, it may run at once): its own
        # events follow, and a 'scheduled' one after them would misstate the job.
        [(state, _error)] = self._store.states([job_id])
        if state is State.SCHEDULED:
            self._reporter.announce(job, "scheduled", report)
        return job, timing

    def _keep_start_of(self, stop: Job, due: float) -> None:
        """A start's stop (``<start id>:stop``) moved to ``due``: the start's record is kept
        until a TTL after it, for a cancel or a move of the start to find it."""
        if stop.kind.stops and stop.id.endswith(STOP_SUFFIX):
            self._store.keep(stop.id.removesuffix(STOP_SUFFIX), due)

    def fanned_out(self, job_id: str) -> bool:
        """Whether ``job_id`` is a batch whose fan-out began: from then on its children, not
        the batch, are what a cancel or a move acts on."""
        record = self._store.get(job_id)
        kind = BY_NAME.get(record.kind or "") if record is not None else None
        return (
            kind is not None
            and kind.fans_out
            and self._reporter.batches.progress(job_id) is not None
        )

    def reschedule_children(self, batch_id: str, *, stop_at: str) -> Moves:
        """Move the stop of every child of a batch whose fan-out began, as :meth:`reschedule`
        with ``stop_at`` would one by one: a child waiting on the schedule gets the new
        ``stopAt``, a child that started has its stop moved (or held, if it had none). A child
        that failed, was cancelled or was stopped already is left alone."""
        found = self._get(batch_id)
        batch = _job_of(found)
        moved: list[str] = []
        refused: list[tuple[str, str]] = []
        latest = 0.0
        for child_id in self._children(batch, ended=found.state.terminal):
            record = self._store.get(child_id)
            if record is None or (record.state.terminal and not self._stoppable(record)):
                continue
            try:
                job, timing = self.reschedule(child_id, stop_at=stop_at)
            except (JobConflict, InvalidJob) as exc:
                refused.append((child_id, str(exc)))
            else:
                moved.append(job.id)
                latest = max(latest, timing.stop_at or 0.0)
        if moved:  # the batch is kept as long as the stops it acts on
            self._store.keep(batch_id, latest)
            self._reporter.batches.keep(batch_id, latest)
        return Moves(batch, tuple(moved), tuple(refused))

    def _stoppable(self, record: JobRecord) -> bool:
        """Whether a start that ended still has a recording a new stop could end: it
        succeeded, and its stop job is pending, was cancelled, or never existed."""
        if record.state is not State.SUCCEEDED:
            return False
        stop = None if record.stop_job_id is None else self._store.get(record.stop_job_id)
        return not _ran(stop)

    def _stop_started(self, record: JobRecord, stop_at: str) -> tuple[Job, Timing]:
        """Hold a stop for a start that succeeded with none pending (it had no ``stopAt``, or
        its stop was cancelled): its recording ends at ``stop_at``."""
        start = _job_of(record)
        stop = _stop_of(start, at=stop_at)
        if stop is None:
            raise JobConflict(f"job {start.id} already ended ({record.state}): too late to move it")
        stop = Job(stop.id, stop.kind, validate(stop.kind.name, dict(stop.body), job_id=stop.id))
        earlier = self._store.get(stop.id)
        if earlier is not None and _ran(earlier):
            raise JobConflict(
                f"job {start.id} has had its recording stopped: {stop.id} ended {earlier.state}"
            )
        timing = stop.kind.timing(stop.body)
        # A stop cancelled before is held afresh, with the start naming it again.
        fresh = earlier is not None
        ended = self.hold(stop, timing, fresh=fresh, stopping=start.id)
        if ended is not None:
            raise JobConflict(f"job {start.id} has had its recording stopped: {stop.id} {ended}")
        return stop, timing

    def upcoming(self) -> list[tuple[Delivery, JobRecord | None]]:
        """Every delivery on the schedule, soonest first, with its job's record."""
        return [(d, self._store.get(d.job_id)) for d in self._schedule.pending()]

    def _get(self, job_id: str) -> JobRecord:
        record = self._store.get(job_id)
        if record is None:
            raise UnknownJob(job_id)
        return record

    def _pending_stop(self, record: JobRecord) -> str | None:
        """The id of the stop a succeeded start scheduled, while that stop has not run."""
        if record.state is not State.SUCCEEDED or record.stop_job_id is None:
            return None
        stop = self._store.get(record.stop_job_id)
        return record.stop_job_id if stop is not None and not stop.state.terminal else None


@dataclass(frozen=True, slots=True)
class HeldStop:
    """The stop job a start's end holds: the fields naming it in the start's record (none for
    a start with no stop), when it is due (the start's record is kept until a TTL after it),
    and its ``scheduled`` event, to publish once the start's own end is.

    The stop is held before the start is recorded ended, so that a crash in between redelivers
    the start, which holds it again: no recording is left without its stop. Its event follows
    the start's, so that a subscriber reads "started", then "its stop is scheduled" (a crash in
    between loses only that event: the stop is held, and ``recq status`` shows it).
    """

    extra: Extra = field(default_factory=dict)
    due: float | None = None
    announce_scheduled: Callable[[], None] = lambda: None


def _with_times(
    job: dict[str, Any],
    stops: bool,
    start_at: str | None,
    stop_at: str | None,
    start_deadline: str | None,
) -> dict[str, Any]:
    if stops and (start_at or start_deadline):
        raise JobConflict("a stop job has only a stop time: reschedule it with --stop-at")
    changes = {"startAt": start_at, "stopAt": stop_at, "startDeadline": start_deadline}
    return {**job, **{field: value for field, value in changes.items() if value is not None}}


def _holding(job: Job, timing: Timing) -> tuple[Report, dict[str, float | int | str], Delivery]:
    """What holding ``job`` until ``timing.due`` takes: its report, its record's further
    fields, and its delivery on the schedule."""
    if timing.due is None:
        raise ValueError(f"job {job.id} names no time to hold it until")
    report = Report(State.SCHEDULED, due_at=timing.due, deadline=timing.deadline)
    extra: dict[str, float | int | str] = {"dueAt": timing.due, "deliveries": 0}
    if timing.deadline is not None:
        extra["deadline"] = timing.deadline
    return report, extra, Delivery(job.id, job.kind.task_name, dict(job.body), timing.due)


def _stop_of(start: Job, *, at: str | None) -> Job | None:
    """The stop job ending what ``start`` started, at its ``stopAt`` or ``at``; None for a job
    with neither, or that is not a start."""
    if (at is None and "stopAt" not in start.body) or start.kind.stops or start.kind.fans_out:
        return None
    return stop_job_for(start, at=at)


def _ran(stop: JobRecord | None) -> bool:
    """Whether a stop job ran (it ended, and not by a cancel): its recording was stopped, or
    its stop failed, and a new stop is not held in its place."""
    return stop is not None and stop.state.terminal and stop.state is not State.CANCELLED


def _refusal(job: Job, answer: str) -> UnknownJob | JobConflict:
    """Why the cancel script did not cancel ``job``, as it answered."""
    if answer == "unknown":
        return UnknownJob(job.id)
    if answer == "running":
        end_it = (
            ""
            if job.kind.stops or job.kind.fans_out
            else f"; once it started its recording, recq reschedule {job.id} --stop-at now ends it"
        )
        return JobConflict(
            f"job {job.id} is being run right now and can no longer be cancelled{end_it}"
        )
    ended = answer.removeprefix("ended:")
    return JobConflict(f"job {job.id} already ended ({ended}): there is nothing to cancel")


def _job_of(record: JobRecord) -> Job:
    """The job a record describes, enough to report on it (its target and metadata)."""
    kind = BY_NAME[record.kind or ""]
    body = {**(record.target or {}), "metadata": record.metadata or {}}
    return Job(record.id, kind, body, record.batch_id)
