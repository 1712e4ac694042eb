"""The job runner without Celery: validation, the retry policy, reconciliation, state and events.

Each runner calls the sandbox over real HTTP, keeps states in a real Redis, and publishes to a
sink that records events; retry waits are recorded by ``sleeps``, not spent.
"""

from __future__ import annotations

import pytest

from worker.errors import Target
from worker.jobs import START_RECORDING, STOP_RECORDING
from worker.rate_limit import Rate, RateLimiter
from worker.runner import Limits
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET, Fault
from worker.settings import Credentials, Secret
from worker.state import State, epoch_iso

START = START_RECORDING.endpoint
CREDENTIALS = Credentials(api_key=DEFAULT_API_KEY, secret=Secret(DEFAULT_SECRET))
JOB = {"roomId": "r1", "metadata": {"meeting": "board"}}


class TestJobRunner:
    def test_a_valid_job_succeeds_at_the_first_attempt(self, runner, sandbox, store, sink):
        """One call starts the recording; the state and a started event say so."""
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts, outcome.reconciled) == (State.SUCCEEDED, 1, False)
        assert [call.body for call in sandbox.calls] == [{"roomId": "r1"}]
        record = store.get("j1")
        assert [h["state"] for h in record.history] == ["running", "succeeded"]
        assert sink.types == ["recording.started"]
        assert sink.events[0]["data"]["attempt"] == 1
        assert sink.events[0]["data"]["metadata"] == {"meeting": "board"}

    def test_an_invalid_job_fails_without_calling_videosdk(self, runner, sandbox, store, sink):
        """A grid of five fails as invalid_job, naming the field, and nothing is sent."""
        bad = {"roomId": "r1", "config": {"layout": {"gridSize": 5}}}
        outcome = runner.run(START_RECORDING, bad, job_id="j1")
        assert (outcome.state, outcome.attempts) == (State.FAILED, 0)
        assert outcome.error.reason == "invalid_job"
        assert sandbox.calls == []
        assert store.get("j1").error["violations"][0]["field"] == "config.layout.gridSize"
        assert sink.types == ["recording.failed"]

    @pytest.mark.parametrize("how", ["invalid", "refused", "refused-unknown-task"])
    def test_a_failing_message_with_an_ended_job_s_id_leaves_its_outcome(
        self, runner, store, sink, dead_letters, how, caplog
    ):
        """A producer reusing the id of a job that succeeded, with a job that cannot run: the
        success stands, and no dead letter or failed event claims otherwise. It is logged."""
        runner.run(START_RECORDING, JOB, job_id="j1")
        if how == "invalid":
            outcome = runner.run(START_RECORDING, {"roomId": ""}, job_id="j1")
            assert (outcome.state, outcome.duplicate) == (State.SUCCEEDED, True)
        else:
            task = "recq.nope" if how == "refused-unknown-task" else START_RECORDING.task_name
            runner.refuse("j1", task, reason="malformed_message", message="not a call")
        assert store.get("j1").state is State.SUCCEEDED
        assert store.get("j1").error is None
        assert dead_letters.list() == []
        assert sink.types == ["recording.started"]
        assert "job j1 already ended (succeeded); a delivery with its id failed" in caplog.text

    def test_transient_errors_are_retried_until_success(self, runner, sandbox, store, sink, sleeps):
        """Two 503s, then success: three calls, two waits, retrying events with the last error."""
        sandbox.inject(Fault(status=503, times=2))
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts) == (State.SUCCEEDED, 3)
        assert [call.status for call in sandbox.calls] == [503, 503, 200]
        assert len(sleeps.waits) == 2
        assert sink.types == ["recording.retrying", "recording.retrying", "recording.started"]
        for attempt, retrying in zip((2, 3), sink.events[:2], strict=True):
            assert retrying["data"]["attempt"] == attempt
            assert retrying["data"]["state"] == "retrying"
            assert retrying["data"]["error"]["reason"] == "upstream_unavailable"
            assert retrying["data"]["error"]["status"] == 503
        states = [h["state"] for h in store.get("j1").history]
        assert states == ["running", "retrying", "retrying", "succeeded"]

    def test_a_spent_retry_budget_puts_the_job_back_on_the_schedule(
        self, runner, sandbox, policy, store, schedule, clock
    ):
        """503 on every call: policy.attempts calls, then the job waits on the schedule."""
        sandbox.inject(Fault(status=503, times=policy.attempts))
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts, outcome.deferred) == (
            State.RETRYING,
            policy.attempts,
            True,
        )
        assert len(sandbox.calls) == policy.attempts
        assert store.get("j1").error["status"] == 503
        [delivery] = schedule.pending()
        assert (delivery.job_id, delivery.job) == ("j1", JOB)
        assert delivery.due == clock.now + 15

    def test_a_dropped_answer_that_applied_is_reconciled(self, runner, sandbox, store, sink):
        """The start happens but its answer is lost; the retry's refusal is that success."""
        sandbox.inject(Fault(drop_answer=True, applies=True))
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts, outcome.reconciled) == (State.SUCCEEDED, 2, True)
        assert [call.status for call in sandbox.calls] == [0, 400]
        assert sandbox.recording_running("r1")
        assert store.get("j1").reconciled
        assert sink.events[-1]["data"]["reconciled"] is True

    def test_a_timed_out_start_that_applied_is_reconciled(self, make_runner, sandbox):
        """A read timeout on a start that happened is reconciled by the retry's refusal."""
        sandbox.inject(Fault(latency=0.5, applies=True))
        runner = make_runner(read_timeout=0.1)
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts, outcome.reconciled) == (State.SUCCEEDED, 2, True)
        assert sandbox.recording_running("r1")
        assert len(sandbox.wait_for_calls(2, timeout=5)) == 2

    def test_a_redelivered_job_already_running_is_reconciled(
        self, runner, make_client, sandbox, store
    ):
        """An earlier delivery's call started it: the refusal counts as success, attempts add up."""
        make_client().post(START, {"roomId": "r1"})  # the earlier delivery's call
        store.transition("j1", State.RUNNING, kind="start-recording", attempt=1)
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts, outcome.reconciled) == (State.SUCCEEDED, 2, True)
        assert store.get("j1").attempts == 2
        assert [call.status for call in sandbox.calls] == [200, 400]

    def test_a_start_refused_for_another_reason_after_a_dropped_answer_fails(
        self, runner, sandbox, sink
    ):
        """The first answer was lost; the retry is refused with 4011 for another reason than
        a running recording. It fails, naming VideoSDK's reason: it was reported started
        (reconciled) while nothing recorded."""
        refusal = '{"code": 4011, "message": "Recording could not be started: no participants"}'
        sandbox.inject(Fault(drop_answer=True), Fault(status=400, body=refusal))
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.reconciled) == (State.FAILED, False)
        assert outcome.error.reason == "upstream_rejected"
        assert "no participants" in outcome.error.body
        assert not sandbox.recording_running("r1")
        assert sink.types[-1] == "recording.failed"

    def test_already_running_without_an_earlier_attempt_fails(
        self, runner, make_client, sandbox, store, sink
    ):
        """A recording someone else started is not this job's: it fails, naming the refusal."""
        make_client().post(START, {"roomId": "r1"})
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts, outcome.reconciled) == (State.FAILED, 1, False)
        assert outcome.error.reason == "upstream_rejected"
        assert "4011" in outcome.error.body
        assert not store.get("j1").reconciled
        assert sink.types == ["recording.failed"]

    def test_a_429_before_already_running_is_not_reconciled(
        self, runner, make_client, sandbox, store, sink
    ):
        """A 429 was refused unprocessed, so the next "already running" is someone else's."""
        make_client().post(START, {"roomId": "r1"})
        sandbox.inject(Fault(status=429))
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts, outcome.reconciled) == (State.FAILED, 2, False)
        assert outcome.error.reason == "upstream_rejected"

    def test_an_earlier_delivery_answered_only_429s_is_not_reconciled(
        self, runner, make_client, sandbox, policy, store
    ):
        """Its calls were all refused unprocessed, and the record says so: the redelivery's
        "already running" is someone else's recording, not that delivery's success."""
        sandbox.inject(Fault(status=429, times=policy.attempts))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.RETRYING
        make_client().post(START, {"roomId": "r1"})  # someone else starts it meanwhile
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.reconciled) == (State.FAILED, False)
        assert outcome.attempts == policy.attempts + 1
        assert "4011" in outcome.error.body

    def test_one_unanswered_attempt_among_429s_still_reconciles_a_redelivery(
        self, runner, sandbox, policy
    ):
        """A 503 after the start took effect, then 429s: the redelivery's refusal is the 503's
        success (a 429 proves only itself unapplied)."""
        sandbox.inject(Fault(status=503, applies=True), Fault(status=429, times=policy.attempts))
        assert runner.run(START_RECORDING, JOB, job_id="j1").state is State.RETRYING
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.reconciled) == (State.SUCCEEDED, True)

    def test_the_target_names_the_room(self, runner, sandbox, store):
        """The state records what the job is about."""
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert store.get("j1").target == Target(room_id="r1").to_json()


