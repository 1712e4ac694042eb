"""RabbitMQ as the broker: jobs and events through a real RabbitMQ, state in Redis.

Skipped when no RabbitMQ answers, never under ``CI=true``. Each test has its own queue, exchange
and dead-letter queue (named after its namespace), deleted when it ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import pytest

from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.settings import Settings
from worker.state import State
from worker.testing import celery_amqp_message, wait_for_state, worker_env
from worker.topology import DELIVERY_LIMIT

pytestmark = pytest.mark.integration


def _connect(url: str) -> amqp.Connection:
    parts = urlsplit(url)
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
    )
    connection.connect()
    return connection


@pytest.fixture
def channel(amqp_url: str) -> Iterator[Any]:
    """A bare AMQP channel, as a producer or subscriber in another language would hold."""
    connection = _connect(amqp_url)
    yield connection.channel()
    connection.close()


@pytest.fixture
def settings(settings: Settings, amqp_url: str) -> Iterator[Settings]:
    """This test's settings with RabbitMQ as the broker; its queues are deleted afterwards."""
    yield settings.replace(broker_url=amqp_url)
    connection = _connect(amqp_url)
    cleanup = connection.channel()
    for name in (settings.queue, f"{settings.queue}.dead"):
        cleanup.queue_delete(name)
        cleanup.exchange_delete(name)
    connection.close()


def _bind_events(channel: Any) -> str:
    queue, _count, _consumers = channel.queue_declare(exclusive=True, auto_delete=True)
    channel.queue_bind(queue, exchange="recq.events", routing_key="#")
    return str(queue)


def _events_of(channel: Any, queue: str, job_id: str, timeout: float = 10.0) -> list[Any]:
    """The events of ``job_id`` that reached ``queue``, each with its AMQP content type."""
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = channel.basic_get(queue, no_ack=True)
        if message is None:
            if found and found[-1][1]["data"]["state"] in ("succeeded", "failed"):
                break
            time.sleep(0.05)
            continue
        event = json.loads(message.body)
        if event["subject"] == job_id:
            found.append((message.properties.get("content_type"), event))
    return found


