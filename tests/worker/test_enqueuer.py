"""Putting jobs on the queue: each recorded queued with its message published, a job that already
ended left alone; on a Redis broker that is the state store, the record and the message written
by one script, in one round trip for a whole chunk."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError
from kombu.utils.json import loads

from worker.celery_app import create_app
from worker.enqueuer import RecordAndPush, RecordThenPublish
from worker.errors import Target
from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.publisher import TaskMessage
from worker.state import Queued, State


def new_job(job_id: str, room: str = "r") -> tuple[Queued, TaskMessage]:
    job = {"roomId": room}
    return (
        Queued(job_id, START_RECORDING.name, Target(room), {}),
        TaskMessage(START_RECORDING.task_name, job_id, job),
    )


def queued(redis_client: redis.Redis, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """The messages on ``queue`` in the order a worker takes them (from the right): each one's
    task id and job, read as kombu and Celery read them."""
    taken = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        envelope = loads(raw)
        body = json.loads(base64.b64decode(envelope["body"]))
        taken.append((envelope["headers"]["id"], body[1]["job"]))
    return taken


class TestRecordAndPush:
    def test_each_job_is_recorded_queued_and_its_message_queued_in_order(
        self, store, redis_client, namespace
    ):
        RecordAndPush(store, namespace).enqueue([new_job("a", "ra"), new_job("b", "rb")])
        assert [store.get(j).state for j in ("a", "b")] == [State.QUEUED, State.QUEUED]
        assert queued(redis_client, namespace) == [("a", {"roomId": "ra"}), ("b", {"roomId": "rb"})]

    def test_a_job_that_already_ended_is_neither_recorded_again_nor_queued(
        self, store, redis_client, namespace
    ):
        store.transition("done", State.SUCCEEDED, kind=START_RECORDING.name)
        RecordAndPush(store, namespace).enqueue([new_job("done"), new_job("new")])
        assert store.get("done").state is State.SUCCEEDED
        assert [job_id for job_id, _ in queued(redis_client, namespace)] == ["new"]

    def test_a_chunk_is_one_round_trip_with_no_push_of_its_own(self, store, sends, namespace):
        """The records and the messages are written by the same scripts: nothing is sent
        after them, so a producer that dies cannot leave a job recorded without its message."""
        enqueuer = RecordAndPush(store, namespace)
        enqueuer.enqueue([new_job("first")])  # the script known to Redis
        sends.clear()
        enqueuer.enqueue([new_job(f"j{n}") for n in range(3)])
        assert sends == [b"EVALSHA"]

    def test_a_producer_s_one_job_is_one_round_trip(self, app, sends, redis_client, settings):
        """`Producer.enqueue` on the default set-up (the broker is the state store): its
        record and its message in one round trip, where they took two."""
        producer = Producer(app)
        producer.enqueue(START_RECORDING, {"roomId": "warm-up"})  # connections, scripts
        sends.clear()
        job_id = producer.enqueue(START_RECORDING, {"roomId": "r1"})
        assert sends == [b"EVALSHA"]
        assert app.store.get(job_id).state is State.QUEUED
        assert queued(redis_client, settings.queue)[-1] == (job_id, {"roomId": "r1"})


class TestRecordThenPublish:
    def test_the_messages_of_jobs_not_ended_are_published_after_their_records(self, store):
        published: list[TaskMessage] = []

        def publish(messages):
            assert all(store.get(m.job_id).state is State.QUEUED for m in messages)
            published.extend(messages)

        store.transition("done", State.FAILED, kind=START_RECORDING.name)
        RecordThenPublish(store, publish).enqueue([new_job("a"), new_job("done"), new_job("b")])
        assert [m.job_id for m in published] == ["a", "b"]
        assert store.get("done").state is State.FAILED


class TestTheAppsChoice:
    """One script where the broker is the state store's Redis; otherwise records, then
    messages through the broker's own publisher."""

    def test_a_redis_broker_that_is_the_state_store_records_and_pushes_together(self, settings):
        app = create_app(settings)
        try:
            assert isinstance(app.producer_enqueuer, RecordAndPush)
            assert isinstance(app.enqueuer, RecordAndPush)
        finally:
            app.close()

    @pytest.mark.parametrize(
        "broker",
        ["redis://127.0.0.1:6379/1", "amqp://guest:guest@127.0.0.1:5672//"],
        ids=["another-redis-database", "rabbitmq"],
    )
    def test_any_other_broker_gets_the_records_first_then_the_messages(self, settings, broker):
        app = create_app(settings.replace(broker_url=broker))
        try:
            assert isinstance(app.producer_enqueuer, RecordThenPublish)
            assert isinstance(app.enqueuer, RecordThenPublish)
        finally:
            app.close()

    def test_a_failed_publish_withdraws_a_producer_s_new_records_but_not_a_worker_s(
        self, settings, store
    ):
        """A producer is told, and its new records go (nothing would run them). A batch's
        children keep theirs: a child whose message got through before the broker failed is
        counted in its batch by the batchId its record holds."""
        app = create_app(settings.replace(broker_url="redis://127.0.0.1:6379/1"))

        class OneThenFails:
            def publish(self, messages):
                raise OperationalError("the broker went away after one message")

        app.__dict__["task_publisher"] = OneThenFails()  # what the enqueuers are built with
        try:
            with pytest.raises(OperationalError):
                app.producer_enqueuer.enqueue([new_job("from-a-producer")])
            with pytest.raises(OperationalError):
                app.enqueuer.enqueue([new_job("b1:audio:p1")])
        finally:
            app.close()
        assert store.get("from-a-producer") is None
        assert store.get("b1:audio:p1").state is State.QUEUED
