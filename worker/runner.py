"""Running one delivery of a job: validate, claim, call VideoSDK, record and announce the outcome.

This is the whole life of a delivered job, free of Celery: the task hands it the decoded job and
its id. Every path ends in a recorded state and an event:

- an invalid job fails at once (no call is made) and becomes a dead letter;
- a duplicate of a finished (or cancelled) job is acknowledged without a call, reporting the
  original outcome;
- a job another delivery is running is put back on the schedule until that claim's lease ends;
- a job delivered before its time (from a producer that does not schedule) goes on the schedule;
- a scheduled start first checks that its room has a live session; while it has none, the job
  waits on the schedule, checked every ``live_poll`` seconds, until its deadline, and then fails
  with reason ``meeting_not_live``; one that arrives after its deadline fails with
  ``start_deadline_passed`` without a call;
- a job whose in-process retries are spent on an outage goes back on the schedule with a growing
  delay, so it does not pin a worker slot, until the outage window closes and it fails;
- a job VideoSDK rejects fails and becomes a dead letter;
- a start with ``stopAt`` that succeeded puts its stop job on the schedule;
- a bulk job, once due (and its meeting live), publishes its children (:mod:`worker.fanout`);
- a call that finds no slot under the fleet-wide rate limit within a short wait goes back on the
  schedule until its turn, without holding a worker thread; a 429 pauses every worker's calls;
- a fault of recq's own fails the job with reason ``internal_error`` and keeps it as a dead
  letter; Redis or the broker failing the delivery is raised, and the task hands the message
  back to be delivered again (:mod:`tasks.recording`).

Reconciling "already running": VideoSDK has no idempotency key and a start returns no id. When an
attempt of this job may have reached VideoSDK without its answer reaching us (a timeout, a dropped
connection, a 5xx, or an earlier delivery's call), a later refusal saying the recording is already
running is that earlier attempt's success, and is recorded as such (``reconciled``). An attempt
whose answer proves it changed nothing (a 429, a refusal, a connection never made) is counted in
the job's record (``unapplied``), so later deliveries know it too; the count of attempts itself is
written before each call, so a call whose worker died unanswered always counts as maybe applied.
A stop refused because nothing is recording is reconciled likewise: what it asked for holds.

A delivery that ends by handing the job back to the schedule (early, waiting, re-queued) resets
the job's delivery count: the count guards against workers dying on a job, not against waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from worker.batches import Progress
from worker.claims import Claim, Claims, ClaimStatus, Start
from worker.errors import (
    UNREACHABLE,
    Answer,
    ErrorInfo,
    InvalidJob,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from worker.fanout import FanOut
from worker.jobs import BY_TASK, Job, JobKind
from worker.messages import job_from_arguments, job_id_of
from worker.metrics import Metrics, retry_reason
from worker.rate_limit import MAX_STEP_WAIT, RateLimiter
from worker.reporter import Report, Reporter
from worker.retry import RetryPolicy
from worker.schedule import Delivery, Schedule
from worker.scheduler import HeldStop, Scheduler
from worker.state import Extra, JobRecord, State, epoch_iso
from worker.timing import DEFAULT_GRACE, Timing
from worker.validation import validate
from worker.videosdk import Endpoints, VideoSDKClient, last_page, ongoing_session

logger = logging.getLogger(__name__)


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
    released: bool = False
    """The delivery's last state write gave its claim back already."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a job may keep trying across deliveries."""

    outage_window: float = 3600.0
    max_deliveries: int = 5
    requeue_delay: float = 15.0
    max_requeue_delay: float = 300.0
    start_grace: float = DEFAULT_GRACE
    """How long a scheduled start waits for its meeting when the job names no deadline."""
    live_poll: float = 10.0
    """How often a waiting start checks whether its meeting is live."""
    rate_wait: float = 1.0
    """How long a call may wait in its thread for a slot under the rate limit."""
    pause_on_429: float = 1.0
    """How long every worker pauses after a 429 without ``Retry-After``."""
    max_pause: float = 30.0
    """The longest a 429 pauses the fleet, whatever its ``Retry-After`` (the job itself still
    waits all of it): one answer asking for hours must not halt every worker."""


