"""Bulk track capture with real workers on real Redis, against the sandbox over HTTP.

A batch fans out into its children, counts them exactly, names those that failed, publishes no
second set of children when redelivered, and all of it stays within the fleet-wide rate limit
however many workers run. Each test prints its figures.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from worker.celery_app import create_app
from worker.enqueuer import Enqueuer, NewJob
from worker.jobs import (
    BULK_TRACK_RECORDING,
    START_TRACK_RECORDING,
    STOP_TRACK_RECORDING,
    Job,
    child_jobs,
)
from worker.producer import Producer
from worker.publisher import TaskMessage
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET
from worker.settings import Credentials, Secret
from worker.state import State
from worker.testing import (
    Workers,
    busiest_window,
    wait_for_events,
    wait_for_state,
    wait_until,
    worker_env,
)
from worker.tokens import TokenSigner
from worker.videosdk import VideoSDKClient, build_session

pytestmark = pytest.mark.integration

TRACK_START = START_TRACK_RECORDING.endpoint
KINDS = ["audio", "video", "screen_audio", "screen_video"]


def bulk(participants: int, kinds: list[str], **fields: Any) -> dict[str, Any]:
    return {
        "roomId": "bulk-room",
        "participants": [f"p{n:04d}" for n in range(participants)],
        "kinds": kinds,
        **fields,
    }


def test_two_workers_under_5_per_second_never_start_more_than_5_calls_in_a_second(
    settings, sandbox
):
    """Two `recq worker` processes, RECQ_RATE_LIMIT=5/s, a batch of 30 tracks: in the sandbox's
    own log no one-second window holds more than 5 calls, and the batch still completes."""
    env = worker_env(settings, RECQ_RATE_LIMIT="5/s")
    with create_app(settings) as app, Workers(env) as workers:
        workers.start(concurrency=4)
        workers.start(concurrency=4)
        batch_id = Producer(app).enqueue(
            BULK_TRACK_RECORDING, bulk(10, ["audio", "video", "screen_audio"])
        )
        record = wait_for_state(
            app.store, batch_id, State.SUCCEEDED, State.PARTIALLY_FAILED, State.FAILED, timeout=60
        )
    times = [call.at for call in sandbox.calls]
    span = max(times) - min(times)
    most = busiest_window(times, 1.0)
    print(f"\n5/s, two workers: {len(times)} calls in {span:.1f} s; at most {most} in any second")
    assert record.state is State.SUCCEEDED
    assert len(sandbox.accepted(TRACK_START)) == 30
    assert most <= 5
    assert span >= (30 - 5) / 5  # the limit held the pace: 30 calls need at least 5 s


def test_a_batch_of_1000_tracks_ends_with_exact_counts(app, running_worker, sandbox):
    """250 participants x 4 kinds: 1,000 children, each started once, counted exactly."""
    started = time.monotonic()
    batch_id = Producer(app).enqueue(BULK_TRACK_RECORDING, bulk(250, KINDS))
    wait_for_state(app.store, batch_id, State.SUCCEEDED, State.PARTIALLY_FAILED, timeout=110)
    took = time.monotonic() - started
    progress = app.batches.progress(batch_id)
    print(f"\n1,000 tracks: batch succeeded in {took:.1f} s")
    assert progress.counts() == {"total": 1000, "succeeded": 1000, "failed": 0, "pending": 0}
    starts = sandbox.accepted(TRACK_START)
    assert len(starts) == 1000
    assert len({(c.body["participantId"], c.body["kind"]) for c in starts}) == 1000
    [completed] = wait_for_events(app.event_log, "batch.completed")
    assert len(completed["data"]["children"]) == 1000


@pytest.fixture
def client(sandbox_server) -> VideoSDKClient:
    """A client of the sandbox of its own, as another system calling VideoSDK."""
    return VideoSDKClient(
        build_session(sandbox_server.url),
        endpoint=sandbox_server.url,
        tokens=TokenSigner(Credentials(DEFAULT_API_KEY, Secret(DEFAULT_SECRET))),
    )


def test_a_batch_with_rejected_children_ends_partially_failed_naming_them(
    app, running_worker, client
):
    """p0001's audio is already being recorded: VideoSDK refuses that child, and only it."""
    client.post(TRACK_START, {"roomId": "bulk-room", "participantId": "p0001", "kind": "audio"})
    batch_id = Producer(app).enqueue(
        BULK_TRACK_RECORDING, {**bulk(3, ["audio", "video"]), "jobId": "b-partial"}
    )
    record = wait_for_state(
        app.store, batch_id, State.PARTIALLY_FAILED, State.SUCCEEDED, timeout=30
    )
    assert record.state is State.PARTIALLY_FAILED
    [completed] = wait_for_events(app.event_log, "batch.completed")
    failed = [c for c in completed["data"]["children"] if c["state"] == "failed"]
    assert [(c["jobId"], c["error"]["status"]) for c in failed] == [("b-partial:audio:p0001", 400)]
    assert completed["data"]["counts"] == {"total": 6, "succeeded": 5, "failed": 1, "pending": 0}