class TestRabbitMQBroker:
    def test_a_job_runs_through_rabbitmq_and_its_events_reach_the_exchange(
        self, app, sandbox, running_worker, channel
    ):
        """A job published on RabbitMQ is run once, and its events reach a bound subscriber."""
        events_queue = _bind_events(channel)
        job_id = Producer(app).enqueue(START_RECORDING, {"roomId": "rabbit-room"})
        record = wait_for_state(app.store, job_id, State.SUCCEEDED, State.FAILED)
        assert record.state is State.SUCCEEDED
        assert [c.body for c in sandbox.calls] == [{"roomId": "rabbit-room"}]
        events = _events_of(channel, events_queue, job_id)
        assert [(kind, e["type"]) for kind, e in events] == [
            ("application/cloudevents+json", "recording.started")
        ]

    def test_the_job_queue_is_a_durable_quorum_queue_with_a_dead_letter_exchange(
        self, app, channel
    ):
        """The queue exists as declared: redeclaring it as a classic queue is refused."""
        Producer(app).enqueue(START_RECORDING, {"roomId": "declared"})
        queue = app.settings.queue
        expected = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": f"{queue}.dead",
            "x-delivery-limit": DELIVERY_LIMIT,
        }
        _name, messages, _consumers = channel.queue_declare(
            queue, durable=True, auto_delete=False, arguments=expected
        )
        assert messages == 1
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            channel.queue_declare(
                queue, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}
            )

    def test_a_published_job_s_headers_hold_no_repr_of_it(self, app, channel):
        """Celery writes a repr of a task's arguments into its headers, which a worker run with
        -E (for Flower) copies into its task events: a pre-signed URL's signature must not be
        there. The body holds the job, as it must."""
        signed = "https://bucket.s3.amazonaws.com/rec.mp4?X-Amz-Signature=SIGNED"
        job_id = Producer(app).enqueue(START_RECORDING, {"roomId": "r", "preSignedUrl": signed})
        message = channel.basic_get(app.settings.queue, no_ack=True)
        headers = message.properties["application_headers"]
        assert headers["kwargsrepr"] == f"{{'job': <job {job_id}>}}"
        assert "SIGNED" not in json.dumps(headers, default=str)
        assert json.loads(message.body)[1]["job"]["preSignedUrl"] == signed

    def test_a_hand_built_message_from_a_bare_amqp_client_is_run(
        self, app, sandbox, running_worker, channel
    ):
        """basic.publish of the documented message, without Celery, starts the recording."""
        job = {"roomId": "from-go", "metadata": {"producer": "go"}}
        message = celery_amqp_message("recq.start_recording", "go-1", job=job)
        channel.basic_publish(
            amqp.Message(
                message["body"], application_headers=message["headers"], **message["properties"]
            ),
            exchange="",
            routing_key=app.settings.queue,
        )
        record = wait_for_state(app.store, "go-1", State.SUCCEEDED, State.FAILED)
        assert record.state is State.SUCCEEDED
        assert record.metadata == {"producer": "go"}
        assert [c.body for c in sandbox.calls] == [{"roomId": "from-go"}]

    def test_a_message_naming_no_known_task_is_failed_and_dead_lettered(
        self, app, sandbox, running_worker, channel
    ):
        """An unknown task is recorded failed, and RabbitMQ keeps the message in the dead queue."""
        message = celery_amqp_message("recq.no_such_task", "lost-1", job={"roomId": "r"})
        channel.basic_publish(
            amqp.Message(
                message["body"], application_headers=message["headers"], **message["properties"]
            ),
            exchange="",
            routing_key=app.settings.queue,
        )
        record = wait_for_state(app.store, "lost-1", State.FAILED)
        assert record.error is not None
        assert record.error["reason"] == "unknown_task"
        dead = None
        deadline = time.monotonic() + 10
        while dead is None and time.monotonic() < deadline:
            dead = channel.basic_get(f"{app.settings.queue}.dead", no_ack=True)
            time.sleep(0.05)
        assert dead is not None
        assert dead.headers["id"] == "lost-1"
        assert sandbox.calls == []

    def test_a_scheduled_job_is_published_through_rabbitmq_when_due(
        self, app, sandbox, running_worker
    ):
        """The dispatcher publishes a due job on RabbitMQ like any other."""
        start_at = datetime.now(UTC) + timedelta(seconds=3)
        job_id = Producer(app).enqueue(
            START_RECORDING,
            {"roomId": "rabbit-later", "startAt": start_at.isoformat().replace("+00:00", "Z")},
        )
        assert app.store.get(job_id).state is State.SCHEDULED
        record = wait_for_state(app.store, job_id, State.SUCCEEDED, State.FAILED, timeout=30)
        assert record.state is State.SUCCEEDED
        assert sandbox.calls[0].at >= start_at.timestamp() - 0.01


def _recq(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        (lambda url: url.replace("guest:guest@", "guest:wrong@"), "AccessRefused"),
        (lambda url: url.rsplit("/", 1)[0] + "/recq-no-such-vhost", "NotAllowed"),
    ],
    ids=["wrong-password", "unknown-vhost"],
)
def test_a_broker_refusing_the_login_is_named_and_leaves_no_job_queued(
    settings, amqp_url, redis_url, spoil, named
):
    """RabbitMQ's own refusals came out of recq enqueue as a traceback, and the job stayed
    recorded queued with nothing on its way. One line names the variable; nothing is left."""
    env = {**worker_env(settings), "CELERY_BROKER_URL": spoil(amqp_url)}
    job = json.dumps({"jobId": "refused-1", "roomId": "r"})
    result = _recq(env, "enqueue", "start-recording", "-", stdin=job)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "the broker (CELERY_BROKER_URL) failed" in result.stderr
    assert named in result.stderr
    assert "wrong" not in result.stderr  # the password is never shown
    status = _recq(env, "status", "refused-1")
    assert status.returncode == 1  # withdrawn: recq does not know the job


def test_a_worker_that_cannot_consume_its_queue_exits_non_zero(settings, channel, tmp_path):
    """Its queue was declared otherwise before (a classic queue left by another tool): Celery
    meets an unrecoverable error, and `recq worker` exits 1, not 0, so a supervisor that
    restarts on failure (systemd's Restart=on-failure) sees one."""
    channel.queue_declare(settings.queue, durable=True, auto_delete=False)
    env = worker_env(settings, RECQ_HEARTBEAT_FILE=str(tmp_path / "heartbeat"))
    result = subprocess.run(
        [sys.executable, "-m", "worker", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "PRECONDITION_FAILED" in result.stdout + result.stderr
