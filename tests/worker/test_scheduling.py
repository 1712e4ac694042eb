"""Scheduled jobs in the runner, on an injected clock: due times, waiting for the meeting,
deadlines, scheduled stops, and cancelling or moving a job before it runs.

The sandbox answers over real HTTP with its own (real) clock for sessions; the runner's clock is
the test's, so "now" for scheduling is whatever the test says.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from worker.dispatcher import Dispatcher
from worker.errors import InvalidJob, JobConflict, UnknownJob
from worker.jobs import (
    BY_TASK,
    START_RECORDING,
    START_TRACK_RECORDING,
    STOP_RECORDING,
    STOP_TRACK_RECORDING,
    Job,
)
from worker.retry import RetryPolicy
from worker.runner import Limits
from worker.sandbox import Fault
from worker.schedule import Delivery, Schedule
from worker.scheduler import Scheduler
from worker.state import State, epoch_iso
from worker.videosdk import Endpoints

ROOM = "r1"


def at(clock, seconds: float) -> str:
    """The RFC 3339 time ``seconds`` after the test clock's now."""
    return epoch_iso(clock.now + seconds)


def room_job(**fields):
    return {"roomId": ROOM, "metadata": {"meeting": "board"}, **fields}


def posts(sandbox, path):
    return [call.body for call in sandbox.calls_to(path)]


UNANSWERED = (
    Fault(status=503, applies=True, path=Endpoints.START_RECORDING),
    Fault(status=503, times=4, path=Endpoints.START_RECORDING),
)
"""A start's first attempt starts the recording but is answered 503; the budget is spent on
more 503s."""
REFUSED = (Fault(status=429, times=5, path=Endpoints.START_RECORDING),)
"""Every attempt of a start's budget is answered 429: refused unprocessed."""


def unanswered_start(make_runner, sandbox, job, faults=UNANSWERED):
    """Run ``job`` as j1, its start calls answered by ``faults``: it waits on the schedule to
    retry. Returns the runner."""
    runner = make_runner(limits=Limits(outage_window=10_000))
    sandbox.inject(*faults)
    assert runner.run(START_RECORDING, job, job_id="j1").state is State.RETRYING
    assert sandbox.recording_running(ROOM) is (faults is UNANSWERED)
    return runner


def retried_past_its_deadline(make_runner, sandbox, schedule, clock, job, faults=UNANSWERED):
    """:func:`unanswered_start`, then its retry delivered a minute late (every worker down
    meanwhile), past startDeadline: a retry is due at the deadline at the latest."""
    runner = unanswered_start(make_runner, sandbox, job, faults)
    [retry] = schedule.pending()
    clock.now = retry.due + 60
    schedule.cancel("j1")  # as the dispatcher takes it
    return runner.run(START_RECORDING, job, job_id="j1")


class TestDueTimes:
    def test_a_job_delivered_before_its_time_goes_on_the_schedule(
        self, runner, sandbox, schedule, store, sink, clock
    ):
        """A producer that does not schedule (another language) cannot make it start early."""
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 3600)), job_id="j1")
        assert (outcome.state, outcome.deferred) == (State.SCHEDULED, True)
        assert sandbox.calls == []
        [delivery] = schedule.pending()
        assert (delivery.job_id, delivery.due) == ("j1", clock.now + 3600)
        record = store.get("j1")
        assert record.state is State.SCHEDULED
        assert record.to_json()["dueAt"] == at(clock, 3600)
        assert record.to_json()["deadline"] == at(clock, 3600 + 900)
        [event] = sink.events
        assert event["type"] == "recording.scheduled"
        assert event["data"]["dueAt"] == at(clock, 3600)

    def test_a_job_due_within_a_second_runs_at_once(self, runner, sandbox, clock):
        """Clocks differ slightly between machines: a hair early is on time."""
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 0.5)), job_id="j1")
        assert outcome.state is State.SUCCEEDED

    def test_a_scheduled_start_checks_the_meeting_is_live_before_starting(
        self, runner, sandbox, sink, clock
    ):
        """The sessions listing for the room is read first; then the start is made."""
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 0)), job_id="j1")
        assert outcome.state is State.SUCCEEDED
        [listing, start] = sandbox.calls
        assert (listing.method, listing.path, listing.query) == (
            "GET",
            Endpoints.SESSIONS,
            {"roomId": ROOM},
        )
        assert (start.path, start.body) == (Endpoints.START_RECORDING, {"roomId": ROOM})
        assert sink.types == ["recording.started"]

    def test_a_room_with_a_long_history_of_meetings_is_seen_live(self, runner, sandbox, clock):
        """The listing's whole page is read, however long it is: a room that met many times
        before lists more than an error message may show, and its live session is still found."""
        for _ in range(19):
            sandbox.make_live(ROOM)
            sandbox.end_session(ROOM)
        sandbox.make_live(ROOM)
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 0)), job_id="j1")
        assert outcome.state is State.SUCCEEDED
        assert len(sandbox.accepted(Endpoints.START_RECORDING)) == 1

    def test_an_unscheduled_start_makes_no_sessions_call(self, runner, sandbox):
        """Only scheduled starts wait for their meeting: a start now is just the start."""
        runner.run(START_RECORDING, room_job(), job_id="j1")
        assert [call.path for call in sandbox.calls] == [Endpoints.START_RECORDING]


class DiesAfterOneRoundTrip(Schedule):
    """A schedule whose producer is killed as it starts a round trip of the schedule's own."""

    def add(self, delivery: Delivery, *, within: Pipeline | None = None) -> None:
        if within is None:
            raise KeyboardInterrupt("the producer is killed")
        super().add(delivery, within=within)


