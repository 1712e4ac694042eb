"""The runner across deliveries: duplicates, concurrent deliveries, long outages, dead letters."""

from __future__ import annotations

import pytest
import redis

from worker.claims import ClaimStatus
from worker.errors import Target
from worker.jobs import START_RECORDING, START_TRACK_RECORDING
from worker.runner import Limits
from worker.sandbox import Fault
from worker.state import Queued, State, epoch_iso

JOB = {"roomId": "r1", "metadata": {"meeting": "board"}}


class TestIdempotency:
    def test_a_duplicate_of_a_finished_job_makes_no_call(self, runner, sandbox, sink):
        """A second delivery of a succeeded job reports the original outcome, without a call."""
        runner.run(START_RECORDING, JOB, job_id="j1")
        again = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (again.state, again.attempts, again.duplicate) == (State.SUCCEEDED, 1, True)
        assert len(sandbox.calls) == 1
        assert sink.types == ["recording.started"]

    def test_a_message_for_a_job_that_ended_says_so_in_the_log(self, runner, caplog):
        """A producer in another language sending a corrected job under a failed job's id saw
        no event and no line: the line names the job, its state and what to do."""
        runner.run(START_RECORDING, {"roomId": 7}, job_id="j1")
        with caplog.at_level("INFO", logger="worker.runner"):
            again = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (again.state, again.duplicate) == (State.FAILED, True)
        assert "job j1 had already ended (failed): this message ran nothing" in caplog.text

    def test_a_duplicate_of_a_failed_job_reports_its_error(self, runner, sandbox):
        """A rejected job stays rejected: a redelivery returns the same error and makes no call."""
        sandbox.inject(Fault(status=400))
        first = runner.run(START_RECORDING, JOB, job_id="j1")
        again = runner.run(START_RECORDING, JOB, job_id="j1")
        assert again.duplicate
        assert again.error == first.error
        assert len(sandbox.calls) == 1

    def test_a_delivery_while_another_holds_the_claim_is_deferred(
        self, runner, sandbox, claims, schedule, clock
    ):
        """A job being run elsewhere is not called again: it waits until that claim's lease ends."""
        held = claims.acquire("j1")
        assert held.status is ClaimStatus.CLAIMED
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert outcome.deferred
        assert sandbox.calls == []
        [delivery] = schedule.pending()
        assert clock.now + 29 < delivery.due <= clock.now + 31

    @pytest.mark.parametrize(
        ("faults", "state"),
        [
            ([], State.SUCCEEDED),
            ([Fault(status=400)], State.FAILED),
            ([Fault(status=503, times=5)], State.RETRYING),
        ],
        ids=["succeeded", "failed", "requeued-after-outage"],
    )
    def test_the_write_that_hands_a_job_on_frees_its_claim(
        self,
        runner,
        sandbox,
        store,
        claims,
        dead_letters,
        redis_client,
        sink,
        monkeypatch,
        faults,
        state,
    ):
        """Whoever sees the job ended (or handed back) can run it again at once: the claim is
        gone with the write its event reports, and a failure's dead letter is already kept."""
        seen = []
        publish = sink.publish

        def spy(event):
            publish(event)
            if event["data"]["state"] == state.value:
                job_id = event["subject"]
                recorded = store.get(job_id).state
                claimed = redis_client.exists(claims.key(job_id))
                seen.append((recorded, claimed, dead_letters.get(job_id)))

        monkeypatch.setattr(sink, "publish", spy)
        sandbox.inject(*faults)
        runner.run(START_RECORDING, JOB, job_id="j1")
        recorded, claimed, letter = seen[-1]  # the last: retries within the delivery keep it
        assert (recorded, claimed) == (state, 0)
        assert (letter is not None) == (state is State.FAILED)

    def test_a_replay_on_the_failed_event_is_claimed_at_once(
        self, runner, sandbox, store, claims, sink, monkeypatch
    ):
        """A consumer of job.failed that replays the job straight away is not held back."""
        answers = []
        publish = sink.publish

        def replay_on_failure(event):
            publish(event)
            if event["type"].endswith(".failed"):
                store.enqueue("j1", kind="start-recording", target=None, metadata={}, fresh=True)
                answers.append(claims.acquire("j1").status)

        monkeypatch.setattr(sink, "publish", replay_on_failure)
        sandbox.inject(Fault(status=400))
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert answers == [ClaimStatus.CLAIMED]

    @pytest.mark.parametrize(
        ("job", "releases"),
        [
            (JOB, 0),
            ({**JOB, "startAt": "2099-01-01T10:00:00Z"}, 1),
        ],
        ids=["ended: released by its last write", "scheduled: released after"],
    )
    def test_a_claim_is_released_once(
        self, runner, claims, redis_client, monkeypatch, job, releases
    ):
        """No second round trip to release a claim the last write already gave back; a path
        that writes without releasing still releases it after."""
        calls = []
        release = claims.release
        monkeypatch.setattr(claims, "release", lambda *a: (calls.append(a), release(*a)))
        runner.run(START_RECORDING, job, job_id="j1")
        assert len(calls) == releases
        assert not redis_client.exists(claims.key("j1"))

    def test_a_delivery_that_raises_releases_its_claim(
        self, runner, claims, redis_client, monkeypatch
    ):
        """A Redis outage mid-delivery is raised, for the task to hand the message back, and
        does not leave the claim held."""

        def broken(*args, **kwargs):
            raise redis.ConnectionError("Redis went away")

        monkeypatch.setattr(runner, "_attempt", broken)
        with pytest.raises(redis.ConnectionError):
            runner.run(START_RECORDING, JOB, job_id="j1")
        assert not redis_client.exists(claims.key("j1"))

    def test_a_fault_of_recq_s_own_fails_the_job_as_an_internal_error(
        self, runner, claims, store, dead_letters, sink, redis_client, monkeypatch
    ):
        """Not left in a state nothing would move it from: failed, announced, kept as a dead
        letter to replay once the fault is mended, its claim released."""

        def broken(*args, **kwargs):
            raise KeyError("a bug")

        monkeypatch.setattr(runner, "_attempt", broken)
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.error.reason) == (State.FAILED, "internal_error")
        assert "KeyError" in outcome.error.message
        assert store.get("j1").state is State.FAILED
        assert dead_letters.get("j1").job == JOB
        assert sink.types == ["recording.failed"]
        assert not redis_client.exists(claims.key("j1"))

    def test_too_many_deliveries_fail_the_job(self, make_runner, sandbox, claims, dead_letters):
        """A job delivered more often than allowed (a crash loop) fails without a call."""
        runner = make_runner(limits=Limits(max_deliveries=2))
        for _ in range(2):
            claims.release("j1", claims.acquire("j1"))
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert outcome.error.reason == "too_many_deliveries"
        assert sandbox.calls == []
        assert dead_letters.get("j1").error["reason"] == "too_many_deliveries"


