"""Job states in a real Redis: current state, a capped history, timestamps and a TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from worker.errors import ErrorInfo, Target
from worker.redis_server import throwaway_redis
from worker.state import HISTORY_LENGTH, JobStore, Queued, State

START = datetime(2030, 1, 31, 9, 30, tzinfo=UTC)
FAILURE = ErrorInfo(reason="upstream_rejected", message="VideoSDK answered 400", status=400)


class Clock:
    """A clock that moves one second forward each time it is read."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start - timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def store(redis_client, namespace) -> JobStore:
    return JobStore(redis_client, namespace=namespace, ttl=300, clock=Clock())


class TestJobStore:
    def test_transitions_accumulate_history_in_order(self, store):
        """Each transition appends its state, attempt and time; a failure names its reason."""
        store.transition("j1", State.QUEUED)
        store.transition("j1", State.RUNNING, attempt=1)
        store.transition("j1", State.RETRYING, attempt=2)
        store.transition("j1", State.FAILED, attempt=2, error=FAILURE)
        record = store.get("j1")
        assert record.history == [
            {"state": "queued", "at": "2030-01-31T09:30:00.000Z"},
            {"state": "running", "at": "2030-01-31T09:30:01.000Z", "attempt": 1},
            {"state": "retrying", "at": "2030-01-31T09:30:02.000Z", "attempt": 2},
            {
                "state": "failed",
                "at": "2030-01-31T09:30:03.000Z",
                "attempt": 2,
                "reason": "upstream_rejected",
            },
        ]

    def test_history_keeps_only_the_latest_transitions(self, store):
        """Past HISTORY_LENGTH transitions, the oldest are dropped and the newest kept."""
        total = HISTORY_LENGTH + 5
        for attempt in range(1, total + 1):
            store.transition("j1", State.RETRYING, attempt=attempt)
        history = store.get("j1").history
        assert len(history) == HISTORY_LENGTH
        assert [h["attempt"] for h in history] == list(range(6, total + 1))

    def test_the_clock_gives_the_timestamps(self, store):
        """createdAt and updatedAt are the injected clock's times, in UTC with milliseconds."""
        store.transition("j1", State.QUEUED)
        record = store.get("j1")
        assert record.created_at == "2030-01-31T09:30:00.000Z"
        assert record.updated_at == "2030-01-31T09:30:00.000Z"

    def test_created_at_is_set_once_and_kept(self, store):
        """Later transitions move updatedAt but never createdAt."""
        store.transition("j1", State.QUEUED)
        store.transition("j1", State.RUNNING, attempt=1)
        store.transition("j1", State.SUCCEEDED, attempt=1)
        record = store.get("j1")
        assert record.created_at == "2030-01-31T09:30:00.000Z"
        assert record.updated_at == "2030-01-31T09:30:02.000Z"

    def test_the_latest_fields_are_stored(self, store):
        """Kind, attempts, target and metadata are the last ones given."""
        target = Target(room_id="r1", participant_id="alice", kind="audio")
        store.transition("j1", State.QUEUED, kind="start-track-recording", metadata={"case": 42})
        store.transition("j1", State.RUNNING, attempt=1, target=target)
        record = store.get("j1")
        assert record.state is State.RUNNING
        assert record.kind == "start-track-recording"
        assert record.attempts == 1
        assert record.target == {"roomId": "r1", "participantId": "alice", "kind": "audio"}
        assert record.metadata == {"case": 42}

    def test_a_failure_stores_its_error(self, store):
        """A failed job keeps the error object of its ErrorInfo."""
        store.transition("j1", State.FAILED, attempt=1, error=FAILURE)
        assert store.get("j1").error == {
            "reason": "upstream_rejected",
            "message": "VideoSDK answered 400",
            "status": 400,
        }

    def test_a_later_transition_clears_the_error(self, store):
        """A job that failed and then runs again (a redelivery) no longer shows the old error."""
        store.transition("j1", State.FAILED, attempt=1, error=FAILURE)
        store.transition("j1", State.RUNNING, attempt=2)
        assert store.get("j1").error is None

    def test_a_transition_can_release_a_claim_that_still_holds_its_token(
        self, store, redis_client, namespace
    ):
        """The claim goes in the same write; a claim someone else has since taken stays."""
        claim = f"{namespace}:claim:j1"
        redis_client.set(claim, "mine")
        store.transition("j1", State.FAILED, error=FAILURE, release=(claim, "mine"))
        assert not redis_client.exists(claim)
        redis_client.set(claim, "theirs")
        store.transition("j1", State.SUCCEEDED, release=(claim, "mine"))
        assert redis_client.get(claim) == b"theirs"
        assert store.get("j1").state is State.SUCCEEDED

    def test_both_keys_expire_after_the_ttl(self, store, redis_client):
        """The state hash and its history list each carry the store's TTL."""
        store.transition("j1", State.QUEUED)
        for key in (store.key("j1"), store.key("j1") + ":history"):
            assert 0 < redis_client.ttl(key) <= 300

    def test_an_unknown_job_is_none(self, store):
        """A job never recorded (or expired) reads as None."""
        assert store.get("nobody") is None

    def test_jobs_are_kept_under_the_namespace(self, store, namespace):
        """The key names the namespace and the job, so namespaces never see each other."""
        assert store.key("j1") == f"{namespace}:job:j1"