class KilledOnceCancelled(redis.Redis):
    """A producer's Redis client; the producer is killed the moment a cancel script answers
    that it cancelled the job (whatever else its answer holds)."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        answer = super().execute_command(*args, **options)
        first = answer[0] if isinstance(answer, list) and answer else answer
        if args[0] == "EVALSHA" and first in (b"cancelled", "cancelled"):
            raise KeyboardInterrupt("the producer is killed")
        return answer


class TestHolding:
    def test_a_job_is_never_recorded_scheduled_without_its_schedule_entry(
        self, redis_client, namespace, reporter, claims, clock, store
    ):
        """The record and the entry are one transaction: a producer killed after it leaves
        both; one killed before, neither. Never a job scheduled that nothing will deliver."""
        schedule = DiesAfterOneRoundTrip(redis_client, namespace=namespace, clock=clock)
        scheduler = Scheduler(
            schedule=schedule, reporter=reporter, claim_key=claims.key, clock=clock
        )
        job = Job("j1", START_RECORDING, room_job(startAt=at(clock, 3600)))
        with contextlib.suppress(KeyboardInterrupt):
            scheduler.hold(job, START_RECORDING.timing(job.body, grace=900))
        assert store.get("j1").state is State.SCHEDULED
        assert [d.job_id for d in schedule.pending()] == ["j1"]


class TestLateJobs:
    def test_a_late_job_starts_at_once(self, runner, sandbox, clock):
        """Its startAt passed while it sat in a backlog, but its deadline has not."""
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, -600)), job_id="j1")
        assert outcome.state is State.SUCCEEDED
        assert len(sandbox.accepted(Endpoints.START_RECORDING)) == 1

    def test_a_job_past_its_deadline_fails_without_a_call(
        self, runner, sandbox, dead_letters, sink, clock
    ):
        """Past the grace window (15 minutes by default) a recording would be too late."""
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, -901)), job_id="j1")
        assert outcome.state is State.FAILED
        assert outcome.error.reason == "start_deadline_passed"
        assert at(clock, -1) in outcome.error.message
        assert sandbox.calls == []
        assert dead_letters.get("j1").error["reason"] == "start_deadline_passed"
        assert sink.types == ["recording.failed"]

    @pytest.mark.parametrize("back", [True, False], ids=["videosdk-back", "outage-goes-on"])
    def test_an_outage_during_the_meeting_check_is_retried_at_the_deadline_at_the_latest(
        self, make_runner, sandbox, schedule, clock, back
    ):
        """The check meets an outage 10 s before the deadline, and the re-queue delay is 15 s:
        the retry is due at the deadline, not after it (the job was retrying past its
        deadline, then failed start_deadline_passed, its error silent on the outage). There it
        either starts, or fails upstream_unavailable naming the deadline."""
        runner = make_runner(limits=Limits(outage_window=10_000))
        outage = Fault(status=503, times=1_000, path=Endpoints.SESSIONS)
        sandbox.inject(outage)
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 10))
        deadline = clock.now + 10
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.RETRYING
        [retry] = schedule.pending()
        assert retry.due == deadline
        if back:
            sandbox.reset()
            sandbox.make_live(ROOM)
        clock.now = retry.due + 0.3  # as the dispatcher delivers it
        schedule.cancel("j1")
        outcome = runner.run(START_RECORDING, job, job_id="j1")
        if back:
            assert outcome.state is State.SUCCEEDED
            return
        assert (outcome.state, outcome.error.reason) == (State.FAILED, "upstream_unavailable")
        assert f"unavailable up to the start deadline ({at(clock, -0.3)})" in outcome.error.message

    def test_a_check_after_an_outage_that_finds_no_meeting_announces_the_wait(
        self, make_runner, sandbox, schedule, sink, clock
    ):
        """Retrying after an outage, the check gets through and finds no live meeting: the
        job waits, and says so (the waiting event was left out after a retry)."""
        runner = make_runner(limits=Limits(outage_window=10_000))
        sandbox.inject(Fault(status=503, times=5, path=Endpoints.SESSIONS))
        sandbox.end_session(ROOM)
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 600))
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.RETRYING
        [retry] = schedule.pending()
        clock.now = retry.due
        schedule.cancel("j1")
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.WAITING
        assert sink.types[-2:] == ["recording.retrying", "recording.waiting"]

    def test_a_retry_at_stop_at_never_starts_the_recording(
        self, make_runner, sandbox, schedule, clock
    ):
        """A start with stopAt and no startAt has stopAt for its deadline: its retry after an
        outage, due there, must not start a recording that is to be stopped already."""
        runner = make_runner(limits=Limits(outage_window=10_000))
        sandbox.inject(Fault(status=503, times=5, path=Endpoints.START_RECORDING))
        job = room_job(stopAt=at(clock, 10))
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.RETRYING
        [retry] = schedule.pending()
        clock.now = retry.due + 0.3
        schedule.cancel("j1")
        outcome = runner.run(START_RECORDING, job, job_id="j1")
        assert (outcome.state, outcome.error.reason) == (State.FAILED, "start_deadline_passed")
        assert sandbox.accepted(Endpoints.START_RECORDING) == []

    def test_a_start_past_its_deadline_after_an_unanswered_attempt_keeps_its_stop(
        self, make_runner, sandbox, schedule, store, sink, clock
    ):
        """The first attempt started the recording, its answer lost to a 503; the retry comes
        after startDeadline. The job fails without a new start, saying the recording may run,
        and the stop at stopAt is still scheduled: nothing it may have started runs on. The
        stop's `scheduled` event follows the start's `failed`."""
        stop_at = clock.now + 3600
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 10), stopAt=epoch_iso(stop_at))
        outcome = retried_past_its_deadline(make_runner, sandbox, schedule, clock, job)
        assert outcome.error.reason == "start_deadline_passed"
        assert "may have started the recording: j1:stop stops it" in outcome.error.message
        assert len(sandbox.accepted(Endpoints.START_RECORDING)) == 0
        assert store.get("j1").stop_job_id == "j1:stop"
        [stop] = schedule.pending()
        assert (stop.job_id, stop.due) == ("j1:stop", stop_at)
        ended = [(event["type"], event["subject"]) for event in sink.events[-2:]]
        assert ended == [("recording.failed", "j1"), ("recording.scheduled", "j1:stop")]

    def test_without_a_stop_at_such_a_start_is_stopped_at_once(
        self, make_runner, sandbox, schedule, store, clock
    ):
        """No stopAt to keep: the stop is scheduled now, as a cancel would."""
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 10))
        outcome = retried_past_its_deadline(make_runner, sandbox, schedule, clock, job)
        assert outcome.state is State.FAILED
        [stop] = schedule.pending()
        assert (stop.job_id, stop.due) == ("j1:stop", pytest.approx(clock.now))
        make_runner().run(STOP_RECORDING, stop.job, job_id=stop.job_id)
        assert not sandbox.recording_running(ROOM)

    def test_a_start_past_its_deadline_after_only_429s_holds_no_stop(
        self, make_runner, sandbox, schedule, store, clock
    ):
        """Its attempts were all refused unprocessed: nothing can have started, so the job
        fails saying it was not started, and no stop is scheduled."""
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 10))
        outcome = retried_past_its_deadline(make_runner, sandbox, schedule, clock, job, REFUSED)
        assert outcome.error.reason == "start_deadline_passed"
        assert outcome.error.message.endswith("; it was not started")
        assert store.get("j1").stop_job_id is None
        assert schedule.pending() == []

    def test_an_explicit_start_deadline_replaces_the_grace_window(self, runner, sandbox, clock):
        """startDeadline is the job's own limit, shorter or longer than the default."""
        job = room_job(startAt=at(clock, -3600), startDeadline=at(clock, 60))
        assert runner.run(START_RECORDING, job, job_id="late-ok").state is State.SUCCEEDED
        job = room_job(startAt=at(clock, -30), startDeadline=at(clock, -10))
        assert runner.run(START_RECORDING, job, job_id="too-late").state is State.FAILED

    def test_a_deadline_without_start_at_limits_an_immediate_job(self, runner, sandbox, clock):
        """A job for now that sat in a backlog past its startDeadline is not started."""
        outcome = runner.run(START_RECORDING, room_job(startDeadline=at(clock, -1)), job_id="j1")
        assert outcome.error.reason == "start_deadline_passed"
        assert sandbox.calls == []


