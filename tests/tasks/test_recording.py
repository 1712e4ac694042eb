"""The vertical slice: a job goes from a producer through Redis and a real worker to VideoSDK.

Every test here runs a real Celery worker (threads pool) consuming real messages from a real
Redis, calling the sandbox over real HTTP, and reads outcomes where a user would: the sandbox's
call log, the job's state, and the events on the ``recq.events`` exchange.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import kombu
import pytest

from worker import testing
from worker.errors import InvalidJob
from worker.events import EXCHANGE
from worker.jobs import START_RECORDING, START_TRACK_RECORDING
from worker.producer import BatchRejected, Producer
from worker.sandbox import DEFAULT_SECRET, Fault
from worker.state import State, epoch_iso

pytestmark = pytest.mark.integration

ROOM_JOB = {
    "roomId": "abcd-efgh-ijkl",
    "templateUrl": "https://www.example.com/?meetingId=abcd-efgh-ijkl",
    "transcription": {"enabled": True, "summary": {"enabled": True, "prompt": "Key decisions"}},
    "config": {
        "layout": {"type": "GRID", "priority": "SPEAKER", "gridSize": 4},
        "theme": "DARK",
        "mode": "video-and-audio",
        "quality": "high",
        "orientation": "landscape",
    },
    "webhookUrl": "https://hooks.example.com/videosdk",
    "awsDirPath": "meetings/board",
    "preSignedUrl": "https://bucket.s3.amazonaws.com/rec.mp4?X-Amz-Signature=abc",
    "metadata": {"meeting": "board", "requestedBy": "scheduler"},
}
TRACK_JOB = {
    "roomId": "abcd-efgh-ijkl",
    "participantId": "alice",
    "kind": "audio",
    "fileFormat": "webm",
    "webhookUrl": "https://hooks.example.com/videosdk",
    "bucketDirPath": "compliance/audio",
    "metadata": {"case": 42},
}


def wait_for_state(app: Any, job_id: str, *states: State, timeout: float = 20.0) -> Any:
    return testing.wait_for_state(app.store, job_id, *states, timeout=timeout)


@pytest.fixture
def event_queue(app: Any, namespace: str) -> Iterator[kombu.SimpleQueue]:
    """A queue of this test's own, bound to every event type on the recq.events exchange, and
    deleted afterwards (on Redis, leaving is not enough to unbind it)."""
    queue = kombu.Queue(f"{namespace}-events", EXCHANGE, routing_key="#", auto_delete=True)
    with app.connection_for_write() as connection:
        simple = connection.SimpleQueue(queue)
        yield simple
        simple.queue.delete()
        simple.close()


def next_event(events: kombu.SimpleQueue, timeout: float = 10.0) -> dict[str, Any]:
    message = events.get(timeout=timeout)
    message.ack()
    assert message.content_type == "application/cloudevents+json"
    event: dict[str, Any] = json.loads(message.body)
    return event


class TestRoomRecording:
    def test_the_sandbox_receives_exactly_the_jobs_videosdk_fields(
        self, app, sandbox, running_worker
    ):
        """The request body equals the job minus envelope fields; the token is least-privilege."""
        job_id = Producer(app).enqueue(START_RECORDING, ROOM_JOB)
        record = wait_for_state(app, job_id, State.SUCCEEDED, State.FAILED)
        assert record.state is State.SUCCEEDED
        [call] = sandbox.calls
        expected = {k: v for k, v in ROOM_JOB.items() if k != "metadata"}
        assert call.path == "/v2/recordings/start"
        assert call.body == expected
        assert call.auth_prefix is None
        assert call.content_type == "application/json"
        assert {k: call.claims[k] for k in ("apikey", "permissions", "version", "roles")} == {
            "apikey": "sandbox-key",
            "permissions": ["allow_join"],
            "version": 2,
            "roles": ["crawler"],
        }
        assert 0 < call.claims["exp"] - call.claims["iat"] <= 900

    def test_a_started_recording_is_announced_on_the_events_exchange(
        self, app, sandbox, running_worker, event_queue
    ):
        """A recording.started CloudEvent names the job, its room, the attempt and metadata."""
        job_id = Producer(app).enqueue(START_RECORDING, ROOM_JOB)
        event = next_event(event_queue)
        assert event["specversion"] == "1.0"
        assert event["type"] == "recording.started"
        assert event["subject"] == job_id
        assert event["data"]["jobId"] == job_id
        assert event["data"]["target"] == {"roomId": "abcd-efgh-ijkl"}
        assert event["data"]["attempt"] == 1
        assert event["data"]["metadata"] == ROOM_JOB["metadata"]
        assert [e["type"] for e in app.event_log.read()] == ["recording.started"]

    def test_the_state_records_queued_running_and_succeeded(self, app, sandbox, running_worker):
        """The job's history goes queued, running, succeeded, with timestamps and attempts."""
        job_id = Producer(app).enqueue(START_RECORDING, ROOM_JOB)
        record = wait_for_state(app, job_id, State.SUCCEEDED)
        assert [h["state"] for h in record.history] == ["queued", "running", "succeeded"]
        assert record.attempts == 1
        assert record.created_at <= record.updated_at
        assert app.redis.ttl(app.store.key(job_id)) > 0

    def test_a_producer_job_id_becomes_the_task_id(self, app, sandbox, running_worker):
        """A jobId chosen by the caller is the id under which the job's state is found."""
        job_id = Producer(app).enqueue(START_RECORDING, {**ROOM_JOB, "jobId": "board-2026-11-20"})
        assert job_id == "board-2026-11-20"
        assert wait_for_state(app, job_id, State.SUCCEEDED).kind == "start-recording"