class TestLongOutages:
    def test_requeue_delays_grow_and_honour_retry_after(
        self, make_runner, sandbox, store, schedule, clock
    ):
        """Each spent budget doubles the delay; a longer Retry-After wins."""
        runner = make_runner()
        sandbox.inject(Fault(status=503, times=5))
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert schedule.pending()[0].due == clock.now + 15
        schedule.cancel("j1")
        sandbox.inject(Fault(status=503, times=4), Fault(status=429, retry_after="100"))
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert schedule.pending()[0].due == clock.now + 100
        assert store.get("j1").requeues == 2

    def test_a_re_queued_job_says_when_it_retries_until_it_moves_on(
        self, runner, sandbox, store, clock
    ):
        """Its record holds when it retries (`retryAt`, shown by `recq status`); the next write
        drops it: a delivery retrying in-process no longer shows the re-queue's time, past."""
        sandbox.inject(Fault(status=503, times=5))
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert store.get("j1").to_json()["retryAt"] == epoch_iso(clock.now + 15)
        store.transition("j1", State.RETRYING, attempt=7)  # as its next delivery's retry writes
        assert "retryAt" not in store.get("j1").to_json()

    def test_the_outage_window_ends_in_failure(self, make_runner, sandbox, dead_letters, clock):
        """Past the outage window the job fails upstream_unavailable and becomes a dead letter."""
        runner = make_runner(limits=Limits(outage_window=60))
        sandbox.inject(Fault(status=503, times=5))
        first = runner.run(START_RECORDING, JOB, job_id="j1")
        assert first.state is State.RETRYING
        clock.now += 50
        sandbox.inject(Fault(status=503, times=5))
        last = runner.run(START_RECORDING, JOB, job_id="j1")
        assert last.state is State.FAILED
        assert last.error.reason == "upstream_unavailable"
        assert "60 s outage window" in last.error.message
        assert last.attempts == 10
        assert dead_letters.get("j1").attempts == 10

    def test_a_job_enqueued_again_while_it_waits_to_retry_still_reconciles(
        self, runner, sandbox, store
    ):
        """A producer retrying its enqueue with the same jobId must not erase that an attempt
        may have started the recording: the new message's delivery reconciles the refusal."""
        sandbox.inject(Fault(status=503, applies=True), Fault(status=503, times=4))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.RETRYING
        store.enqueue_many([Queued("j1", "start-recording", Target("r1"), {})])
        assert store.get("j1").attempts == 5
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.reconciled) == (State.SUCCEEDED, True)
        assert sandbox.recording_running("r1")

    def test_a_replayed_dead_letter_whose_start_may_have_applied_reconciles(
        self, make_runner, sandbox, store
    ):
        """A replay starts the delivery and outage counters over, not the attempts: a start
        that failed after an outage may have been made, and the replay must not fail on it."""
        runner = make_runner(limits=Limits(outage_window=1))
        sandbox.inject(Fault(status=503, applies=True), Fault(status=503, times=4))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.FAILED
        store.enqueue("j1", kind="start-recording", target=Target("r1"), metadata={}, fresh=True)
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.reconciled) == (State.SUCCEEDED, True)
        assert sandbox.recording_running("r1")

    def test_a_replayed_dead_letter_whose_start_was_refused_does_not_reconcile(
        self, runner, make_client, sandbox, store
    ):
        """A refused start changed nothing, and its record says so: replayed into a room where
        someone else has started recording since, the job fails on the refusal instead of
        taking that recording for its own."""
        sandbox.inject(Fault(status=400))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.FAILED
        store.enqueue("j1", kind="start-recording", target=Target("r1"), metadata={}, fresh=True)
        make_client().post(START_RECORDING.endpoint, {"roomId": "r1"})
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.reconciled) == (State.FAILED, False)
        assert outcome.error.reason == "upstream_rejected"

    def test_a_bad_message_under_a_retrying_start_s_id_keeps_its_attempts(
        self, make_runner, sandbox, store
    ):
        """A message with the id of a start waiting to retry, but not a valid job, fails that
        job; the attempt that may have started its recording stays counted, so the replay
        still takes "already running" for its own."""
        runner = make_runner(limits=Limits(outage_window=10_000))
        sandbox.inject(Fault(status=503, applies=True), Fault(status=503, times=4))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.RETRYING
        assert runner.run(START_RECORDING, {"roomId": 7}, job_id="j1").state is State.FAILED
        store.enqueue("j1", kind="start-recording", target=Target("r1"), metadata={}, fresh=True)
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.reconciled) == (State.SUCCEEDED, True)

    def test_a_job_that_recovers_after_a_requeue_succeeds(self, runner, sandbox, store):
        """A requeued job delivered again after the outage succeeds, its attempts counted."""
        sandbox.inject(Fault(status=503, times=5))
        runner.run(START_RECORDING, JOB, job_id="j1")
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts) == (State.SUCCEEDED, 6)