class TestWaitingForTheMeeting:
    def test_a_room_without_a_live_session_makes_the_job_wait(
        self, runner, sandbox, schedule, store, sink, clock
    ):
        """No start is attempted; the job checks again after the poll interval."""
        sandbox.end_session(ROOM)
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 0)), job_id="j1")
        assert (outcome.state, outcome.deferred) == (State.WAITING, True)
        assert sandbox.calls_to(Endpoints.START_RECORDING) == []
        [delivery] = schedule.pending()
        assert delivery.due == clock.now + 10
        assert store.get("j1").state is State.WAITING
        assert sink.types == ["recording.waiting"]
        assert sink.events[0]["data"]["deadline"] == at(clock, 900)

    def test_the_job_starts_once_the_meeting_is_live(self, runner, sandbox, schedule, sink, clock):
        """A meeting that begins late is recorded at the next check after it begins."""
        sandbox.end_session(ROOM)
        job = room_job(startAt=at(clock, 0))
        runner.run(START_RECORDING, job, job_id="j1")
        clock.now += 10
        runner.run(START_RECORDING, job, job_id="j1")
        sandbox.make_live(ROOM)
        clock.now += 10
        outcome = runner.run(START_RECORDING, job, job_id="j1")
        assert outcome.state is State.SUCCEEDED
        assert len(sandbox.accepted(Endpoints.START_RECORDING)) == 1
        assert sink.types == ["recording.waiting", "recording.started"]

    def test_waiting_does_not_count_as_deliveries_of_a_crash_loop(
        self, make_runner, sandbox, clock
    ):
        """Twenty checks are twenty clean hand-backs, not a worker dying on the job."""
        runner = make_runner(limits=Limits(max_deliveries=2))
        sandbox.end_session(ROOM)
        job = room_job(startAt=at(clock, 0))
        for _ in range(20):
            assert runner.run(START_RECORDING, job, job_id="j1").state is State.WAITING
            clock.now += 10
        sandbox.make_live(ROOM)
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.SUCCEEDED

    def test_no_live_session_by_the_deadline_fails_meeting_not_live(
        self, runner, sandbox, schedule, dead_letters, sink, clock
    ):
        """The last check is made at the deadline itself; then the job fails."""
        sandbox.end_session(ROOM)
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 25))
        begin = clock.now
        runner.run(START_RECORDING, job, job_id="j1")
        checks = []
        while (delivery := schedule.get("j1")) is not None:
            checks.append(round(delivery.due - begin, 1))
            clock.now = delivery.due + 0.3  # the dispatcher's small delay
            schedule.cancel("j1")
            outcome = runner.run(START_RECORDING, job, job_id="j1")
        assert checks == [10, 20.3, 25]
        assert outcome.state is State.FAILED
        assert outcome.error.reason == "meeting_not_live"
        assert sandbox.calls_to(Endpoints.START_RECORDING) == []
        assert dead_letters.get("j1") is not None
        assert sink.types == ["recording.waiting", "recording.failed"]

    def test_a_meeting_live_at_the_last_check_is_still_recorded(self, runner, sandbox, clock):
        """The check at the deadline counts: a meeting that just began is recorded."""
        sandbox.end_session(ROOM)
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 5))
        runner.run(START_RECORDING, job, job_id="j1")
        sandbox.make_live(ROOM)
        clock.now += 5.3
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.SUCCEEDED

    def test_a_waiting_start_delivered_long_after_its_deadline_is_not_started(
        self, runner, sandbox, schedule, clock
    ):
        """Its last check may come a poll interval late, not hours: with every worker down for
        two hours, the meeting live by then, the job fails instead of starting."""
        sandbox.end_session(ROOM)
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 60))
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.WAITING
        clock.now += 7200
        sandbox.make_live(ROOM)
        schedule.cancel("j1")  # as the first dispatcher back takes it
        outcome = runner.run(START_RECORDING, job, job_id="j1")
        assert outcome.error.reason == "start_deadline_passed"
        assert sandbox.accepted(Endpoints.START_RECORDING) == []

    def test_a_failing_sessions_listing_is_retried_like_any_call(
        self, runner, sandbox, sleeps, clock
    ):
        """The listing goes through the same retry policy: a 503 is waited out."""
        sandbox.inject(Fault(status=503, path=Endpoints.SESSIONS))
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 0)), job_id="j1")
        assert outcome.state is State.SUCCEEDED
        assert len(sleeps.waits) == 1

    def test_a_scheduled_start_s_check_and_call_share_one_retry_window(
        self, make_runner, sandbox, schedule, sleeps, clock
    ):
        """A check that used up the window leaves the start one attempt, not a window of its
        own: retried in a fresh window, the delivery would outlive the claim's lease (a cancel,
        or a second delivery, could then slip in). The job goes back on the schedule."""
        scale = 100  # a slow listing: 0.15 s of real time is 15 s on the policy's clock
        policy = RetryPolicy(window=10, sleep=sleeps, clock=lambda: time.monotonic() * scale)
        sandbox.inject(
            Fault(latency=0.15, path=Endpoints.SESSIONS),
            Fault(status=503, times=5, path=Endpoints.START_RECORDING),
        )
        runner = make_runner(policy=policy)
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 0)), job_id="j1")
        assert (outcome.state, outcome.deferred) == (State.RETRYING, True)
        assert len(sandbox.calls_to(Endpoints.START_RECORDING)) == 1
        assert sleeps.waits == []
        assert [d.job_id for d in schedule.pending()] == ["j1"]

    def test_a_check_leaves_the_start_one_call_s_length_of_the_window(
        self, make_runner, sandbox, schedule, sleeps, clock
    ):
        """The start must end within the claim's lease (the window plus one call's timeouts,
        here 5 + 2 s). Listings failing for 8 s each: no check starts in the window's last 7 s,
        so the third failure hands the job back to the schedule instead of a fourth check and a
        start that would end past the lease."""
        scale = 100  # 0.08 s of real time is 8 s on the policy's clock
        policy = RetryPolicy(window=30, sleep=sleeps, clock=lambda: time.monotonic() * scale)
        sandbox.inject(Fault(status=503, latency=0.08, times=3, path=Endpoints.SESSIONS))
        runner = make_runner(policy=policy)
        outcome = runner.run(START_RECORDING, room_job(startAt=at(clock, 0)), job_id="j1")
        assert (outcome.state, outcome.deferred) == (State.RETRYING, True)
        assert len(sandbox.calls_to(Endpoints.SESSIONS)) <= 3
        assert sandbox.calls_to(Endpoints.START_RECORDING) == []
        assert [d.job_id for d in schedule.pending()] == ["j1"]