@dataclass(slots=True)
class _Attempts:
    """What this delivery has learnt so far about its calls."""

    before: int
    deadline: float = float("inf")
    """No retry of this delivery starts after it (the retry policy's window, on its clock):
    a scheduled start's meeting check and its call share it, so that neither retries past the
    window the claim's lease is sized for. (The call's first attempt is always made: the check
    leaves it one call's length of the window.)"""
    made: int = 0
    unapplied: int = 0
    """Of all the attempts, earlier deliveries' too, those answered in a way that proves they
    changed nothing (a 429, a refusal, a connection never made). Any other attempt, even one a
    killed worker never saw answered, may have applied."""
    last_error: UpstreamUnavailable | None = None
    cleared: bool = False
    """The claim found calls unpaused, with no rate limit to ask: the delivery's first call
    goes without asking the limiter again."""
    recorded: bool = False
    """The claim recorded the job running this delivery's first attempt (:class:`Start`): the
    first call goes without a state write of its own."""
    paired: bool = False
    """A meeting check was granted as the first of a pair: the limiter keeps the start a slot
    (or, at one call a period, the head of the line) until the start asks or the job leaves."""

    @property
    def total(self) -> int:
        return self.before + self.made

    @property
    def maybe_applied(self) -> bool:
        """Whether an attempt so far may have reached VideoSDK and taken effect unanswered."""
        return self.total > self.unapplied

    def report(self, state: State, **fields: Any) -> Report:
        """The job in ``state`` after the attempts so far (recording how many did not apply)."""
        return Report(state, attempt=self.total, unapplied=self.unapplied, **fields)