def test_a_failed_child_replayed_to_success_completes_its_batch_again(app, running_worker, client):
    """The batch's counts follow the child's new end: a second batch.completed, succeeded."""
    track = {"roomId": "bulk-room", "participantId": "p0001", "kind": "audio"}
    client.post(TRACK_START, track)
    batch_id = Producer(app).enqueue(
        BULK_TRACK_RECORDING, {**bulk(2, ["audio"]), "jobId": "b-replayed"}
    )
    wait_for_state(app.store, batch_id, State.PARTIALLY_FAILED, State.SUCCEEDED, timeout=30)
    client.post(STOP_TRACK_RECORDING.endpoint, track)  # what kept the child from starting
    Producer(app).replay("b-replayed:audio:p0001")
    record = wait_for_state(app.store, batch_id, State.SUCCEEDED, timeout=30)
    assert record.error is None
    first, again = [e["data"] for e in wait_for_events(app.event_log, "batch.completed", 2)]
    assert (first["state"], first["counts"]["failed"]) == ("partially_failed", 1)
    assert again["state"] == "succeeded"
    assert again["counts"] == {"total": 2, "succeeded": 2, "failed": 0, "pending": 0}
    assert [c["state"] for c in again["children"]] == ["succeeded", "succeeded"]


class CountingEnqueuer:
    """The app's enqueuer, keeping every message it is given to publish."""

    def __init__(self, inner: Enqueuer) -> None:
        self.inner = inner
        self.messages: list[TaskMessage] = []

    def enqueue(self, jobs: Sequence[NewJob]) -> list[State | None]:
        self.messages.extend(message for _, message in jobs)
        return self.inner.enqueue(jobs)


def test_a_redelivered_batch_message_creates_no_second_set_of_children(
    app, running_worker, sandbox
):
    """The batch's message is delivered again while its children run: the second delivery
    publishes nothing (counted by the app's enqueuer, through which every child passes)."""
    sandbox.latency = 0.2
    counting = CountingEnqueuer(app.enqueuer)
    app.__dict__["enqueuer"] = counting  # before the worker builds its runner
    job = {**bulk(10, ["audio", "video"]), "jobId": "b-again"}
    batch_id = Producer(app).enqueue(BULK_TRACK_RECORDING, job)
    claim = app.claims.key(batch_id)

    def fanned_out() -> bool:
        progress = app.batches.progress(batch_id)
        return progress is not None and progress.fanned_out and not app.redis.exists(claim)

    wait_until(fanned_out, "the fan-out did not finish")
    assert not app.store.get(batch_id).state.terminal
    app.send_task(BULK_TRACK_RECORDING.task_name, kwargs={"job": job}, task_id=batch_id)
    wait_for_state(app.store, batch_id, State.SUCCEEDED, timeout=60)
    record = app.store.get(batch_id)
    published = [m.job_id for m in counting.messages if m.task == START_TRACK_RECORDING.task_name]
    print(f"\nredelivered batch: {len(published)} child messages for 20 children")
    assert record.deliveries == 2  # the second delivery ran, while the batch was running
    assert sorted(published) == sorted(set(published))
    assert len(published) == 20
    assert len(sandbox.accepted(TRACK_START)) == 20


class DiesAtAChunk:
    """The app's enqueuer, but the worker dies publishing the chunk that begins with ``first``,
    on every delivery of the batch, until ``mended``."""

    def __init__(self, inner: Enqueuer, first: str) -> None:
        self.inner = inner
        self.first = first
        self.mended = False

    def enqueue(self, jobs: Sequence[NewJob]) -> list[State | None]:
        if not self.mended and jobs[0][1].job_id == self.first:
            raise redis.ConnectionError("the worker died publishing this chunk")
        return self.inner.enqueue(jobs)


class TestAFanOutThatKeepsDying:
    @pytest.fixture
    def app(self, settings, sleeps):
        """Jobs delivered at most twice."""
        application = create_app(dataclasses.replace(settings, max_deliveries=2), sleep=sleeps)
        yield application
        application.close()

    def test_it_fails_its_batch_and_a_replay_publishes_the_rest(self, app, sandbox):
        """150 children, published 100 at a time: every delivery dies at the second chunk and
        is handed back to the broker. Past two such deliveries the batch fails; the first 100
        children run on; mended and replayed, the batch publishes the other 50 and completes.
        (Such a batch was delivered for ever.)"""
        from celery.contrib.testing.worker import start_worker  # noqa: PLC0415

        job = {**bulk(75, ["audio", "video"]), "jobId": "b-dying"}
        children = child_jobs(Job("b-dying", BULK_TRACK_RECORDING, job))
        dying = DiesAtAChunk(app.enqueuer, first=children[100].id)
        app.__dict__["enqueuer"] = dying  # before the worker builds its runner
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False):
            Producer(app).enqueue(BULK_TRACK_RECORDING, job)
            record = wait_for_state(app.store, "b-dying", State.FAILED, timeout=60)
            assert record.error["reason"] == "too_many_deliveries"
            assert "published 100 of 150 children" in record.error["message"]
            wait_for_events(app.event_log, "batch.failed", timeout=10)
            wait_until(
                lambda: app.batches.progress("b-dying").succeeded >= 100,
                "the children published did not all end",
                timeout=60,
            )
            assert app.store.get("b-dying").state is State.FAILED
            dying.mended = True
            Producer(app).replay("b-dying")
            wait_for_state(app.store, "b-dying", State.SUCCEEDED, timeout=60)
            [completed] = wait_for_events(app.event_log, "batch.completed", timeout=10)
        print(f"\nfan-out dying at a chunk: failed on delivery {record.deliveries}")
        assert completed["data"]["counts"] == {
            "total": 150,
            "succeeded": 150,
            "failed": 0,
            "pending": 0,
        }
        assert len(sandbox.accepted(TRACK_START)) == 150