class TestScheduledStops:
    def test_a_start_with_stop_at_schedules_its_stop_when_it_succeeds(
        self, runner, schedule, store, sink, clock
    ):
        """The stop job is <id>:stop, due at stopAt, with the same target and metadata. Its
        `scheduled` event follows the start's `started` (it used to come first)."""
        job = room_job(startAt=at(clock, 0), stopAt=at(clock, 3600))
        runner.run(START_RECORDING, job, job_id="j1")
        [stop] = schedule.pending()
        assert (stop.job_id, stop.task, stop.due) == (
            "j1:stop",
            "recq.stop_recording",
            clock.now + 3600,
        )
        assert stop.job == {
            "roomId": ROOM,
            "stopAt": at(clock, 3600),
            "metadata": {"meeting": "board"},
        }
        assert store.get("j1").to_json()["stopJobId"] == "j1:stop"
        assert store.get("j1:stop").state is State.SCHEDULED
        assert sink.types == ["recording.started", "recording.scheduled"]
        assert [event["subject"] for event in sink.events] == ["j1", "j1:stop"]
        assert sink.events[1]["data"]["kind"] == "stop-recording"

    def test_a_failed_start_schedules_no_stop(self, runner, sandbox, schedule, clock):
        """There is nothing to stop."""
        sandbox.inject(Fault(status=400))
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        assert schedule.pending() == []

    def test_the_stop_job_ends_the_room_recording(self, runner, sandbox, schedule, sink, clock):
        """POST /v2/recordings/end with the room; the event is recording.stopped."""
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        [stop] = schedule.pending()
        clock.now += 60
        outcome = runner.run(STOP_RECORDING, stop.job, job_id=stop.job_id)
        assert (outcome.state, outcome.reconciled) == (State.SUCCEEDED, False)
        assert posts(sandbox, Endpoints.STOP_RECORDING) == [{"roomId": ROOM}]
        assert not sandbox.recording_running(ROOM)
        assert sink.types[-1] == "recording.stopped"

    def test_a_track_stop_names_the_same_participant_and_kind(
        self, runner, sandbox, schedule, clock
    ):
        """The track stop must carry the started kind, or VideoSDK would stop nothing."""
        job = {"roomId": ROOM, "participantId": "p1", "kind": "audio", "stopAt": at(clock, 60)}
        runner.run(START_TRACK_RECORDING, job, job_id="t1")
        [stop] = schedule.pending()
        clock.now += 60
        runner.run(STOP_TRACK_RECORDING, stop.job, job_id=stop.job_id)
        assert posts(sandbox, Endpoints.STOP_TRACK_RECORDING) == [
            {"roomId": ROOM, "participantId": "p1", "kind": "audio"}
        ]
        assert not sandbox.track_running(ROOM, "p1", "audio")

    def test_a_stop_with_nothing_recording_is_reconciled(self, runner, sandbox, sink):
        """The meeting ended first (and its recording with it): the stop's aim already holds."""
        sandbox.end_session(ROOM)
        outcome = runner.run(STOP_RECORDING, {"roomId": ROOM}, job_id="s1")
        assert (outcome.state, outcome.reconciled) == (State.SUCCEEDED, True)
        assert sink.events[-1]["data"]["reconciled"] is True

    def test_a_stop_due_later_waits_on_the_schedule(self, runner, sandbox, schedule, clock):
        """A stop job's own time is its stopAt."""
        outcome = runner.run(STOP_RECORDING, {"roomId": ROOM, "stopAt": at(clock, 60)}, job_id="s1")
        assert outcome.state is State.SCHEDULED
        assert sandbox.calls == []
        assert schedule.pending()[0].due == clock.now + 60


