"""Bulk track capture in the runner: fan-out into children, counts in Redis, one completion.

Children are run by handing what the fan-out published back to the runner, as a worker would.
"""

from __future__ import annotations

import pytest
import redis
from kombu.exceptions import OperationalError

from worker.batches import Batches, Counted
from worker.enqueuer import RecordThenPublish
from worker.errors import JobConflict
from worker.fanout import FanOut
from worker.jobs import BULK_TRACK_RECORDING, START_TRACK_RECORDING
from worker.publisher import TaskMessage
from worker.runner import Limits
from worker.sandbox import Fault
from worker.state import Queued, State, epoch_iso

ROOM = "r1"
BULK = {
    "roomId": ROOM,
    "participants": ["alice", "bob", "carol"],
    "kinds": ["audio", "video"],
    "bucketDirPath": "compliance/2030",
    "metadata": {"case": "C-7"},
}


def enqueue_again(store, job_id, job) -> TaskMessage:
    """What a producer's enqueue does for a bulk job due now: the record written queued
    (unless the job ended), and its message, returned instead of published."""
    kind = BULK_TRACK_RECORDING
    messages: list[TaskMessage] = []
    record = Queued(job_id, kind.name, kind.target(job), job.get("metadata") or {})
    RecordThenPublish(store, messages.extend).enqueue(
        [(record, TaskMessage(kind.task_name, job_id, job))]
    )
    [message] = messages
    return message


def run_children(runner, published) -> None:
    """Deliver every published child once, as the workers would."""
    for delivery in list(published):
        runner.run(START_TRACK_RECORDING, delivery.job, job_id=delivery.job_id)