class TestDeadLettersAndMessages:
    def test_a_rejected_job_is_kept_as_a_dead_letter(self, runner, sandbox, dead_letters):
        """The dead letter keeps the job as received, the reason and the attempts."""
        sandbox.inject(Fault(status=400))
        runner.run(START_RECORDING, JOB, job_id="j1")
        letter = dead_letters.get("j1")
        assert (letter.job, letter.attempts, letter.task) == (JOB, 1, "recq.start_recording")
        assert letter.error["reason"] == "upstream_rejected"

    def test_a_bad_message_under_a_retrying_job_s_id_reports_the_job_s_attempts(
        self, make_runner, sandbox, dead_letters, sink
    ):
        """The job it fails had made five attempts: its outcome, event and dead letter say 5,
        as its record does (they said attempt 0, the bad message's own count)."""
        runner = make_runner(limits=Limits(outage_window=10_000))
        sandbox.inject(Fault(status=503, times=5))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.RETRYING
        outcome = runner.run(START_RECORDING, {"roomId": 7}, job_id="j1")
        assert (outcome.state, outcome.attempts) == (State.FAILED, 5)
        assert sink.events[-1]["type"] == "recording.failed"
        assert sink.events[-1]["data"]["attempt"] == 5
        assert dead_letters.get("j1").attempts == 5

    def test_a_message_of_an_unknown_task_under_a_retrying_job_s_id_keeps_its_attempts(
        self, make_runner, sandbox, dead_letters
    ):
        """The same for a message the consumer refused: its dead letter says 5, not 0."""
        runner = make_runner(limits=Limits(outage_window=10_000))
        sandbox.inject(Fault(status=503, times=5))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.RETRYING
        runner.refuse("j1", "recq.nope", reason="unknown_task", message="no task is named")
        assert dead_letters.get("j1").attempts == 5

    def test_a_succeeded_job_leaves_no_dead_letter(self, runner, dead_letters):
        """Only failures are kept."""
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert dead_letters.list() == []

    @pytest.mark.parametrize(
        ("args", "kwargs", "named"),
        [
            ((JOB,), {}, "1 positional"),
            ((), {}, "no keyword 'job'"),
            ((), {"job": JOB, "extra": 1}, "keyword 'extra'"),
        ],
    )
    def test_a_message_with_the_wrong_arguments_fails_by_name(
        self, runner, sandbox, store, args, kwargs, named
    ):
        """A task called with anything but job=... is recorded as invalid, naming what it got."""
        outcome = runner.run_message(START_TRACK_RECORDING, args, kwargs, task_id="t1")
        assert outcome.error.reason == "invalid_job"
        assert named in outcome.error.message
        assert store.get("t1").state is State.FAILED
        assert sandbox.calls == []

    def test_a_refused_message_of_an_unknown_task_is_recorded(self, runner, store, dead_letters):
        """A message the consumer refused is failed and kept under its id."""
        runner.refuse("m1", "recq.nope", reason="unknown_task", message="no task is named")
        assert store.get("m1").error["reason"] == "unknown_task"
        assert dead_letters.get("m1").task == "recq.nope"