class TestAStartIsKeptWhileItsStopWaits:
    """A start's record is kept until a TTL after its stop is due, however far ahead: a cancel
    or a move of the start must find it. It used to expire a TTL after the start ended, and
    ``recq cancel`` of a start recording for longer than the TTL called it unknown."""

    TTL = 3600
    HOUR = 3600

    @pytest.fixture
    def store(self, store_on_the_clock):
        """The store on the test's clock, keeping records an hour."""
        return store_on_the_clock(self.TTL)

    def kept_for(self, store, redis_client, job_id) -> list[int]:
        """How long the job's record and history are still kept, in seconds."""
        return [redis_client.ttl(key) for key in store.keys(job_id)]

    def assert_kept_until_a_ttl_after(self, store, redis_client, job_id, due, clock):
        expected = due - clock.now + self.TTL
        for left in self.kept_for(store, redis_client, job_id):
            assert expected - 5 < left <= expected

    def test_a_start_whose_stop_is_due_after_the_ttl(self, runner, store, redis_client, clock):
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 3 * self.HOUR)), job_id="j1")
        assert store.get("j1").state is State.SUCCEEDED
        self.assert_kept_until_a_ttl_after(
            store, redis_client, "j1", clock.now + 3 * self.HOUR, clock
        )

    def test_a_start_past_its_deadline_whose_stop_waits(
        self, make_runner, sandbox, schedule, store, redis_client, clock
    ):
        """It failed, but an unanswered attempt may have started the recording: its stop waits
        for stopAt, and the start is kept as long."""
        stop_at = clock.now + 3 * self.HOUR
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 10), stopAt=epoch_iso(stop_at))
        assert retried_past_its_deadline(make_runner, sandbox, schedule, clock, job).error
        self.assert_kept_until_a_ttl_after(store, redis_client, "j1", stop_at, clock)

    def test_moving_its_stop_later_keeps_it_longer_and_earlier_never_shorter(
        self, runner, scheduler, store, redis_client, clock
    ):
        """Moved through the start or through the stop's own id alike."""
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        scheduler.reschedule("j1", stop_at=at(clock, 10 * self.HOUR))
        self.assert_kept_until_a_ttl_after(
            store, redis_client, "j1", clock.now + 10 * self.HOUR, clock
        )
        scheduler.reschedule("j1:stop", stop_at=at(clock, 20 * self.HOUR))
        self.assert_kept_until_a_ttl_after(
            store, redis_client, "j1", clock.now + 20 * self.HOUR, clock
        )
        scheduler.reschedule("j1", stop_at=at(clock, 60))
        self.assert_kept_until_a_ttl_after(
            store, redis_client, "j1", clock.now + 20 * self.HOUR, clock
        )

    def test_a_stop_held_for_a_start_that_had_none(
        self, runner, scheduler, store, redis_client, clock
    ):
        runner.run(START_RECORDING, room_job(), job_id="j1")
        assert max(self.kept_for(store, redis_client, "j1")) <= self.TTL
        scheduler.reschedule("j1", stop_at=at(clock, 5 * self.HOUR))
        self.assert_kept_until_a_ttl_after(
            store, redis_client, "j1", clock.now + 5 * self.HOUR, clock
        )