class TestFanOut:
    def test_a_bulk_job_publishes_one_track_job_per_participant_and_kind(
        self, runner, published, store, sink, sandbox
    ):
        """Child ids derive from the batch, participant and kind; children inherit the rest."""
        outcome = runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        assert outcome.state is State.RUNNING
        assert [d.job_id for d in published] == [
            "b1:audio:alice",
            "b1:video:alice",
            "b1:audio:bob",
            "b1:video:bob",
            "b1:audio:carol",
            "b1:video:carol",
        ]
        assert published[0].task == "recq.start_track_recording"
        assert published[0].job == {
            "roomId": ROOM,
            "participantId": "alice",
            "kind": "audio",
            "bucketDirPath": "compliance/2030",
            "metadata": {"case": "C-7"},
        }
        assert store.get("b1:audio:alice").state is State.QUEUED
        assert store.get("b1:audio:alice").batch_id == "b1"
        assert store.get("b1").state is State.RUNNING
        assert sandbox.calls == []  # the batch itself calls nothing
        [started] = sink.events
        assert started["type"] == "batch.started"
        assert started["data"]["counts"] == {"total": 6, "succeeded": 0, "failed": 0, "pending": 6}

    def test_a_redelivered_batch_publishes_no_second_set_of_children(
        self, runner, published, claims
    ):
        """The fan-out resumes from what it published: nothing, once it is complete."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        assert len(published) == 6

    def test_a_fan_out_cut_short_resumes_where_it_stopped(
        self, make_runner, batches, store, published
    ):
        """A crash mid-fan-out: the redelivery republishes at most the chunk it was in."""
        chunks = []

        def dies_in_the_second_chunk(messages):
            chunks.append(messages)
            if len(chunks) == 2:
                published.append(messages[0])
                raise OperationalError("the broker went away after one message of the chunk")
            published.extend(messages)

        enqueuer = RecordThenPublish(store, dies_in_the_second_chunk)
        fragile = FanOut(batches=batches, enqueuer=enqueuer, chunk=2)
        with pytest.raises(OperationalError):
            make_runner(fan_out=fragile).run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        assert batches.progress("b1").published == 2
        make_runner(fan_out=fragile).run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        ids = [d.job_id for d in published]
        assert len(set(ids)) == 6
        # Only the chunk cut short is published again: its first child twice, harmlessly.
        assert [i for i in set(ids) if ids.count(i) > 1] == ["b1:audio:bob"]

    def test_a_running_batch_enqueued_again_stays_running(self, runner, published, store, sink):
        """A producer retrying its enqueue records the running batch queued again; the new
        delivery resumes it (nothing left to publish) and records it running. (It used to stay
        queued, and a cancel was taken, then overwritten by batch.completed.)"""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        again = enqueue_again(store, "b1", BULK)
        runner.run(BULK_TRACK_RECORDING, again.job, job_id="b1")
        assert len(published) == 6
        assert store.get("b1").state is State.RUNNING
        run_children(runner, published)
        batch_events = [t for t in sink.types if t.startswith("batch.")]
        assert batch_events == ["batch.started", "batch.completed"]

    def test_a_scheduled_batch_enqueued_again_after_its_deadline_resumes(
        self, runner, published, store, clock
    ):
        """Its fan-out began in time: enqueued again past startAt plus the grace, it is not
        failed start_deadline_passed while its children run."""
        job = {**BULK, "startAt": epoch_iso(clock.now), "stopAt": epoch_iso(clock.now + 7200)}
        runner.run(BULK_TRACK_RECORDING, job, job_id="b1")
        clock.now += 20 * 60
        again = enqueue_again(store, "b1", job)
        runner.run(BULK_TRACK_RECORDING, again.job, job_id="b1")
        assert store.get("b1").state is State.RUNNING
        run_children(runner, published)
        assert store.get("b1").state is State.SUCCEEDED

    def test_a_batch_delivered_many_times_is_never_failed_for_it(
        self, runner, published, store, sink, dead_letters
    ):
        """Six deliveries of a batch that fanned out are not 'too many deliveries': each only
        resumes it. (The sixth failed it while its children ran, with a dead letter.)"""
        for _ in range(6):
            runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        assert store.get("b1").state is State.RUNNING
        run_children(runner, published)
        assert [t for t in sink.types if t.startswith("batch.")] == [
            "batch.started",
            "batch.completed",
        ]
        assert dead_letters.get("b1") is None

    def test_a_child_whose_id_had_already_ended_is_counted_as_it_ended(
        self, runner, published, store, batches
    ):
        """A job under a child's id ended before the fan-out (one enqueued by hand, say): it is
        not run again, and the batch counts it as it ended, so the batch still completes.
        (Nothing counted it, and the batch waited for it forever.)"""
        store.transition("b1:audio:alice", State.SUCCEEDED, kind="start-track-recording", attempt=1)
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        assert "b1:audio:alice" not in [d.job_id for d in published]
        run_children(runner, published)
        assert batches.progress("b1").pending == 0
        assert store.get("b1").state is State.SUCCEEDED

    def test_a_child_found_ended_is_counted_even_if_the_fan_out_dies_after_its_chunk(
        self, make_runner, batches, store, published, redis_client, namespace
    ):
        """The fan-out notes its progress after each chunk. Had it counted the chunk's ended
        children after that note, a delivery dying in between would leave them uncounted for
        good (the resumed fan-out starts past the chunk), and the batch would never end."""

        class DiesAfterNoting(Batches):
            def advance(self, batch_id: str, published: int) -> None:
                super().advance(batch_id, published)
                raise OperationalError("the worker died right after noting its progress")

        store.transition("b1:audio:alice", State.SUCCEEDED, kind="start-track-recording", attempt=1)
        dying = DiesAfterNoting(redis_client, namespace=namespace)
        fragile = FanOut(batches=dying, enqueuer=RecordThenPublish(store, published.extend))
        with pytest.raises(OperationalError):
            make_runner(fan_out=fragile).run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        assert batches.progress("b1").succeeded == 1

    def test_a_colon_in_a_participant_id_never_gives_two_jobs_one_id(
        self, runner, published, schedule, store, sandbox, clock
    ):
        """':' and '%' in a participant id are percent-encoded in its child's id, so neither
        another child nor a child's stop job ('<child id>:stop') can take the same id."""
        from worker.state import epoch_iso  # noqa: PLC0415

        job = {
            "roomId": ROOM,
            "participants": ["p", "p:stop", "50%"],
            "kinds": ["audio"],
            "stopAt": epoch_iso(clock.now + 600),
        }
        runner.run(BULK_TRACK_RECORDING, job, job_id="b1")
        assert [d.job_id for d in published] == [
            "b1:audio:p",
            "b1:audio:p%3Astop",
            "b1:audio:50%25",
        ]
        run_children(runner, published)
        assert len(sandbox.accepted(START_TRACK_RECORDING.endpoint)) == 3
        assert sorted(d.job_id for d in schedule.pending()) == [
            "b1:audio:50%25:stop",
            "b1:audio:p%3Astop:stop",
            "b1:audio:p:stop",
        ]
        assert store.get("b1:audio:p%3Astop").target["participantId"] == "p:stop"
        assert store.get("b1").state is State.SUCCEEDED

    def test_a_scheduled_batch_waits_for_its_time_and_meeting_like_a_start(
        self, runner, published, schedule, sandbox, clock, sink
    ):
        """Due later: on the schedule; due but the room not live: waiting; then the fan-out."""
        from worker.state import epoch_iso  # noqa: PLC0415

        job = {**BULK, "startAt": epoch_iso(clock.now + 60), "stopAt": epoch_iso(clock.now + 600)}
        assert runner.run(BULK_TRACK_RECORDING, job, job_id="b1").state is State.SCHEDULED
        clock.now += 60
        sandbox.end_session(ROOM)
        assert runner.run(BULK_TRACK_RECORDING, job, job_id="b1").state is State.WAITING
        sandbox.make_live(ROOM)
        clock.now += 10
        assert runner.run(BULK_TRACK_RECORDING, job, job_id="b1").state is State.RUNNING
        assert published[0].job["stopAt"] == job["stopAt"]
        assert "startAt" not in published[0].job
        assert sink.types == ["batch.scheduled", "batch.waiting", "batch.started"]

    def test_children_delivered_after_the_deadline_the_batch_met_still_start(
        self, runner, published, sandbox, store, clock
    ):
        """The batch found its meeting live at its last check, on its deadline; its children,
        delivered a moment later (or minutes later, under a rate limit), are not failed by it."""
        job = {**BULK, "startAt": epoch_iso(clock.now), "startDeadline": epoch_iso(clock.now + 5)}
        sandbox.end_session(ROOM)
        assert runner.run(BULK_TRACK_RECORDING, job, job_id="b1").state is State.WAITING
        sandbox.make_live(ROOM)
        clock.now += 5.3  # the last check, a dispatcher's usual moment after the deadline
        assert runner.run(BULK_TRACK_RECORDING, job, job_id="b1").state is State.RUNNING
        clock.now += 120
        run_children(runner, published)
        assert store.get("b1").state is State.SUCCEEDED
        assert "startDeadline" not in published[0].job

    def test_a_scheduled_batch_cut_mid_fan_out_resumes_past_its_deadline(
        self, make_runner, batches, store, published, sink, clock, dead_letters
    ):
        """Its time and meeting were met, and its delivery died in its second chunk. Delivered
        again after startDeadline, it publishes the rest instead of failing as a late start."""
        fan_out = FanOut(
            batches=batches, enqueuer=RecordThenPublish(store, published.extend), chunk=2
        )
        job = {**BULK, "startAt": epoch_iso(clock.now), "startDeadline": epoch_iso(clock.now + 60)}
        runner = make_runner(fan_out=fan_out)
        advance = batches.advance

        def dies_at_the_second_chunk(batch_id: str, count: int) -> None:
            if count == 4:  # two chunks of two
                raise redis.ConnectionError("the delivery died here")
            advance(batch_id, count)

        batches.advance = dies_at_the_second_chunk
        with pytest.raises(redis.ConnectionError):
            runner.run(BULK_TRACK_RECORDING, job, job_id="b1")
        batches.advance = advance
        clock.now += 90  # delivered again once the visibility timeout passed
        assert runner.run(BULK_TRACK_RECORDING, job, job_id="b1").state is State.RUNNING
        run_children(runner, published)
        assert store.get("b1").state is State.SUCCEEDED
        assert dead_letters.get("b1") is None
        assert [e["type"] for e in sink.events if e["type"].startswith("batch.")] == [
            "batch.started",
            "batch.completed",
        ]