class JobRunner:
    """Runs delivered jobs against VideoSDK."""

    def __init__(
        self,
        *,
        client: VideoSDKClient,
        reporter: Reporter,
        policy: RetryPolicy,
        claims: Claims,
        schedule: Schedule,
        scheduler: Scheduler,
        fan_out: FanOut | None = None,
        limiter: RateLimiter | None = None,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics or Metrics()
        self._reporter = reporter
        self._store = reporter.store
        self._policy = policy
        self._claims = claims
        self._schedule = schedule
        self._scheduler = scheduler
        self._fan_out = fan_out
        self._limiter = limiter
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
            return self._fail_unclaimed(Job(task_id, kind, {}), exc.info(), received)
        return self.run(kind, raw, job_id=job_id_of(raw, task_id))

    def run(self, kind: JobKind, raw: object, *, job_id: str) -> Outcome:
        """Run one delivery of a job and return how it ended; never raises for a job's fault.

        It raises only when Redis or the broker failed it (:data:`UNREACHABLE`), for the task
        to hand the message back. A fault of recq's own fails the job (``internal_error``),
        kept as a dead letter to replay once the fault is mended, rather than leave it in a
        state nothing would ever move it from.
        """
        try:
            return self._run(kind, raw, job_id=job_id)
        except UNREACHABLE:
            raise
        except Exception as exc:
            logger.exception("job %s: recq failed while running it", job_id)
            error = ErrorInfo(
                reason="internal_error",
                message=f"recq failed while running the job ({type(exc).__name__}); it is kept "
                "as a dead letter, to replay once the fault is mended",
            )
            partial = raw if isinstance(raw, Mapping) else {}
            return self._fail_unclaimed(Job(job_id, kind, partial), error, raw)

    def _run(self, kind: JobKind, raw: object, *, job_id: str) -> Outcome:
        try:
            body = validate(kind.name, raw, job_id=job_id)
        except InvalidJob as exc:
            partial = raw if isinstance(raw, Mapping) else {}
            return self._fail_unclaimed(Job(job_id, kind, partial), exc.info(), raw)
        job = Job(job_id, kind, body)
        timing = kind.timing(body, grace=self._limits.start_grace)
        claim = self._claims.acquire(job_id, self._start(job, timing))
        if claim.status is ClaimStatus.DONE:
            return self._duplicate(job)
        if claim.status is ClaimStatus.BUSY:
            return self._defer(job, claim.retry_in + 1.0)
        if claim.batch_id is not None:
            job = dataclasses.replace(job, batch_id=claim.batch_id)
        try:
            outcome = self._deliver(job, claim, timing)
        except BaseException:
            self._claims.release(job_id, claim)
            raise
        if not outcome.released:
            self._claims.release(job_id, claim)
        return outcome

    def refuse(self, job_id: str, task: str | None, *, reason: str, message: str) -> None:
        """Record a message the worker could not run at all: failed, dead-lettered, announced."""
        error = ErrorInfo(reason=reason, message=message)
        kind = BY_TASK.get(task or "")
        if kind is None:
            record = self._store.get(job_id)
            if not _ended(record, error):
                made = _made(record)
                self._reporter.dead_letter(job_id, task=task, job=None, error=error, attempts=made)
                self._store.transition(job_id, State.FAILED, error=error)
            return
        self._fail_unclaimed(Job(job_id, kind, {}), error, None)

    def _fail_unclaimed(self, job: Job, error: ErrorInfo, received: object) -> Outcome:
        """Fail a delivery that could not take the job's claim (the message, or recq, failed
        before it): kept as a dead letter, recorded, announced; told to the batch its record
        names. Unless the job had already ended: its outcome stands."""
        record = self._store.get(job.id)
        if _ended(record, error):
            failure = ErrorInfo.from_json(record.error) if record.error else None
            return Outcome(job.id, record.state, record.attempts, failure, duplicate=True)
        if record is not None and record.batch_id is not None:
            job = dataclasses.replace(job, batch_id=record.batch_id)
        return self._finish(job, _Attempts(before=_made(record)), error=error, received=received)

    def _start(self, job: Job, timing: Timing) -> Start | None:
        """The claim's running write, for a delivery that will call VideoSDK at once: due, a
        stop or a start with no meeting to wait for and its deadline ahead, not a batch, and no
        rate limit to ask first. :meth:`_deliver` checks all of it again after the claim (and
        records whatever else happens instead); this only saves the first call's round trip."""
        if job.kind.fans_out or (self._limiter is not None and not self._claims.reads_pause):
            return None
        if timing.early(self._clock()):
            return None
        if not job.kind.stops and (timing.scheduled or timing.past_deadline(self._clock())):
            return None
        return Start(self._reporter.running_write(job), self._limits.max_deliveries)

    def _deliver(self, job: Job, claim: Claim, timing: Timing) -> Outcome:
        # An earlier delivery's call may have started the recording, unless its answer proved
        # it did not (attempts.maybe_applied).
        attempts = _Attempts(
            before=claim.attempts,
            unapplied=claim.unapplied,
            deadline=self._policy.deadline(),
            cleared=claim.paused == 0.0,
            recorded=claim.started,
        )
        if job.kind.fans_out:
            # The first delivery since a replay (which queued the job afresh) counts afresh.
            fanned = self._fanning_out.resume(job.id, afresh=claim.deliveries == 1)
            if fanned is not None:
                return self._resume_fan_out(job, timing, claim, attempts, fanned)
        if claim.deliveries > self._limits.max_deliveries:
            error = ErrorInfo(
                reason="too_many_deliveries",
                message=f"delivered {claim.deliveries} times without finishing "
                f"(at most {self._limits.max_deliveries}): a worker may be dying on it",
            )
            return self._finish(job, attempts, error=error, claim=claim)
        if timing.early(self._clock()):
            self._scheduler.hold(job, timing)
            return Outcome(job.id, State.SCHEDULED, attempts.total, deferred=True)
        return self._attempt(job, timing, claim, attempts, fanned=None)

    def _resume_fan_out(
        self, job: Job, timing: Timing, claim: Claim, attempts: _Attempts, fanned: Progress
    ) -> Outcome:
        """A batch whose fan-out began met its time and meeting already: a later delivery
        (redelivered, or enqueued again) resumes it, however late or often it comes, unless
        deliveries keep dying without publishing another chunk (a worker killed at the same
        child every time). Those fail it, as too many deliveries fail a job; the children it
        published run on, and a replay publishes the rest."""
        if fanned.stalls > self._limits.max_deliveries and not fanned.fanned_out:
            error = ErrorInfo(
                reason="too_many_deliveries",
                message=f"its fan-out published {fanned.published} of {fanned.total} children, "
                f"then was delivered {fanned.stalls} times without publishing more (at most "
                f"{self._limits.max_deliveries}): a worker may be dying on it. The children "
                "published run on; a replay of the batch publishes the rest",
            )
            return self._finish(job, attempts, error=error, claim=claim)
        return self._attempt(job, timing, claim, attempts, fanned=fanned)

    def _attempt(
        self,
        job: Job,
        timing: Timing,
        claim: Claim,
        attempts: _Attempts,
        *,
        fanned: Progress | None,
    ) -> Outcome:
        """Make the job's call, with retries, once it is due (and its meeting is live); for a
        batch, publish its children (``fanned``: how far a fan-out begun already got)."""
        try:
            return self._attempt_calls(job, timing, claim, attempts, fanned=fanned)
        finally:
            if attempts.paired and self._limiter is not None:
                # The check's grant kept the start a turn it will not take this delivery (the
                # meeting was not live, or the check failed): the others have it now, not after
                # the kept slot or the head of the line times out.
                self._limiter.leave(job.id)

    def _attempt_calls(
        self,
        job: Job,
        timing: Timing,
        claim: Claim,
        attempts: _Attempts,
        *,
        fanned: Progress | None,
    ) -> Outcome:
        try:
            ended = None
            if not job.kind.stops and fanned is None:
                ended = self._unless_ready(job, timing, claim, attempts)
            if ended is None and job.kind.fans_out:
                ended = self._publish_children(job, fanned)
            if ended is not None:
                return ended
            self._policy.call(lambda: self._call(job, attempts), deadline=attempts.deadline)
        except RateLimited as exc:
            return self._no_slot(job, timing, claim, attempts, exc.wait)
        except UpstreamUnavailable as exc:
            return self._requeue_or_fail(job, attempts, claim, exc, deadline=timing.deadline)
        except UpstreamError as exc:
            if job.kind.reconciles(exc, maybe_applied=attempts.maybe_applied):
                return self._succeed(job, timing, claim, attempts, reconciled=True)
            return self._finish(job, attempts, error=exc.info(), claim=claim)
        return self._succeed(job, timing, claim, attempts)

    def _unless_ready(
        self, job: Job, timing: Timing, claim: Claim, attempts: _Attempts
    ) -> Outcome | None:
        """None when a start may go ahead: before its deadline and, for a scheduled start, in a
        live meeting. Else how this delivery ended instead (failed, or waiting)."""
        deadline = timing.deadline if timing.deadline is not None else float("inf")
        now = self._clock()
        # A waiting start's last check is due at its deadline, and the dispatcher delivers it a
        # moment after: it still counts up to one poll interval late (not when every worker was
        # down for hours meanwhile).
        # So does a retry after an outage, which is never put off past the deadline; but never
        # past stopAt, which is also the deadline of a start without startAt.
        waited = claim.state == State.WAITING
        late_allowed = waited or claim.state == State.RETRYING
        before_stop_at = timing.stop_at is None or now < timing.stop_at
        last_check = late_allowed and before_stop_at and now <= deadline + self._limits.live_poll
        if timing.past_deadline(now) and not last_check:
            message = _arrived_late(deadline, claim.outage_since)
            stop = HeldStop()
            if attempts.maybe_applied:
                # A recording that attempt started is stopped: at stopAt, or now (as a cancel).
                stop = self._scheduler.hold_stop(
                    job, at=None if timing.stop_at is not None else epoch_iso(now)
                )
                message += (
                    "; it was not started again, but an earlier attempt VideoSDK did not answer "
                    f"may have started the recording: {stop.extra['stopJobId']} stops it"
                )
            else:
                message += "; it was not started"
            error = ErrorInfo(reason="start_deadline_passed", message=message)
            return self._finish(job, attempts, error=error, claim=claim, stop=stop)
        if not timing.scheduled:
            return None
        before_stop = timing.stop_at is None or self._clock() < timing.stop_at
        # The check leaves the start one call's length of the window: its first attempt then
        # ends within the claim's lease (the window plus one call, plus a margin).
        check_until = attempts.deadline - self._client.longest_call
        if before_stop and self._policy.call(
            lambda: self._live(job, attempts), deadline=check_until
        ):
            return None
        now = self._clock()
        if now >= deadline:
            room = job.target.room_id
            error = ErrorInfo(
                reason="meeting_not_live",
                message=f"room {room} had no live session by the job's deadline "
                f"({epoch_text(deadline)}): a recording needs a live meeting",
            )
            return self._finish(job, attempts, error=error, claim=claim)
        due = min(now + self._limits.live_poll, deadline)
        report = attempts.report(State.WAITING, due_at=due, deadline=deadline)
        # The check got through: an outage the job was re-queued for is over.
        over: Extra = {"outageSince": "", "requeues": 0} if before_stop else {}
        self._reporter.record(job, report, extra={"deliveries": 0, **over}, release=claim.lease)
        self._schedule.add(Delivery(job.id, job.kind.task_name, dict(job.body), due))
        if not waited:
            self._reporter.announce(job, "waiting", report)
        return Outcome(job.id, State.WAITING, attempts.total, deferred=True, released=True)

    def _live(self, job: Job, attempts: _Attempts) -> bool:
        """Whether the job's room has an ongoing session (the first and last listing pages)."""
        params = {"roomId": job.target.room_id}
        first = self._get(job, attempts, Endpoints.SESSIONS, params)
        if ongoing_session(first):
            return True
        last = last_page(first)
        if last == 1:
            return False
        page = {**params, "page": str(last)}
        return ongoing_session(self._get(job, attempts, Endpoints.SESSIONS, page))

    def _get(self, job: Job, attempts: _Attempts, path: str, params: Mapping[str, str]) -> Answer:
        # A start's check and its start take one turn of the rate limit, a pair of slots (a
        # batch makes no call after its check).
        self._take_slot(job, attempts, pair=not job.kind.fans_out)
        try:
            answer = self._client.get(path, params)
        except UpstreamUnavailable as exc:
            attempts.last_error = exc
            self._slow_down(exc)
            raise
        attempts.last_error = None  # the start, next, is not a retry of the check
        return answer

    def _take_slot(self, job: Job, attempts: _Attempts, *, pair: bool = False) -> None:
        """Wait briefly for a call slot under the fleet-wide rate limit, or raise RateLimited.

        A start after its check asks as the second of their pair: it goes at once, its kept
        slot logged as it goes; or, at one call a period, it waits for the next slot at the head
        of the line, up to one step more (1.05 s at 1/s), never past :data:`MAX_STEP_WAIT`."""
        if self._limiter is None:
            return
        if attempts.cleared:  # the claim found no pause, and there is no rate to ask
            attempts.cleared = False
            return
        second = attempts.paired and not pair
        began = time.perf_counter()
        step = min(self._limiter.step, MAX_STEP_WAIT) if second else 0.0
        wait = self._limiter.acquire(
            self._limits.rate_wait + step, ticket=job.id, pair=pair, second=second
        )
        # The wait in this thread, and the one on the schedule it is told to take, if any.
        self._metrics.rate_limit_wait.observe(time.perf_counter() - began + wait)
        # Granted as a pair, the ticket keeps the start's turn; refused, it waits in line for
        # the job's return: either way it is the limiter's to keep, not this delivery's to drop.
        attempts.paired = pair and wait == 0 and self._limiter.rate is not None
        if wait > 0:
            self._metrics.rate_limit_requeued.inc()
            raise RateLimited(wait)

    def _slow_down(self, error: UpstreamUnavailable) -> None:
        """A 429 pauses every worker's calls, for its Retry-After (at most 30 s) or a second."""
        if self._limiter is not None and error.too_many_requests:
            asked = error.retry_after or self._limits.pause_on_429
            self._limiter.pause(min(asked, self._limits.max_pause))
            self._metrics.rate_limit_pauses.inc()

    def _no_slot(
        self, job: Job, timing: Timing, claim: Claim, attempts: _Attempts, wait: float
    ) -> Outcome:
        """A call found no slot: the job waits for its turn on the schedule. A retry is still a
        retry after an outage: re-queued as one, counted against the outage window (it was
        waited out forever, each delivery making one attempt and finding no slot for the next).
        """
        if attempts.last_error is not None:
            return self._requeue_or_fail(
                job, attempts, claim, attempts.last_error, deadline=timing.deadline, at_least=wait
            )
        return self._await_slot(job, claim, attempts, wait)

    def _await_slot(self, job: Job, claim: Claim, attempts: _Attempts, wait: float) -> Outcome:
        """Back on the schedule until the rate limit's turn comes, in the state it was in; its
        record says when (``slotAt``), as ``recq status`` shows."""
        state = State(claim.state) if claim.state else State.QUEUED
        due = self._clock() + wait
        report = attempts.report(state)
        extra = {"deliveries": 0, "slotAt": due}
        self._reporter.record(job, report, extra=extra, release=claim.lease)
        self._schedule.add(Delivery(job.id, job.kind.task_name, dict(job.body), due))
        return Outcome(job.id, state, attempts.total, deferred=True, released=True)

    @property
    def _fanning_out(self) -> FanOut:
        if self._fan_out is None:
            raise RuntimeError("this runner was built without a fan-out for bulk jobs")
        return self._fan_out

    def _publish_children(self, job: Job, fanned: Progress | None) -> Outcome:
        """A bulk job's work: publish its children, recorded running until they all end."""

        def starting(total: int) -> None:
            counts = {"total": total, "succeeded": 0, "failed": 0, "pending": total}
            report = Report(State.RUNNING, counts=counts)
            self._reporter.record_and_announce(job, "started", report)

        def resuming() -> None:
            # Enqueued again, it was recorded queued: running, as it is (unless it completed).
            self._reporter.record(job, Report(State.RUNNING), unless_ended=True)

        def ended(child: Job, state: State) -> None:
            self._reporter.ended_again(child, state)

        self._fanning_out.run(job, fanned, starting=starting, resuming=resuming, ended=ended)
        return Outcome(job.id, State.RUNNING, 0)

    def _succeed(
        self,
        job: Job,
        timing: Timing,
        claim: Claim,
        attempts: _Attempts,
        *,
        reconciled: bool = False,
    ) -> Outcome:
        # Before the start is recorded: a crash in between redelivers the start, which is
        # reconciled and holds the stop again, never leaving a recording without its stop.
        stop = self._scheduler.hold_stop(job)
        return self._finish(job, attempts, reconciled=reconciled, stop=stop, claim=claim)

    def _call(self, job: Job, attempts: _Attempts) -> None:
        # The slot first: a job re-queued for want of one has not made this attempt.
        self._take_slot(job, attempts)
        self._before_attempt(job, attempts)
        attempts.made += 1
        try:
            self._client.post(job.kind.endpoint, job.kind.request_body(job.body))
        except UpstreamError as exc:
            if not exc.maybe_applied:
                attempts.unapplied += 1
            if isinstance(exc, UpstreamUnavailable):
                attempts.last_error = exc
                self._slow_down(exc)
            raise

    def _before_attempt(self, job: Job, attempts: _Attempts) -> None:
        number = attempts.total + 1
        state = State.RUNNING if attempts.made == 0 else State.RETRYING
        if attempts.recorded:  # by the claim, a moment ago
            attempts.recorded = False
        else:
            self._reporter.record(job, Report(state, attempt=number, unapplied=attempts.unapplied))
        if attempts.last_error is not None:
            self._metrics.retries.labels(reason=retry_reason(attempts.last_error)).inc()
            report = Report(state, attempt=number, error=attempts.last_error.info())
            self._reporter.announce(job, "retrying", report)

    def _requeue_or_fail(
        self,
        job: Job,
        attempts: _Attempts,
        claim: Claim,
        error: UpstreamUnavailable,
        *,
        deadline: float | None = None,
        at_least: float = 0.0,
    ) -> Outcome:
        """Re-queue a job VideoSDK was unavailable for, backing off (at least ``at_least``
        seconds, a rate limit's turn), or fail it once its outage window or deadline passes."""
        now = self._clock()
        since = claim.outage_since or now
        requeues = claim.requeues
        delay = min(self._limits.requeue_delay * 2**requeues, self._limits.max_requeue_delay)
        delay = max(delay, error.retry_after or 0.0, at_least)
        info = error.info()
        if now + delay - since > self._limits.outage_window:
            window = f"VideoSDK stayed unavailable beyond the {self._limits.outage_window:.0f} s"
            final = dataclasses.replace(info, message=f"{info.message} ({window} outage window)")
            return self._finish(job, attempts, error=final, claim=claim)
        if deadline is not None and now + delay > deadline:
            # A start is not retried past its deadline: one last try at it, or none left.
            if now >= deadline:
                final = dataclasses.replace(info, message=_outage_past(info.message, deadline))
                return self._finish(job, attempts, error=final, claim=claim)
            delay = deadline - now
        report = attempts.report(State.RETRYING, error=info)
        extra = {
            "outageSince": since,
            "requeues": requeues + 1,
            "retryAt": now + delay,
            "deliveries": 0,
        }
        self._reporter.record(job, report, extra=extra, release=claim.lease)
        self._schedule.add(Delivery(job.id, job.kind.task_name, dict(job.body), now + delay))
        self._metrics.retries.labels(reason="requeued_after_outage").inc()
        self._reporter.announce(job, "retrying", report)
        return Outcome(
            job.id, State.RETRYING, attempts.total, error=info, deferred=True, released=True
        )

    def _defer(self, job: Job, delay: float) -> Outcome:
        due = self._clock() + delay
        self._schedule.add(Delivery(job.id, job.kind.task_name, dict(job.body), due))
        record = self._store.get(job.id)
        state = record.state if record else State.QUEUED
        return Outcome(job.id, state, record.attempts if record else 0, deferred=True)

    def _duplicate(self, job: Job) -> Outcome:
        job_id = job.id
        record = self._store.get(job_id)
        if record is None:  # its state expired between the claim and this read
            return Outcome(job_id, State.SUCCEEDED, 0, duplicate=True)
        # A producer that sent a corrected job under a failed job's id learns why nothing ran.
        logger.info(
            "job %s had already ended (%s): this message ran nothing; a job sent again to run "
            "anew needs a new jobId (or `recq dead replay` for a failed one)",
            job_id,
            record.state.value,
        )
        if record.batch_id is not None:
            batch_child = dataclasses.replace(job, batch_id=record.batch_id)
            self._reporter.ended_again(batch_child, record.state)
        error = ErrorInfo.from_json(record.error) if record.error else None
        return Outcome(
            job_id, record.state, record.attempts, error, record.reconciled, duplicate=True
        )

    def _finish(
        self,
        job: Job,
        attempts: _Attempts,
        *,
        error: ErrorInfo | None = None,
        reconciled: bool = False,
        received: object = None,
        stop: HeldStop | None = None,
        claim: Claim | None = None,
    ) -> Outcome:
        """Record the job's end, and give its claim back in the same write; a start's ``stop``
        held is named in its record, which is kept while the stop is pending, and announced
        after the start's own end (:class:`~worker.scheduler.HeldStop`).

        A failure's dead letter is kept first: whoever sees the job failed can replay it at
        once, and the replay's delivery finds the claim free instead of waiting out its lease.
        """
        state = State.FAILED if error else State.SUCCEEDED
        report = attempts.report(state, error=error, reconciled=reconciled)
        if error is not None and self._limiter is not None and self._limiter.rate is not None:
            # It may have been waiting for its turn (its deadline came first): it leaves the
            # line, and the jobs behind it do not wait for it. (A success was granted its slot.)
            self._limiter.leave(job.id)
            attempts.paired = False  # what a check's grant kept is given up too
        if error is not None:
            kept = received if received is not None else dict(job.body)
            self._reporter.dead_letter(
                job.id, task=job.kind.task_name, job=kept, error=error, attempts=attempts.total
            )
        outcome = "failed" if error else job.kind.succeeded_outcome
        release = claim.lease if claim else None
        stop = stop or HeldStop()
        self._reporter.record_and_announce(
            job, outcome, report, extra=stop.extra, release=release, keep_until=stop.due
        )
        stop.announce_scheduled()
        return Outcome(
            job.id,
            state,
            attempts.total,
            error=error,
            reconciled=reconciled,
            released=claim is not None,
        )


def _arrived_late(deadline: float, outage_since: float | None) -> str:
    """Why a start that came after its deadline was not made, and the outage it waited out."""
    message = f"the job arrived after its start deadline ({epoch_text(deadline)})"
    if outage_since is not None:
        message += f", VideoSDK having been unavailable since {epoch_text(outage_since)}"
    return message


def _outage_past(message: str, deadline: float) -> str:
    """The error of a start whose deadline came while VideoSDK was unavailable."""
    return (
        f"{message}; VideoSDK stayed unavailable up to the start deadline ({epoch_text(deadline)})"
    )


def _made(record: JobRecord | None) -> int:
    """The attempts a job made before a message that failed it unclaimed, which made none:
    its event and dead letter say them, as its record does."""
    return record.attempts if record is not None else 0


def _ended(record: JobRecord | None, error: ErrorInfo) -> TypeGuard[JobRecord]:
    """Whether the job of ``record`` has ended. A delivery failing before its claim with the id
    of a job that ended (a producer reusing an id for a malformed job, or a fault of recq's own
    after the job's end was written) then changes nothing: it is logged, not recorded over the
    job's outcome."""
    if record is None or not record.state.terminal:
        return False
    logger.warning(
        "job %s already ended (%s); a delivery with its id failed (%s: %s) and changes nothing",
        record.id,
        record.state.value,
        error.reason,
        error.message,
    )
    return True


def epoch_text(epoch: float) -> str:
    return epoch_iso(epoch) if epoch != float("inf") else "never"