class TestCancel:
    def test_a_cancelled_job_never_runs(
        self, runner, scheduler, sandbox, schedule, store, sink, clock
    ):
        """It leaves the schedule and ends cancelled; a delivery already on its way does nothing."""
        job = room_job(startAt=at(clock, 60))
        runner.run(START_RECORDING, job, job_id="j1")
        assert scheduler.cancel("j1").cancelled == ("j1",)
        assert schedule.pending() == []
        assert store.get("j1").state is State.CANCELLED
        clock.now += 60
        late = runner.run(START_RECORDING, job, job_id="j1")
        assert (late.state, late.duplicate) == (State.CANCELLED, True)
        assert sandbox.calls == []
        assert sink.types == ["recording.scheduled", "recording.cancelled"]

    def test_a_waiting_job_can_be_cancelled(self, runner, scheduler, sandbox, store, clock):
        """Between two checks for its meeting."""
        sandbox.end_session(ROOM)
        runner.run(START_RECORDING, room_job(startAt=at(clock, 0)), job_id="j1")
        scheduler.cancel("j1")
        assert store.get("j1").state is State.CANCELLED

    def test_cancelling_a_start_whose_unanswered_attempt_may_have_applied_stops_it(
        self, make_runner, scheduler, sandbox, schedule, store, sink, clock
    ):
        """Its first attempt started the recording, but VideoSDK's answer was a 503; the job
        waits to retry. Cancelled, it cannot know: a stop is scheduled now, and ends it. The
        stop's `scheduled` event follows the start's `cancelled`."""
        runner = unanswered_start(make_runner, sandbox, room_job())
        scheduler.cancel("j1")
        ended = [(event["type"], event["subject"]) for event in sink.events[-2:]]
        assert ended == [("recording.cancelled", "j1"), ("recording.scheduled", "j1:stop")]
        record = store.get("j1")
        assert (record.state, record.stop_job_id) == (State.CANCELLED, "j1:stop")
        [stop] = schedule.pending()
        assert (stop.job_id, stop.due) == ("j1:stop", pytest.approx(clock.now))
        runner.run(STOP_RECORDING, stop.job, job_id=stop.job_id)
        assert not sandbox.recording_running(ROOM)

    def test_a_producer_killed_as_it_cancels_leaves_the_stop_held(
        self, make_runner, sandbox, redis_url, namespace, reporter, claims, clock, schedule, store
    ):
        """The cancel and the stop it holds are one script: a producer killed the moment that
        script answers, before any other round trip, leaves the job cancelled with its stop
        due now, never a recording that may run on without one."""
        unanswered_start(make_runner, sandbox, room_job())
        with KilledOnceCancelled.from_url(redis_url) as client:
            cancelling = Schedule(client, namespace=namespace, clock=clock)
            killed = Scheduler(
                schedule=cancelling, reporter=reporter, claim_key=claims.key, clock=clock
            )
            with pytest.raises(KeyboardInterrupt):
                killed.cancel("j1")
        record = store.get("j1")
        assert (record.state, record.stop_job_id) == (State.CANCELLED, "j1:stop")
        assert store.get("j1:stop").state is State.SCHEDULED
        [stop] = schedule.pending()
        assert (stop.job_id, stop.due) == ("j1:stop", pytest.approx(clock.now))

    def test_cancelling_a_start_whose_attempts_were_all_refused_schedules_no_stop(
        self, make_runner, scheduler, sandbox, schedule, store
    ):
        """Answered 429 every time, it waits to retry: a 429 is refused before any work, so no
        recording can have started, and none is stopped."""
        unanswered_start(make_runner, sandbox, room_job(), REFUSED)
        scheduler.cancel("j1")
        record = store.get("j1")
        assert (record.state, record.stop_job_id) == (State.CANCELLED, None)
        assert schedule.pending() == []

    def test_cancelling_a_start_whose_stop_already_ran_holds_no_other(
        self, make_runner, scheduler, sandbox, schedule, store
    ):
        """Its stop job ended already (the delivery that held it died before recording the
        start's success): the cancel neither holds it again nor names it as stopping anything."""
        unanswered_start(make_runner, sandbox, room_job())
        store.transition("j1:stop", State.SUCCEEDED, kind=STOP_RECORDING.name)
        scheduler.cancel("j1")
        assert store.get("j1").stop_job_id is None
        assert schedule.pending() == []

    def test_cancelling_a_start_that_made_no_attempt_schedules_no_stop(
        self, runner, scheduler, schedule, store, clock
    ):
        runner.run(START_RECORDING, room_job(startAt=at(clock, 60)), job_id="j1")
        scheduler.cancel("j1")
        assert store.get("j1").stop_job_id is None
        assert schedule.pending() == []

    def test_a_job_being_run_cannot_be_cancelled(self, runner, scheduler, claims, clock, sleeps):
        """While a delivery holds its claim the call may be in flight: cancelling is refused."""
        runner.run(START_RECORDING, room_job(startAt=at(clock, 60)), job_id="j1")
        claims.acquire("j1")
        with pytest.raises(JobConflict, match=r"being run right now.*--stop-at now ends it"):
            scheduler.cancel("j1")
        assert sum(sleeps.waits) == pytest.approx(2.5)  # it tried again for a moment first

    def test_a_finished_job_cannot_be_cancelled(self, runner, scheduler):
        """Its outcome stands."""
        runner.run(START_RECORDING, room_job(), job_id="j1")
        with pytest.raises(JobConflict, match=r"already ended \(succeeded\)"):
            scheduler.cancel("j1")

    def test_a_cancelled_job_cannot_be_cancelled_again(self, runner, scheduler, sink, clock):
        """The second cancel says the job already ended, and announces nothing."""
        runner.run(START_RECORDING, room_job(startAt=at(clock, 60)), job_id="j1")
        scheduler.cancel("j1")
        with pytest.raises(JobConflict, match=r"already ended \(cancelled\)"):
            scheduler.cancel("j1")
        assert sink.types == ["recording.scheduled", "recording.cancelled"]

    def test_an_unknown_job_is_named(self, scheduler):
        with pytest.raises(UnknownJob, match="'nope'"):
            scheduler.cancel("nope")

    def test_cancelling_a_started_job_cancels_its_pending_stop(
        self, runner, scheduler, schedule, store, clock
    ):
        """The recording keeps running; only the scheduled stop is dropped."""
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        done = scheduler.cancel("j1")
        assert (done.cancelled, done.pending_stops) == ((), (("j1", "j1:stop"),))
        assert store.get("j1:stop").state is State.CANCELLED
        assert store.get("j1").state is State.SUCCEEDED
        assert schedule.pending() == []

    def test_a_cancel_that_waits_out_a_start_cancels_the_stop_it_holds(
        self, runner, scheduler, claims, store, schedule, clock, monkeypatch
    ):
        """The cancel meets a delivery's claim and tries again; meanwhile that delivery starts
        the recording and holds its stop. The cancel then does what it does to any started
        job: it cancels the pending stop. (It answered "already ended (succeeded)", and the
        stop stayed, unlike a cancel made a moment later.)"""
        job = room_job(startAt=at(clock, 60), stopAt=at(clock, 3600))
        runner.run(START_RECORDING, job, job_id="j1")
        busy = claims.acquire("j1")

        def delivery_ends(_pause: float) -> None:
            claims.release("j1", busy)
            clock.now += 60
            schedule.cancel("j1")  # as the dispatcher takes it
            runner.run(START_RECORDING, job, job_id="j1")

        monkeypatch.setattr(scheduler, "_sleep", delivery_ends)
        done = scheduler.cancel("j1")
        assert done.pending_stops == (("j1", "j1:stop"),)
        assert store.get("j1").state is State.SUCCEEDED
        assert store.get("j1:stop").state is State.CANCELLED
        assert schedule.pending() == []

    def test_a_stop_being_run_is_refused_without_advice_to_stop_it(
        self, runner, scheduler, claims, clock
    ):
        """A start being run is told how to end its recording once it started; a stop being
        run has nothing to be told."""
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        claims.acquire("j1:stop")
        with pytest.raises(JobConflict, match=r"job j1:stop is being run right now[^;]*$"):
            scheduler.cancel("j1")