class TestKeptLongEnough:
    MONTH = 30 * 24 * 3600

    def test_a_job_due_later_than_the_ttl_is_kept_until_a_ttl_after_it_is_due(
        self, store, redis_client
    ):
        """A job scheduled a month ahead (the store keeps records 300 s here, 7 days by
        default) lost its record before its time: it could be neither cancelled nor moved, and
        it still ran. Its record and history are kept until a TTL after it is due."""
        due = START.timestamp() + self.MONTH
        store.enqueue(
            "far",
            kind="start-recording",
            target=Target("r1"),
            metadata={},
            state=State.SCHEDULED,
            extra={"dueAt": due},
        )
        for key in store.keys("far"):
            assert self.MONTH < redis_client.ttl(key) <= self.MONTH + 300

    def test_a_job_due_now_is_kept_for_the_ttl(self, store, redis_client):
        store.transition("now", State.SCHEDULED, extra={"dueAt": START.timestamp() - 60})
        assert 0 < redis_client.ttl(store.key("now")) <= 300

    def test_keep_lengthens_a_record_s_ttl_and_never_shortens_it(self, store, redis_client):
        """keep(job, until): kept until a TTL after ``until`` (a start while its stop waits)."""
        store.transition("j1", State.SUCCEEDED)
        store.keep("j1", START.timestamp() + self.MONTH)
        for key in store.keys("j1"):
            assert self.MONTH < redis_client.ttl(key) <= self.MONTH + 300
        store.keep("j1", START.timestamp() + 60)
        for key in store.keys("j1"):
            assert self.MONTH < redis_client.ttl(key) <= self.MONTH + 300

    def test_keep_leaves_an_unknown_job_unknown(self, store, redis_client):
        """An expired start is not brought back as an empty key."""
        store.keep("gone", START.timestamp() + self.MONTH)
        assert store.get("gone") is None
        assert [redis_client.exists(key) for key in store.keys("gone")] == [0, 0]