class TestTrackRecording:
    def test_a_track_recording_starts_and_is_announced(
        self, app, sandbox, running_worker, event_queue
    ):
        """The track job reaches its endpoint with its fields; the event names the track."""
        job_id = Producer(app).enqueue(START_TRACK_RECORDING, TRACK_JOB)
        event = next_event(event_queue)
        assert event["type"] == "track_recording.started"
        assert event["data"]["target"] == {
            "roomId": "abcd-efgh-ijkl",
            "participantId": "alice",
            "kind": "audio",
        }
        [call] = sandbox.calls
        assert call.path == "/v2/recordings/participant/track/start"
        assert call.body == {k: v for k, v in TRACK_JOB.items() if k != "metadata"}
        assert sandbox.track_running("abcd-efgh-ijkl", "alice", "audio")
        assert app.store.get(job_id).state is State.SUCCEEDED


class TestInvalidJobs:
    def test_the_producer_refuses_a_grid_of_five_and_publishes_nothing(self, app):
        """gridSize 5 is refused by name before anything reaches the broker."""
        bad = {"roomId": "r1", "config": {"layout": {"gridSize": 5}}}
        with pytest.raises(BatchRejected) as caught:
            Producer(app).enqueue_many(START_RECORDING, [{"roomId": "ok"}, bad])
        [rejected] = caught.value.rejected
        assert rejected.index == 1
        assert [v.path for v in rejected.error.violations] == ["config.layout.gridSize"]
        assert app.redis.llen(app.settings.queue) == 0

    def test_the_producer_refuses_two_jobs_of_a_batch_under_one_job_id(self, app):
        """One of the two would be lost: the later is named, and nothing is published."""
        jobs = [{"roomId": "a", "jobId": "dup"}, {"roomId": "b", "jobId": "dup"}]
        with pytest.raises(BatchRejected) as caught:
            Producer(app).enqueue_many(START_RECORDING, jobs)
        [rejected] = caught.value.rejected
        assert rejected.index == 1
        assert [(v.path, v.code) for v in rejected.error.violations] == [("jobId", "duplicate")]
        assert app.redis.llen(app.settings.queue) == 0
        assert app.store.get("dup") is None

    def test_the_producer_refuses_a_start_named_as_another_start_s_stop_job(self, app):
        """'m1:stop' is the stop job recq derives from start 'm1': a start under that name took
        its place, and m1's recording was never stopped at its stopAt."""
        jobs = [
            {"roomId": "a", "jobId": "m1", "stopAt": "2099-01-01T00:00:00Z"},
            {"roomId": "b", "jobId": "m1:stop"},
        ]
        with pytest.raises(BatchRejected) as caught:
            Producer(app).enqueue_many(START_RECORDING, jobs)
        [rejected] = caught.value.rejected
        assert rejected.index == 1
        [violation] = rejected.error.violations
        assert (violation.path, violation.code) == ("jobId", "not")
        assert "must not end in ':stop'" in violation.message
        assert app.redis.llen(app.settings.queue) == 0

    @pytest.mark.parametrize(
        ("times", "field"),
        [
            (
                {"startAt": "2020-01-01T00:00:00Z", "startDeadline": "2020-01-01T00:10:00Z"},
                "startDeadline",
            ),
            ({"stopAt": "2020-01-01T00:00:00Z"}, "stopAt"),
            ({"startDeadline": "2020-01-01T00:10:00Z", "stopAt": "2020-01-01T00:05:00Z"}, "stopAt"),
        ],
        ids=["start-deadline", "stop-at", "the-earlier"],
    )
    def test_the_producer_refuses_a_start_already_past_a_deadline_it_names(self, app, times, field):
        """It could only fail start_deadline_passed: the field that set the deadline is named."""
        with pytest.raises(BatchRejected) as caught:
            Producer(app).enqueue(START_RECORDING, {"roomId": "r1", **times})
        [violation] = caught.value.rejected[0].error.violations
        assert (violation.path, violation.code) == (field, "too-late")
        assert "already past" in violation.message
        assert app.redis.llen(app.settings.queue) == 0

    def test_a_late_start_at_alone_is_left_to_the_workers_grace(self, app):
        """startAt plus RECQ_START_GRACE is the workers' deadline, set where they run: the
        producer cannot know it, and publishes the job."""
        job_id = Producer(app).enqueue(
            START_RECORDING, {"roomId": "r1", "startAt": "2020-01-01T00:00:00Z"}
        )
        assert app.store.get(job_id).state is State.QUEUED

    def test_a_late_job_enqueued_again_after_it_ended_is_left_as_it_was(self, app):
        """Enqueueing an ended job again changes nothing, whatever its times: it is not
        refused for a deadline that has passed since."""
        job = {"jobId": "late-1", "roomId": "r1", "stopAt": epoch_iso(time.time() + 3600)}
        producer = Producer(app)
        producer.enqueue(START_RECORDING, job)
        app.producer_scheduler.cancel("late-1")
        again = {**job, "stopAt": "2020-01-01T00:00:00Z"}
        assert producer.enqueue_many(START_RECORDING, [again]) == ["late-1"]
        assert app.store.get("late-1").state is State.CANCELLED

    def test_a_dead_letter_past_a_deadline_it_names_is_not_replayed(self, app):
        """Its replay could only fail again: it is refused as an enqueue would be, and kept."""
        job = {"roomId": "r1", "startDeadline": "2020-01-01T00:10:00Z"}
        error = {"reason": "meeting_not_live", "message": "no live session"}
        app.dead_letters.add(
            "late-dead", task=START_RECORDING.task_name, job=job, error=error, attempts=0
        )
        with pytest.raises(InvalidJob, match="startDeadline: puts the start deadline"):
            Producer(app).replay("late-dead")
        assert app.dead_letters.get("late-dead") is not None
        assert app.redis.llen(app.settings.queue) == 0

    def test_every_job_under_a_repeated_job_id_is_named_even_after_an_invalid_one(self, app):
        """The first holder of the id is invalid: the two after it are named all the same."""
        jobs = [
            {"jobId": "d1", "roomId": "a", "bogus": 1},
            {"jobId": "d1", "roomId": "b"},
            {"jobId": "d1", "roomId": "c"},
        ]
        with pytest.raises(BatchRejected) as caught:
            Producer(app).enqueue_many(START_RECORDING, jobs)
        named = [(r.index, [v.code for v in r.error.violations]) for r in caught.value.rejected]
        assert named == [(0, ["unknown-field"]), (1, ["duplicate"]), (2, ["duplicate"])]

    def test_a_grid_of_five_past_the_producer_is_refused_by_the_worker(
        self, app, sandbox, running_worker, event_queue
    ):
        """Published straight onto the broker, it fails without any VideoSDK call."""
        bad = {"roomId": "r1", "config": {"layout": {"gridSize": 5}}, "metadata": {"m": 1}}
        app.send_task(START_RECORDING.task_name, kwargs={"job": bad}, task_id="raw-1")
        record = wait_for_state(app, "raw-1", State.FAILED)
        assert record.error["reason"] == "invalid_job"
        assert record.error["violations"][0]["field"] == "config.layout.gridSize"
        assert "config.layout.gridSize" in record.error["message"]
        event = next_event(event_queue)
        assert event["type"] == "recording.failed"
        assert event["data"]["error"]["reason"] == "invalid_job"
        assert event["data"]["metadata"] == {"m": 1}
        assert sandbox.calls == []

    def test_a_job_that_is_not_an_object_fails_with_a_reason(self, app, sandbox, running_worker):
        """A list where a job should be is recorded as failed, not crashed on."""
        app.send_task(START_TRACK_RECORDING.task_name, kwargs={"job": [1, 2]}, task_id="raw-2")
        record = wait_for_state(app, "raw-2", State.FAILED)
        assert record.error["reason"] == "invalid_job"
        assert sandbox.calls == []