@pytest.fixture
def racing(redis_client, namespace, reporter, claims, schedule, clock):
    """A scheduler whose reschedule races a delivery: between the schedule's change and the
    record's, a dispatcher publishes the job, and the given runner runs it."""

    def make(runner) -> Scheduler:
        class RunAtOnce(Schedule):
            def replace(self, old: Delivery, new: Delivery, **given: Any) -> bool:
                replaced = super().replace(old, new, **given)
                deliver = lambda d: runner.run(BY_TASK[d.task], d.job, job_id=d.job_id)  # noqa: E731
                Dispatcher(schedule, deliver).tick()
                return replaced

        moving = RunAtOnce(redis_client, namespace=namespace, clock=clock)
        return Scheduler(schedule=moving, reporter=reporter, claim_key=claims.key, clock=clock)

    return make


class TestReschedule:
    def test_a_job_run_while_it_was_being_moved_keeps_its_outcome(
        self, runner, racing, sandbox, store, sink, clock
    ):
        """The new times make the job due; between the schedule's change and the record's, a
        dispatcher publishes it and a worker starts it. The record says succeeded, not
        scheduled, and no scheduled event follows the start."""
        moving = racing(runner)
        sandbox.end_session(ROOM)
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 60))
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.WAITING
        sandbox.make_live(ROOM)
        clock.now += 5
        moving.reschedule("j1", start_deadline=at(clock, 3600))
        assert store.get("j1").state is State.SUCCEEDED
        assert len(sandbox.accepted(Endpoints.START_RECORDING)) == 1
        assert sink.types == ["recording.waiting", "recording.started"]

    def test_a_start_run_while_it_was_being_moved_keeps_its_attempts_counted(
        self, make_runner, racing, scheduler, sandbox, store, clock
    ):
        """Answered 429 every time, the start waits to retry. Moved, it is delivered between the
        schedule's change and the record's, and that delivery's first attempt starts the
        recording unanswered. The reschedule's write holds the older count of attempts: the
        record keeps the newer, so a cancel still schedules the stop."""
        runner = unanswered_start(make_runner, sandbox, room_job(), REFUSED)
        sandbox.inject(*UNANSWERED)
        racing(runner).reschedule("j1", stop_at=at(clock, 3600))
        assert sandbox.recording_running(ROOM)
        scheduler.cancel("j1")
        assert store.get("j1").stop_job_id == "j1:stop"

    def test_a_start_delivered_as_it_is_moved_keeps_its_delivery_s_state(
        self, make_runner, racing, sandbox, store, clock
    ):
        """Answered 429 every time, the start waits to retry. Moved, it is delivered at once and
        answered 429 again: it waits to retry once more, and its record says so ('retrying',
        ten attempts), not the move's 'scheduled' written after that delivery."""
        runner = unanswered_start(make_runner, sandbox, room_job(), REFUSED)
        sandbox.inject(*REFUSED)
        racing(runner).reschedule("j1", stop_at=at(clock, 3600))
        record = store.get("j1")
        assert (record.state, record.attempts) == (State.RETRYING, 10)
        states = [entry["state"] for entry in record.history]
        assert "running" in states[states.index("scheduled") :]  # the move, then the delivery

    def test_a_scheduled_job_moves_to_its_new_time(
        self, runner, scheduler, schedule, store, sink, clock
    ):
        """The schedule, the record and a new scheduled event all say the new time."""
        runner.run(START_RECORDING, room_job(startAt=at(clock, 60)), job_id="j1")
        _, timing = scheduler.reschedule("j1", start_at=at(clock, 7200), stop_at=at(clock, 9000))
        [delivery] = schedule.pending()
        assert delivery.due == clock.now + 7200
        assert delivery.job["startAt"] == at(clock, 7200)
        assert delivery.job["stopAt"] == at(clock, 9000)
        assert timing.deadline == clock.now + 7200 + 900
        assert store.get("j1").to_json()["dueAt"] == at(clock, 7200)
        assert sink.types == ["recording.scheduled", "recording.scheduled"]

    def test_new_times_are_validated_with_the_job(self, runner, scheduler, schedule, clock):
        """A stop before the new start is refused, and the job keeps its old time."""
        runner.run(
            START_RECORDING, room_job(startAt=at(clock, 60), stopAt=at(clock, 120)), job_id="j1"
        )
        with pytest.raises(InvalidJob, match="stopAt: must be after startAt"):
            scheduler.reschedule("j1", start_at=at(clock, 600))
        assert schedule.pending()[0].due == clock.now + 60

    def test_times_that_put_the_deadline_in_the_past_are_refused(
        self, runner, scheduler, schedule, clock
    ):
        """Moved to a start long past, the job would fail start_deadline_passed at once: the
        command says so instead of "scheduled", and the job keeps its time."""
        runner.run(START_RECORDING, room_job(startAt=at(clock, 60)), job_id="j1")
        with pytest.raises(JobConflict, match="past its start deadline"):
            scheduler.reschedule("j1", start_at=at(clock, -7200))
        assert schedule.pending()[0].due == clock.now + 60
        scheduler.reschedule("j1", start_at=at(clock, -60))  # late, within its grace: it runs

    def test_a_started_job_moves_its_pending_stop(self, runner, scheduler, schedule, clock):
        """Only --stop-at makes sense once the recording runs."""
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        job, _ = scheduler.reschedule("j1", stop_at=at(clock, 600))
        assert job.id == "j1:stop"
        assert schedule.pending()[0].due == clock.now + 600

    def test_a_started_job_with_no_stop_gets_one(self, runner, scheduler, schedule, store, clock):
        """It had no stopAt: --stop-at schedules its stop, which its record then names."""
        runner.run(START_RECORDING, room_job(), job_id="j1")
        job, timing = scheduler.reschedule("j1", stop_at=at(clock, 0))
        assert (job.id, timing.due) == ("j1:stop", clock.now)
        [stop] = schedule.pending()
        assert (stop.job_id, stop.job["stopAt"]) == ("j1:stop", at(clock, 0))
        assert store.get("j1").stop_job_id == "j1:stop"
        assert store.get("j1:stop").state is State.SCHEDULED

    def test_a_started_job_whose_stop_was_cancelled_gets_it_again(
        self, runner, scheduler, schedule, store, clock
    ):
        """Cancelling the pending stop kept the recording running; a new --stop-at ends it."""
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        scheduler.cancel("j1")
        scheduler.reschedule("j1", stop_at=at(clock, 600))
        assert store.get("j1:stop").state is State.SCHEDULED
        assert schedule.pending()[0].due == clock.now + 600

    def test_a_started_job_already_stopped_is_not_stopped_again(
        self, runner, scheduler, schedule, clock
    ):
        runner.run(START_RECORDING, room_job(stopAt=at(clock, 60)), job_id="j1")
        clock.now += 60
        [stop] = schedule.pending()
        runner.run(STOP_RECORDING, stop.job, job_id="j1:stop")
        with pytest.raises(JobConflict, match=r"stopped: j1:stop ended succeeded"):
            scheduler.reschedule("j1", stop_at=at(clock, 600))

    def test_a_stop_for_a_started_job_is_validated(self, runner, scheduler, schedule):
        runner.run(START_RECORDING, room_job(), job_id="j1")
        with pytest.raises(InvalidJob, match="stopAt"):
            scheduler.reschedule("j1", stop_at="tomorrow")
        assert schedule.pending() == []

    def test_a_job_no_longer_on_the_schedule_cannot_move(self, runner, scheduler):
        """Finished, or due and being published: too late."""
        runner.run(START_RECORDING, room_job(), job_id="j1")
        with pytest.raises(JobConflict, match="too late"):
            scheduler.reschedule("j1", start_at="2030-01-01T00:00:00Z")

    def test_a_stop_job_takes_only_a_stop_time(self, runner, scheduler, clock):
        runner.run(STOP_RECORDING, {"roomId": ROOM, "stopAt": at(clock, 60)}, job_id="s1")
        with pytest.raises(JobConflict, match="--stop-at"):
            scheduler.reschedule("s1", start_at=at(clock, 120))