class Broker:
    """Where a fan-out publishes: it takes every chunk, except that the worker dies publishing
    the chunks ``dies`` picks (given the chunk's first child and how many chunks came so far),
    on every delivery, until mended (``dies = None``): a child whose publishing kills it, say."""

    def __init__(self, published, dies) -> None:
        self.published = published
        self.dies = dies
        self.chunks = 0

    def __call__(self, messages) -> None:
        self.chunks += 1
        if self.dies is not None and self.dies(messages[0].job_id, self.chunks):
            raise OperationalError("the worker died publishing this chunk")
        self.published.extend(messages)


def dies_at_bob(first: str, _chunks: int) -> bool:
    """The second chunk of two children (the third child, bob's audio, first)."""
    return first == "b1:audio:bob"


def replay(store, job_id: str) -> None:
    """What `recq dead replay` does to a failed job's record: queued afresh."""
    kind = BULK_TRACK_RECORDING
    queued = store.enqueue(
        job_id,
        kind=kind.name,
        target=kind.target(BULK),
        metadata={},
        fresh=True,
        replacing=State.FAILED,
    )
    assert queued is None


class TestAFanOutThatKeepsDying:
    """A batch resumes its fan-out on every delivery, however late or often, while the fan-out
    moves on. Deliveries that die at the same chunk every time are counted like a job's
    deliveries: past RECQ_MAX_DELIVERIES of them the batch fails. (They were exempt, and such a
    batch was delivered for ever.)"""

    @pytest.fixture
    def broker(self, published) -> Broker:
        return Broker(published, dies_at_bob)

    @pytest.fixture
    def runner(self, make_runner, batches, store, broker):
        """At most two deliveries, chunks of two children."""
        enqueuer = RecordThenPublish(store, broker)
        fan_out = FanOut(batches=batches, enqueuer=enqueuer, chunk=2)
        return make_runner(limits=Limits(max_deliveries=2), fan_out=fan_out)

    @staticmethod
    def deliver(runner, tries: int = 10):
        """Deliver the batch until a delivery ends without the worker dying, as the broker
        hands it back each time; that delivery's outcome, and how many deliveries died."""
        for died in range(tries):
            try:
                return runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1"), died
            except OperationalError:
                continue
        raise AssertionError(f"every one of {tries} deliveries died")

    def test_deliveries_that_die_at_the_same_chunk_fail_the_batch(
        self, runner, store, sink, dead_letters
    ):
        """The first delivery publishes a chunk and dies at the second; two more die there
        (the most allowed); the next fails the batch, naming how far the fan-out got."""
        outcome, died = self.deliver(runner)
        assert (died, outcome.state, outcome.error.reason) == (
            3,
            State.FAILED,
            "too_many_deliveries",
        )
        assert outcome.error.message.startswith(
            "its fan-out published 2 of 6 children, then was delivered 3 times without "
            "publishing more (at most 2)"
        )
        assert store.get("b1").state is State.FAILED
        assert dead_letters.get("b1").error["reason"] == "too_many_deliveries"
        batch_events = [t for t in sink.types if t.startswith("batch.")]
        assert batch_events == ["batch.started", "batch.failed"]

    def test_the_children_published_run_on_and_the_batch_stays_failed(
        self, runner, batches, store, published, sink, sandbox
    ):
        self.deliver(runner)
        run_children(runner, published)
        assert [store.get(d.job_id).state for d in published] == [State.SUCCEEDED] * 2
        assert len(sandbox.calls) == 2
        assert batches.progress("b1").succeeded == 2
        assert store.get("b1").state is State.FAILED
        assert "batch.completed" not in sink.types

    def test_a_fan_out_that_moves_on_at_every_delivery_is_never_failed_for_it(
        self, make_runner, batches, store, published, broker
    ):
        """Each delivery publishes one child and dies at the next: six deliveries, three times
        the two allowed, and the batch completes, since each one moved it on."""
        broker.dies = lambda _first, chunks: chunks % 2 == 0
        one_by_one = FanOut(batches=batches, enqueuer=RecordThenPublish(store, broker), chunk=1)
        runner = make_runner(limits=Limits(max_deliveries=2), fan_out=one_by_one)
        outcome, died = self.deliver(runner)
        assert (died, outcome.state) == (5, State.RUNNING)
        assert len({d.job_id for d in published}) == 6
        run_children(runner, published)
        assert store.get("b1").state is State.SUCCEEDED

    def test_a_replay_counts_its_deliveries_afresh_and_publishes_the_rest(
        self, runner, broker, store, published, sink
    ):
        """A replayed batch is not failed again at once for the deliveries before its replay:
        it gets as many again, and once the fault is mended it publishes the rest."""
        self.deliver(runner)
        replay(store, "b1")
        outcome, died = self.deliver(runner)
        assert (died, outcome.error.reason) == (2, "too_many_deliveries")
        replay(store, "b1")
        broker.dies = None
        outcome, died = self.deliver(runner, tries=1)
        assert (died, outcome.state) == (0, State.RUNNING)
        assert len({d.job_id for d in published}) == 6
        run_children(runner, published)
        assert store.get("b1").state is State.SUCCEEDED
        assert sink.types.count("batch.completed") == 1

    def test_a_cancel_of_the_failed_batch_cancels_the_children_it_published(
        self, runner, store, published, scheduler, sleeps
    ):
        """Nothing will publish the rest: the cancel does not wait for that (it refused such a
        batch until its fan-out had published every child, which it never would). The chunk
        the worker died in was recorded queued: cancelled too, it ends; carol was never made."""
        self.deliver(runner)
        done = scheduler.cancel("b1")
        assert [d.job_id for d in published] == ["b1:audio:alice", "b1:video:alice"]
        assert done.cancelled == (
            "b1:audio:alice",
            "b1:video:alice",
            "b1:audio:bob",
            "b1:video:bob",
        )
        assert sleeps.waits == []
        assert store.get("b1:audio:carol") is None

    def test_a_move_of_the_failed_batch_moves_the_stops_of_the_children_it_published(
        self, runner, published, scheduler, schedule, clock, sleeps
    ):
        self.deliver(runner)
        run_children(runner, published)
        moves = scheduler.reschedule_children("b1", stop_at=epoch_iso(clock.now + 60))
        assert moves.moved == ("b1:audio:alice:stop", "b1:video:alice:stop")
        assert [child for child, _why in moves.refused] == ["b1:audio:bob", "b1:video:bob"]
        assert set(stops_pending(schedule).values()) == {clock.now + 60}
        assert sleeps.waits == []

    def test_only_a_batch_whose_fan_out_began_counts_a_delivery(self, batches, redis_client):
        """No hash is made for a batch that has none: its first delivery would find one, and
        resume a fan-out that never began."""
        assert batches.resume("b9", afresh=False) is None
        assert not redis_client.exists(batches.key("b9"))