class TestUpstreamOutcomes:
    def test_a_503_is_retried_and_then_succeeds(self, app, sandbox, sleeps, running_worker):
        """One 503, then success: two calls, state history shows the retry, waits recorded."""
        sandbox.inject(Fault(status=503))
        job_id = Producer(app).enqueue(START_RECORDING, {"roomId": "r-503"})
        record = wait_for_state(app, job_id, State.SUCCEEDED, State.FAILED)
        assert record.state is State.SUCCEEDED
        assert record.attempts == 2
        assert "retrying" in [h["state"] for h in record.history]
        assert [c.status for c in sandbox.calls] == [503, 200]
        assert len(sleeps.waits) == 1
        types = [e["type"] for e in app.event_log.read()]
        assert types == ["recording.retrying", "recording.started"]

    def test_a_rejection_fails_at_once_with_videosdks_answer(self, app, sandbox, running_worker):
        """A 400 is permanent: one call, state failed with status and body."""
        sandbox.inject(Fault(status=400, body='{"message": "invalid room"}'))
        job_id = Producer(app).enqueue(START_RECORDING, {"roomId": "r-400"})
        record = wait_for_state(app, job_id, State.FAILED)
        assert record.error["reason"] == "upstream_rejected"
        assert record.error["status"] == 400
        assert "invalid room" in record.error["body"]
        assert len(sandbox.calls) == 1

    def test_a_start_whose_answer_was_lost_is_reconciled_as_success(
        self, app, sandbox, running_worker
    ):
        """The start happens, its answer is dropped; the retry's "already running" is success."""
        sandbox.inject(Fault(drop_answer=True, applies=True))
        job_id = Producer(app).enqueue(START_RECORDING, {"roomId": "r-lost"})
        record = wait_for_state(app, job_id, State.SUCCEEDED, State.FAILED)
        assert record.state is State.SUCCEEDED
        assert record.reconciled
        assert record.attempts == 2
        assert sandbox.recording_running("r-lost")

    def test_already_running_without_an_earlier_attempt_is_a_failure(
        self, app, sandbox, running_worker
    ):
        """A recording someone else started is not ours: the job fails, naming the refusal."""
        producer = Producer(app)
        first = producer.enqueue(START_RECORDING, {"roomId": "r-twice"})
        wait_for_state(app, first, State.SUCCEEDED)
        second = producer.enqueue(START_RECORDING, {"roomId": "r-twice"})
        record = wait_for_state(app, second, State.FAILED)
        assert record.error["reason"] == "upstream_rejected"
        assert not record.reconciled

    def test_secrets_never_reach_states_or_events(self, app, sandbox, running_worker):
        """Neither the secret, the token nor the pre-signed signature is stored or published."""
        sandbox.inject(Fault(status=400, body=f'{{"echo": "{ROOM_JOB["preSignedUrl"]}"}}'))
        job_id = Producer(app).enqueue(START_RECORDING, ROOM_JOB)
        wait_for_state(app, job_id, State.FAILED)
        token = jwt.encode({"x": 1}, DEFAULT_SECRET, algorithm="HS256").split(".")[0]
        stored = json.dumps(app.store.get(job_id).to_json()) + json.dumps(
            list(app.event_log.read())
        )
        assert "X-Amz-Signature=abc" not in stored
        assert DEFAULT_SECRET not in stored
        assert token not in stored

    def test_metadata_quoting_a_secret_is_redacted_in_states_and_events(
        self, app, sandbox, running_worker
    ):
        """Metadata is echoed, but a URL's query or a token in it is not: the rule is the
        same for every text that leaves recq. Other values are echoed as given."""
        token = jwt.encode({"x": 1}, "someone else's key, 32 bytes long", algorithm="HS256")
        metadata = {"upload": ROOM_JOB["preSignedUrl"], "auth": [token], "case": "C-7", "n": 3}
        job_id = Producer(app).enqueue(START_RECORDING, {**ROOM_JOB, "metadata": metadata})
        record = wait_for_state(app, job_id, State.SUCCEEDED)
        shown = {
            "upload": "https://bucket.s3.amazonaws.com/rec.mp4?[redacted]",
            "auth": ["[redacted]"],
            "case": "C-7",
            "n": 3,
        }
        assert record.metadata == shown
        assert [e["data"]["metadata"] for e in app.event_log.read()] == [shown]