class TestOutageRequeues:
    def test_requeues_after_an_outage_do_not_count_as_a_crash_loop(
        self, make_runner, sandbox, schedule, clock
    ):
        """Each re-queue is a clean hand-back: more of them than max_deliveries is fine."""
        runner = make_runner(limits=Limits(max_deliveries=2, outage_window=10_000))
        for _ in range(4):
            sandbox.inject(Fault(status=503, times=5))
            assert runner.run(START_RECORDING, room_job(), job_id="j1").state is State.RETRYING
            clock.now = schedule.pending()[0].due
            schedule.cancel("j1")
        assert runner.run(START_RECORDING, room_job(), job_id="j1").state is State.SUCCEEDED

    def test_an_outage_that_ended_is_not_counted_against_the_next(
        self, runner, sandbox, schedule, store, clock
    ):
        """A blip at startAt re-queues a waiting start; VideoSDK answers again (no meeting yet)
        for an hour; a second blip is a new outage, not the first one lasting an hour."""
        job = room_job(startAt=at(clock, 0), startDeadline=at(clock, 3 * 3600))
        sandbox.end_session(ROOM)
        sandbox.inject(Fault(status=503, times=5, path=Endpoints.SESSIONS))
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.RETRYING
        first_blip = clock.now
        while clock.now < first_blip + 3600:
            clock.now = schedule.pending()[0].due
            schedule.cancel("j1")  # as the dispatcher takes it
            assert runner.run(START_RECORDING, job, job_id="j1").state is State.WAITING
        assert (store.get("j1").outage_since, store.get("j1").requeues) == (None, 0)
        sandbox.inject(Fault(status=503, times=5, path=Endpoints.SESSIONS))
        clock.now = schedule.pending()[0].due
        schedule.cancel("j1")
        assert runner.run(START_RECORDING, job, job_id="j1").state is State.RETRYING
        assert store.get("j1").outage_since == clock.now