class TestEnqueueMany:
    def test_many_jobs_are_recorded_queued_in_one_call(self, store, redis_client):
        """Each job gets its queued record, history entry, fields and expiry."""
        ended = store.enqueue_many(
            [
                Queued("a", "start-recording", Target("room-a"), {"crm": 1}),
                Queued(
                    "b",
                    "start-track-recording",
                    Target("room-b", "p1", "audio"),
                    {},
                    {"batchId": "x"},
                ),
            ]
        )
        assert ended == [None, None]
        a, b = store.get("a"), store.get("b")
        assert (a.state, a.kind, a.metadata, a.attempts) == (
            State.QUEUED,
            "start-recording",
            {"crm": 1},
            0,
        )
        assert [entry["state"] for entry in a.history] == ["queued"]
        assert b.batch_id == "x"
        assert b.target == {"roomId": "room-b", "participantId": "p1", "kind": "audio"}
        assert 0 < redis_client.ttl(store.key("a")) <= 300

    def test_a_job_that_already_ended_keeps_its_outcome(self, store):
        """An ended job is left as it is, and its terminal state is returned."""
        store.transition("done", State.SUCCEEDED, kind="start-recording")
        ended = store.enqueue_many(
            [
                Queued("done", "start-recording", Target("r"), {}),
                Queued("new", "start-recording", Target("r"), {}),
            ]
        )
        assert ended == [State.SUCCEEDED, None]
        assert store.get("done").state is State.SUCCEEDED

    def test_the_jobs_are_written_in_one_round_trip_without_asking_for_the_script(self):
        """The pipeline carries the writes themselves: no SCRIPT EXISTS first (redis-py's way
        with a script on a pipeline), which was a second round trip for every enqueue."""
        with throwaway_redis() as server, redis.Redis.from_url(server.url) as client:
            store = JobStore(client, namespace="count")
            store.enqueue_many([Queued("first", "start-recording", Target("r"), {})])
            client.config_resetstat()
            jobs = [Queued(f"j{n}", "start-recording", Target("r"), {}) for n in range(3)]
            assert store.enqueue_many(jobs) == [None, None, None]
            stats = client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 3
        assert not any(name.startswith("cmdstat_script") for name in stats)

    def test_a_job_s_message_is_pushed_by_its_record_s_script_unless_it_had_ended(
        self, store, redis_client, namespace
    ):
        """With ``push``, the message goes onto the list in the same step as the record."""
        queue = f"{namespace}:queue"
        store.transition("done", State.CANCELLED, kind="start-recording")
        ended = store.enqueue_many(
            [
                Queued(job_id, "start-recording", Target("r"), {}, push=(queue, job_id.encode()))
                for job_id in ("a", "done", "b")
            ]
        )
        assert ended == [None, State.CANCELLED, None]
        assert redis_client.lrange(queue, 0, -1) == [b"b", b"a"]  # taken from the right

    def test_a_write_cannot_both_push_a_message_and_release_a_claim(self, store):
        """The pushing script's third key is the list: a claim there would be pushed onto."""
        with pytest.raises(ValueError, match="releases no claim"):
            store.write_call("a", State.QUEUED, push=("q", b"m"), release=("claim", "token"))

    def test_scripts_flushed_from_redis_are_loaded_again(self):
        """After a Redis restart or SCRIPT FLUSH, the write script is loaded and the jobs are
        written all the same."""
        with throwaway_redis() as server, redis.Redis.from_url(server.url) as client:
            store = JobStore(client, namespace="flushed")
            client.script_flush()
            assert store.enqueue_many([Queued("a", "start-recording", Target("r"), {})]) == [None]
            assert store.get("a").state is State.QUEUED


class TestJobRecordJson:
    def test_a_running_job_has_no_error_and_no_reconciled(self, store):
        """The JSON carries every field, without error or reconciled when they do not apply."""
        store.transition("j1", State.RUNNING, kind="start-recording", attempt=1)
        data = store.get("j1").to_json()
        assert data == {
            "id": "j1",
            "kind": "start-recording",
            "state": "running",
            "attempts": 1,
            "createdAt": "2030-01-31T09:30:00.000Z",
            "updatedAt": "2030-01-31T09:30:00.000Z",
            "target": None,
            "metadata": {},
            "history": [{"state": "running", "at": "2030-01-31T09:30:00.000Z", "attempt": 1}],
        }

    def test_a_failed_job_carries_its_error(self, store):
        """The error object appears once the job failed."""
        store.transition("j1", State.FAILED, attempt=1, error=FAILURE)
        data = store.get("j1").to_json()
        assert data["state"] == "failed"
        assert data["error"]["reason"] == "upstream_rejected"
        assert "reconciled" not in data

    def test_a_reconciled_job_says_so(self, store):
        """reconciled appears, true, only for a success counted from an earlier attempt."""
        store.transition("j1", State.SUCCEEDED, attempt=2, reconciled=True)
        data = store.get("j1").to_json()
        assert data["reconciled"] is True
        assert "error" not in data