def history(store, job_id: str) -> list[tuple[str, int | None]]:
    return [(h["state"], h.get("attempt")) for h in store.get(job_id).history]


class TestTheClaimRecordsTheCall:
    """A delivery that will call VideoSDK at once is recorded running by its claim: the claim
    and the first state write are one round trip (the job's end and its event another)."""

    def test_a_delivery_that_calls_at_once_takes_two_round_trips(self, runner, store, sends):
        runner.run(START_RECORDING, {"roomId": "r0"}, job_id="j0")  # the scripts known to Redis
        sends.clear()
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert outcome.state is State.SUCCEEDED
        assert sends == [b"EVALSHA", b"EVALSHA"]  # the claim (running), the end
        assert history(store, "j1") == [("running", 1), ("succeeded", 1)]
        entry = store.get("j1").history[0]
        assert entry == {"state": "running", "at": entry["at"], "attempt": 1}
        assert store.get("j1").kind == "start-recording"
        assert store.get("j1").target == Target(room_id="r1").to_json()

    def test_a_redelivery_is_recorded_running_its_next_attempt(self, runner, store):
        """The claim counts the attempts earlier deliveries made."""
        store.transition("j1", State.RETRYING, kind="start-recording", attempt=2)
        outcome = runner.run(START_RECORDING, JOB, job_id="j1")
        assert (outcome.state, outcome.attempts) == (State.SUCCEEDED, 3)
        assert history(store, "j1")[1:] == [("running", 3), ("succeeded", 3)]

    def test_a_retry_within_the_delivery_is_recorded_by_a_write_of_its_own(
        self, runner, sandbox, store
    ):
        sandbox.inject(Fault(status=503))
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert history(store, "j1") == [("running", 1), ("retrying", 2), ("succeeded", 2)]

    @pytest.mark.parametrize("kind", [START_RECORDING, STOP_RECORDING], ids=["start", "stop"])
    def test_a_job_delivered_before_its_time_is_not_recorded_running(
        self, runner, store, clock, kind
    ):
        field = "stopAt" if kind.stops else "startAt"
        early = {**JOB, field: epoch_iso(clock.now + 3600)}
        runner.run(kind, early, job_id="j1")
        assert [state for state, _ in history(store, "j1")] == ["scheduled"]

    def test_a_scheduled_start_waiting_for_its_meeting_is_not_recorded_running(
        self, runner, sandbox, store, clock
    ):
        """Due, but its room has no live session: it waits, and was never running."""
        sandbox.end_session("r1")
        due = {**JOB, "startAt": epoch_iso(clock.now)}
        assert runner.run(START_RECORDING, due, job_id="j1").state is State.WAITING
        assert [state for state, _ in history(store, "j1")] == ["waiting"]

    def test_a_job_over_its_delivery_limit_is_not_recorded_running(
        self, make_runner, claims, store
    ):
        runner = make_runner(limits=Limits(max_deliveries=1))
        claims.release("j1", claims.acquire("j1"))
        runner.run(START_RECORDING, JOB, job_id="j1")
        assert [state for state, _ in history(store, "j1")] == ["failed"]

    def test_a_job_claimed_while_calls_are_paused_is_not_recorded_running(
        self, make_runner, redis_client, namespace, store
    ):
        limiter = RateLimiter(redis_client, namespace=namespace, rate=None)
        limiter.pause(20)
        runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0))
        assert runner.run(START_RECORDING, JOB, job_id="j1").deferred
        assert [state for state, _ in history(store, "j1")] == ["queued"]

    def test_a_start_past_its_deadline_is_not_recorded_running(self, runner, store, clock):
        late = {**JOB, "startDeadline": epoch_iso(clock.now - 1)}
        assert runner.run(START_RECORDING, late, job_id="j1").state is State.FAILED
        assert [state for state, _ in history(store, "j1")] == ["failed"]

    def test_under_a_rate_limit_a_job_without_a_slot_is_not_recorded_running(
        self, make_runner, redis_client, namespace, store
    ):
        """The limiter decides before the attempt is recorded: the claim makes no write."""
        limiter = RateLimiter(redis_client, namespace=namespace, rate=Rate(1, 60.0), margin=0)
        runner = make_runner(limiter=limiter, limits=Limits(rate_wait=0.0))
        runner.run(START_RECORDING, {"roomId": "r0"}, job_id="j0")  # takes the one slot
        assert runner.run(START_RECORDING, JOB, job_id="j1").deferred
        assert [state for state, _ in history(store, "j1")] == ["queued"]