class TestCompletion:
    def test_a_batch_whose_children_all_succeed_ends_succeeded_with_one_event(
        self, runner, published, store, sink, sandbox, batches
    ):
        """Counts are exact; batch.completed names every child's outcome, once."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        run_children(runner, published)
        assert store.get("b1").state is State.SUCCEEDED
        assert batches.progress("b1").counts() == {
            "total": 6,
            "succeeded": 6,
            "failed": 0,
            "pending": 0,
        }
        [completed] = [e for e in sink.events if e["type"] == "batch.completed"]
        assert completed["data"]["state"] == "succeeded"
        assert [c["state"] for c in completed["data"]["children"]] == ["succeeded"] * 6
        assert len(sandbox.accepted(START_TRACK_RECORDING.endpoint)) == 6
        child_events = [e for e in sink.events if e["type"] == "track_recording.started"]
        assert {e["data"]["batchId"] for e in child_events} == {"b1"}

    def test_some_children_rejected_end_the_batch_partially_failed_naming_them(
        self, runner, published, store, sink, sandbox
    ):
        """The first two children delivered (alice's tracks) are refused by VideoSDK."""
        sandbox.inject(
            Fault(status=403, body='{"message": "add-on disabled", "code": 4021}', times=2)
        )
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        run_children(runner, published)
        record = store.get("b1")
        assert record.state is State.PARTIALLY_FAILED
        [completed] = [e for e in sink.events if e["type"] == "batch.completed"]
        failed = [c for c in completed["data"]["children"] if c["state"] == "failed"]
        assert [c["jobId"] for c in failed] == ["b1:audio:alice", "b1:video:alice"]
        assert failed[0]["error"]["status"] == 403
        assert completed["data"]["counts"] == {
            "total": 6,
            "succeeded": 4,
            "failed": 2,
            "pending": 0,
        }

    def test_a_batch_whose_children_all_fail_ends_failed(self, runner, published, store, sandbox):
        sandbox.inject(Fault(status=400, times=6))
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        run_children(runner, published)
        record = store.get("b1")
        assert record.state is State.FAILED
        assert record.error["reason"] == "children_failed"

    def test_a_cancelled_child_counts_as_failed(self, runner, published, scheduler, store):
        """The batch still completes when a pending child is cancelled."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        scheduler.cancel("b1:video:carol")
        run_children(runner, published)
        assert store.get("b1").state is State.PARTIALLY_FAILED

    def test_a_child_delivered_twice_is_counted_once(self, runner, published, batches, sink):
        """Duplicate deliveries of finished children change no count and complete nothing twice."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        run_children(runner, published)
        run_children(runner, published)
        assert batches.progress("b1").succeeded == 6
        assert [e["type"] for e in sink.events].count("batch.completed") == 1

    def test_counts_follow_a_failed_child_that_succeeds_on_its_replay(self, batches):
        """Failed, then succeeded: moved from failed to succeeded once; the completed batch is
        to be completed again. A child failing again, or any repeat, changes nothing."""
        batches.create("b9", BULK, total=2)
        assert batches.child_ended("b9", "c1", succeeded=False) is Counted.COUNTED
        assert batches.child_ended("b9", "c2", succeeded=True) is Counted.COMPLETED
        assert batches.child_ended("b9", "c1", succeeded=False) is Counted.ALREADY
        assert batches.progress("b9").counts()["failed"] == 1
        assert batches.child_ended("b9", "c1", succeeded=True) is Counted.CHANGED
        assert batches.child_ended("b9", "c1", succeeded=True) is Counted.ALREADY
        assert batches.child_ended("b9", "c2", succeeded=False) is Counted.ALREADY
        progress = batches.progress("b9")
        assert (progress.succeeded, progress.failed, progress.completed) == (2, 0, True)

    def test_replays_completing_a_batch_at_once_leave_the_latest_outcome(
        self, runner, published, store, sandbox, batches, sink, monkeypatch
    ):
        """Both children failed and both are replayed, on two threads: A reads the counts to
        complete the batch again, B ends and completes it, then A writes what it read. A reads
        the counts again after its write, and writes the latest."""
        sandbox.inject(Fault(status=400, times=2))
        runner.run(BULK_TRACK_RECORDING, {**BULK, "participants": ["alice"]}, job_id="b1")
        run_children(runner, published)
        assert store.get("b1").state is State.FAILED
        first, second = published
        for child in published:  # what Producer.replay does
            store.enqueue(
                child.job_id,
                kind=START_TRACK_RECORDING.name,
                target=START_TRACK_RECORDING.target(child.job),
                metadata={},
                fresh=True,
            )
        read = batches.progress
        reads = []

        def b_runs_between_a_s_read_and_its_write(batch_id):
            seen = read(batch_id)
            reads.append(seen)
            if len(reads) == 1:
                runner.run(START_TRACK_RECORDING, second.job, job_id=second.job_id)
            return seen

        monkeypatch.setattr(batches, "progress", b_runs_between_a_s_read_and_its_write)
        runner.run(START_TRACK_RECORDING, first.job, job_id=first.job_id)
        assert store.get("b1").state is State.SUCCEEDED
        last = [e for e in sink.events if e["type"] == "batch.completed"][-1]["data"]
        assert (last["state"], last["counts"]["succeeded"]) == ("succeeded", 2)

    def test_a_child_replayed_to_success_before_its_batch_completes_only_moves_counts(
        self, batches
    ):
        batches.create("b9", BULK, total=2)
        assert batches.child_ended("b9", "c1", succeeded=False) is Counted.COUNTED
        assert batches.child_ended("b9", "c1", succeeded=True) is Counted.COUNTED
        assert batches.progress("b9").counts() == {
            "total": 2,
            "succeeded": 1,
            "failed": 0,
            "pending": 1,
        }
        assert batches.child_ended("b9", "c2", succeeded=True) is Counted.COMPLETED

    @pytest.mark.parametrize("died", ["before counting", "before completing"])
    def test_a_child_whose_delivery_died_after_its_end_still_completes_the_batch(
        self, runner, published, batches, store, sink, died
    ):
        """The last child's end was written, but its delivery died before the count (or after
        the count, before the batch was recorded): its redelivery, finding the child ended,
        tells the batch again, and the batch completes once."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        *others, last = list(published)
        for delivery in others:
            runner.run(START_TRACK_RECORDING, delivery.job, job_id=delivery.job_id)
        store.transition(last.job_id, State.SUCCEEDED, kind="start-track-recording", attempt=1)
        if died == "before completing":
            assert batches.child_ended("b1", last.job_id, succeeded=True) is Counted.COMPLETED
        assert store.get("b1").state is State.RUNNING
        outcome = runner.run(START_TRACK_RECORDING, last.job, job_id=last.job_id)
        assert outcome.duplicate
        assert store.get("b1").state is State.SUCCEEDED
        assert batches.progress("b1").succeeded == 6
        assert [e["type"] for e in sink.events].count("batch.completed") == 1

    def test_a_duplicate_child_during_the_batch_s_completion_completes_it_once(
        self, runner, published, batches, sink, monkeypatch
    ):
        """The last child's delivery counts it and is recording the batch complete when a
        duplicate of another child arrives, finds every child counted and the batch not yet
        recorded, and completes it too: batch.completed is published once."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        *others, last = list(published)
        for delivery in others:
            runner.run(START_TRACK_RECORDING, delivery.job, job_id=delivery.job_id)
        read = batches.progress
        duplicate = others[0]

        def a_duplicate_arrives_as_the_batch_completes(batch_id):
            progress = read(batch_id)
            if progress is not None and progress.completed and not arrived:
                arrived.append(True)
                runner.run(START_TRACK_RECORDING, duplicate.job, job_id=duplicate.job_id)
            return progress

        arrived: list[bool] = []
        monkeypatch.setattr(batches, "progress", a_duplicate_arrives_as_the_batch_completes)
        runner.run(START_TRACK_RECORDING, last.job, job_id=last.job_id)
        assert arrived
        assert sink.types.count("batch.completed") == 1

    def test_a_child_cancel_cut_short_is_counted_when_the_cancel_is_tried_again(
        self, runner, published, claims, scheduler, reporter, store, schedule, monkeypatch
    ):
        """The cancel's script cancelled a child waiting on the schedule, then Redis went away
        before the child was counted. Tried again, the cancel finds it ended, says so, and
        counts it: the batch completes. (It was never counted, and the batch never ended.)"""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        waiting, *others = list(published)
        busy = claims.acquire(waiting.job_id)
        assert runner.run(START_TRACK_RECORDING, waiting.job, job_id=waiting.job_id).deferred
        claims.release(waiting.job_id, busy)

        def redis_goes_away(*_args, **_kwargs):
            raise redis.ConnectionError("Redis went away")

        with monkeypatch.context() as cut:
            cut.setattr(reporter, "record_and_announce", redis_goes_away)
            with pytest.raises(redis.ConnectionError):
                scheduler.cancel(waiting.job_id)
        with pytest.raises(JobConflict, match=r"already ended \(cancelled\)"):
            scheduler.cancel(waiting.job_id)
        assert schedule.get(waiting.job_id) is None
        run_children(runner, others)
        assert store.get("b1").state is State.PARTIALLY_FAILED

    def test_a_rescheduled_child_s_event_names_its_batch(
        self, runner, published, claims, scheduler, sink, clock
    ):
        """Like every event of a child, its scheduled one carries data.batchId."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        child = published[0]
        busy = claims.acquire(child.job_id)
        assert runner.run(START_TRACK_RECORDING, child.job, job_id=child.job_id).deferred
        claims.release(child.job_id, busy)
        scheduler.reschedule(child.job_id, start_at=epoch_iso(clock.now + 600))
        [moved] = [e for e in sink.events if e["type"] == "track_recording.scheduled"]
        assert moved["data"]["batchId"] == "b1"

    def test_each_child_s_end_keeps_the_batch_for_a_state_ttl_more(
        self, runner, published, batches, redis_client
    ):
        """A batch that runs longer than RECQ_STATE_TTL (at a slow rate limit, say) must not
        lose its counts midway: they expired a TTL after the fan-out, and the batch never
        completed."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        key = batches.key("b1")
        redis_client.expire(key, 5)  # as if the batch had run for nearly a TTL
        child = published[0]
        runner.run(START_TRACK_RECORDING, child.job, job_id=child.job_id)
        assert redis_client.ttl(key) > 3600

    def test_a_cancel_that_waits_out_a_batch_s_fan_out_cancels_its_children_not_it(
        self, runner, schedule, reporter, claims, store, published, clock
    ):
        """The cancel meets the claim of a delivery fanning the batch out and waits; meanwhile
        that delivery publishes every child. The cancel then cancels the children; the batch
        itself is never recorded cancelled over them."""
        from worker.scheduler import Scheduler  # noqa: PLC0415

        store.enqueue(
            "b1",
            kind=BULK_TRACK_RECORDING.name,
            target=BULK_TRACK_RECORDING.target(BULK),
            metadata={},
        )
        fanning_out = claims.acquire("b1")

        def fan_out_ends(_pause: float) -> None:
            claims.release("b1", fanning_out)
            runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")

        waiting = Scheduler(
            schedule=schedule,
            reporter=reporter,
            claim_key=claims.key,
            clock=clock,
            sleep=fan_out_ends,
        )
        done = waiting.cancel("b1")
        assert len(published) == 6
        assert done.cancelled == tuple(d.job_id for d in published)  # its children, not it
        history = [entry["state"] for entry in store.get("b1").history]
        assert history == ["queued", "running", "cancelled"]  # completed, every child cancelled


def until(clock, seconds: float) -> dict:
    """The bulk job, its recordings stopped ``seconds`` from now."""
    return {**BULK, "stopAt": epoch_iso(clock.now + seconds)}


def stops_pending(schedule) -> dict[str, float]:
    return {d.job_id: d.due for d in schedule.pending() if d.job_id.endswith(":stop")}


class TestCancelAndMoveChildren:
    """Once a batch's fan-out began, `recq cancel` and `recq reschedule --stop-at` act on its
    children, each as they would on that child alone."""

    def test_a_cancel_cancels_children_not_run_and_the_stops_of_those_started(
        self, runner, published, scheduler, schedule, store, sandbox, clock
    ):
        """The started children keep recording (their stops are cancelled); the others never
        start: their deliveries find them cancelled and make no call."""
        runner.run(BULK_TRACK_RECORDING, until(clock, 3600), job_id="b1")
        started, not_run = published[:2], published[2:]
        run_children(runner, started)
        done = scheduler.cancel("b1")
        assert done.cancelled == tuple(d.job_id for d in not_run)
        assert done.pending_stops == tuple((d.job_id, f"{d.job_id}:stop") for d in started)
        assert done.busy == ()
        assert schedule.pending() == []
        run_children(runner, not_run)
        assert len(sandbox.calls) == 2
        assert sandbox.track_running(ROOM, "alice", "video")
        record = store.get("b1")
        assert record.state is State.PARTIALLY_FAILED  # two succeeded, four cancelled

    def test_a_batch_whose_every_child_is_cancelled_ends_cancelled(
        self, runner, published, scheduler, store, sink
    ):
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        scheduler.cancel("b1")
        record = store.get("b1")
        assert (record.state, record.error) == (State.CANCELLED, None)
        assert sink.types[-1] == "batch.completed"
        assert sink.events[-1]["data"]["state"] == "cancelled"

    def test_a_batch_of_failed_and_cancelled_children_says_how_many_were_cancelled(
        self, runner, published, scheduler, store, sandbox
    ):
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        sandbox.inject(Fault(status=403, times=1))
        run_children(runner, published[:1])
        scheduler.cancel("b1")
        record = store.get("b1")
        assert (record.state, record.error["message"]) == (
            State.FAILED,
            "all 6 children failed (5 of them cancelled)",
        )

    def test_children_being_run_are_tried_together_then_named(
        self, runner, published, scheduler, claims, store, sleeps
    ):
        """Each busy child is not waited for on its own: the cancel tries every busy one again
        for the same moment a single job gets, then names those still busy."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        busy = [published[0].job_id, published[3].job_id]
        for child in busy:
            claims.acquire(child)
        done = scheduler.cancel("b1")
        assert done.busy == tuple(busy)
        assert len(done.cancelled) == 4
        assert sum(sleeps.waits) == pytest.approx(2.5)
        assert store.get(busy[0]).state is State.QUEUED

    def test_a_batch_not_yet_fanned_out_in_full_is_refused_whole(
        self, make_runner, batches, store, scheduler, sleeps
    ):
        """A child not yet published would be published after the cancel, and run: nothing is
        cancelled until the fan-out resumes and ends."""
        published: list = []

        def dies_in_the_second_chunk(messages):
            if published:
                raise OperationalError("broker went away")
            published.extend(messages)

        fragile = FanOut(
            batches=batches, enqueuer=RecordThenPublish(store, dies_in_the_second_chunk), chunk=2
        )
        with pytest.raises(OperationalError):
            make_runner(fan_out=fragile).run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        with pytest.raises(JobConflict, match="published 2 of its 6 children"):
            scheduler.cancel("b1")
        assert store.get(published[0].job_id).state is State.QUEUED

    def test_an_ended_batch_has_the_pending_stops_of_its_children_cancelled(
        self, runner, published, scheduler, schedule, store, clock
    ):
        runner.run(BULK_TRACK_RECORDING, until(clock, 3600), job_id="b1")
        run_children(runner, published)
        assert store.get("b1").state is State.SUCCEEDED
        done = scheduler.cancel("b1")
        assert len(done.pending_stops) == 6
        assert schedule.pending() == []
        assert store.get("b1").state is State.SUCCEEDED

    def test_an_ended_batch_with_nothing_pending_is_refused(self, runner, published, scheduler):
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        run_children(runner, published)
        with pytest.raises(JobConflict, match="every child already ended, none with a stop"):
            scheduler.cancel("b1")

    def test_a_move_moves_the_stops_of_the_children_that_started(
        self, runner, published, scheduler, schedule, clock
    ):
        runner.run(BULK_TRACK_RECORDING, until(clock, 3600), job_id="b1")
        run_children(runner, published)
        moves = scheduler.reschedule_children("b1", stop_at=epoch_iso(clock.now + 7200))
        assert moves.moved == tuple(f"{d.job_id}:stop" for d in published)
        assert set(stops_pending(schedule).values()) == {clock.now + 7200}

    def test_a_move_stops_a_batch_that_had_no_stop_time_but_not_its_failed_children(
        self, runner, published, scheduler, schedule, sandbox, clock
    ):
        """--stop-at now ends every recording the batch started; a child that failed has
        none, and is left alone."""
        runner.run(BULK_TRACK_RECORDING, BULK, job_id="b1")
        sandbox.inject(Fault(status=403, times=1))
        run_children(runner, published)
        moves = scheduler.reschedule_children("b1", stop_at=epoch_iso(clock.now))
        assert (len(moves.moved), moves.refused) == (5, ())
        assert published[0].job_id + ":stop" not in stops_pending(schedule)

    def test_a_move_names_the_children_still_queued(self, runner, published, scheduler, clock):
        """A queued child's message is on the broker, its stopAt in it: it cannot be moved
        until it started. The command names it, and moving again later catches it up."""
        runner.run(BULK_TRACK_RECORDING, until(clock, 3600), job_id="b1")
        run_children(runner, published[:5])
        moves = scheduler.reschedule_children("b1", stop_at=epoch_iso(clock.now + 60))
        [(child, why)] = moves.refused
        assert child == published[5].job_id
        assert "too late to move it" in why
        run_children(runner, published[5:])
        again = scheduler.reschedule_children("b1", stop_at=epoch_iso(clock.now + 60))
        assert (len(again.moved), again.refused) == (6, ())


class TestKeptWhileItsStopsWait:
    """A batch is kept until a TTL after its children's stops, however far ahead: a cancel or a
    move of the batch acts on them. Its record and counts used to expire a TTL after its last
    child ended, and ``recq cancel`` of the batch then called it unknown."""

    TTL = 3600
    HOUR = 3600

    @pytest.fixture
    def store(self, store_on_the_clock):
        """The store on the test's clock, keeping records an hour."""
        return store_on_the_clock(self.TTL)

    @pytest.fixture
    def batches(self, redis_client, namespace, clock):
        return Batches(redis_client, namespace=namespace, ttl=self.TTL, clock=clock)

    def assert_kept_until_a_ttl_after(self, store, batches, redis_client, due, clock):
        """The batch's record, history, hash and sets of counted children."""
        key = batches.key("b1")
        keys = [*store.keys("b1"), key, f"{key}:ended", f"{key}:failed"]
        expected = due - clock.now + self.TTL
        for key in keys:
            assert expected - 5 < redis_client.ttl(key) <= expected, key

    def test_a_completed_batch_whose_children_stop_after_the_ttl(
        self, runner, published, store, batches, sandbox, redis_client, clock
    ):
        """Kept until a TTL after its stopAt, and a child's duplicate count never shortens it."""
        sandbox.inject(Fault(status=403, times=1))  # a failed child: every key is made
        runner.run(BULK_TRACK_RECORDING, until(clock, 3 * self.HOUR), job_id="b1")
        run_children(runner, published)
        assert store.get("b1").state is State.PARTIALLY_FAILED
        due = clock.now + 3 * self.HOUR
        self.assert_kept_until_a_ttl_after(store, batches, redis_client, due, clock)
        assert batches.child_ended("b1", published[1].job_id, succeeded=True) is Counted.ALREADY
        self.assert_kept_until_a_ttl_after(store, batches, redis_client, due, clock)

    def test_a_move_of_its_children_s_stops_keeps_it_as_long(
        self, runner, published, scheduler, store, batches, sandbox, redis_client, clock
    ):
        sandbox.inject(Fault(status=403, times=1))
        runner.run(BULK_TRACK_RECORDING, until(clock, 60), job_id="b1")
        run_children(runner, published)
        scheduler.reschedule_children("b1", stop_at=epoch_iso(clock.now + 10 * self.HOUR))
        due = clock.now + 10 * self.HOUR
        self.assert_kept_until_a_ttl_after(store, batches, redis_client, due, clock)
