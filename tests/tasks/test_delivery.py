"""Delivery guarantees on a real worker: duplicates, outages, dead letters, refused messages."""

from __future__ import annotations

import base64
import json
import time

import pytest

from worker.celery_app import create_app
from worker.errors import BrokerUnavailable, InvalidJob, JobConflict
from worker.jobs import START_RECORDING
from worker.logs import JsonFormatter, TextFormatter
from worker.producer import Producer
from worker.redis_server import free_port
from worker.sandbox import Fault
from worker.state import State, epoch_iso
from worker.testing import celery_message, wait_for_state

pytestmark = pytest.mark.integration

JOB = {"roomId": "room-d", "metadata": {"case": "delivery"}}


def wait_for(app, job_id, *states, timeout=20.0):
    return wait_for_state(app.store, job_id, *states, timeout=timeout)


@pytest.fixture
def settings(settings):
    """Re-queued jobs come back within a second, so an outage fits in a test."""
    return settings.replace(requeue_delay=0.5, retry_attempts=2)


class TestIdempotentDelivery:
    def test_a_finished_job_enqueued_again_is_not_published(self, app, sandbox, running_worker):
        """A producer retrying a succeeded jobId gets its id back; nothing runs again."""
        producer = Producer(app)
        producer.enqueue(START_RECORDING, {**JOB, "jobId": "once"})
        wait_for(app, "once", State.SUCCEEDED)
        assert producer.enqueue(START_RECORDING, {**JOB, "jobId": "once"}) == "once"
        assert app.redis.llen(app.settings.queue) == 0
        assert app.store.get("once").state is State.SUCCEEDED
        assert len(sandbox.calls) == 1

    def test_two_deliveries_at_once_call_videosdk_once(self, app, sandbox, running_worker):
        """The same job published twice while the first is slow: one start reaches VideoSDK."""
        sandbox.inject(Fault(latency=1.0))
        for _ in range(2):
            app.send_task(START_RECORDING.task_name, kwargs={"job": JOB}, task_id="twice")
        wait_for(app, "twice", State.SUCCEEDED)
        time.sleep(1.5)  # the second delivery waits out the claim, then finds the job done
        assert len(sandbox.calls_to(START_RECORDING.endpoint)) == 1
        assert app.store.get("twice").state is State.SUCCEEDED
        assert app.dead_letters.list() == []


class TestOutages:
    def test_a_long_outage_requeues_and_the_job_succeeds_after_it(
        self, app, sandbox, running_worker
    ):
        """Budget spent on 503s: the job waits on the schedule, then a later delivery succeeds."""
        sandbox.inject(Fault(status=503, times=4))
        job_id = Producer(app).enqueue(START_RECORDING, JOB)
        record = wait_for(app, job_id, State.SUCCEEDED, State.FAILED, timeout=30)
        assert record.state is State.SUCCEEDED
        assert record.attempts == 5
        assert record.requeues == 2
        assert [c.status for c in sandbox.calls] == [503, 503, 503, 503, 200]

    def test_a_producer_facing_a_down_broker_fails_fast_and_clearly(self, settings):
        """Nothing listens on the broker's port: BrokerUnavailable within seconds, no hang."""
        down = f"redis://127.0.0.1:{free_port()}/0"
        app = create_app(settings.replace(broker_url=down, redis_url=down))
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="could not publish"):
            Producer(app).enqueue(START_RECORDING, JOB)
        assert time.monotonic() - started < 10
        app.close()

    def test_a_broker_down_behind_a_working_store_leaves_no_job_recorded_queued(
        self, settings, app
    ):
        """RabbitMQ or a Redis broker of its own: the records are written first, then the
        messages published. When that fails, the records just made are withdrawn (the caller
        never learned a generated id, and nothing would ever run them); a job recorded by an
        earlier enqueue keeps its record."""
        down = f"redis://127.0.0.1:{free_port()}/0"
        Producer(app).enqueue(START_RECORDING, {**JOB, "jobId": "earlier"})
        cut_off = create_app(settings.replace(broker_url=down))
        with pytest.raises(BrokerUnavailable):
            Producer(cut_off).enqueue_many(
                START_RECORDING, [{**JOB, "jobId": "new"}, {**JOB, "jobId": "earlier"}]
            )
        assert app.store.get("new") is None
        assert app.store.get("earlier").state is State.QUEUED
        cut_off.close()


class TestDeadLetters:
    def test_a_rejected_job_is_replayed_under_its_id(self, app, sandbox, running_worker):
        """Rejected once, kept as a dead letter, replayed: it succeeds with the same id, its
        attempts counted on (the first may have reached VideoSDK: a replay never forgets it)."""
        sandbox.inject(Fault(status=403, body='{"code": 4021}'))
        job_id = Producer(app).enqueue(START_RECORDING, JOB)
        wait_for(app, job_id, State.FAILED)
        [letter] = app.dead_letters.list()
        assert (letter.job_id, letter.error["status"]) == (job_id, 403)
        assert Producer(app).replay(job_id) == job_id
        assert wait_for(app, job_id, State.SUCCEEDED).attempts == 2
        assert app.dead_letters.list() == []

    def test_a_letter_out_of_date_is_removed_not_replayed(self, app, sandbox, running_worker):
        """A replay that succeeded left its letter (its process died before removing it), and
        the recording was stopped since. Replaying the letter again started a second
        recording. The job is no longer failed: nothing runs, and the letter goes."""
        sandbox.inject(Fault(status=400, times=1))
        job_id = Producer(app).enqueue(START_RECORDING, {**JOB, "jobId": "stale-1"})
        wait_for(app, job_id, State.FAILED)
        stale = app.dead_letters.get(job_id)
        Producer(app).replay(job_id)
        wait_for(app, job_id, State.SUCCEEDED)
        app.dead_letters.add(
            job_id, task=stale.task, job=stale.job, error=stale.error, attempts=stale.attempts
        )
        with pytest.raises(JobConflict, match="is succeeded since this letter was kept"):
            Producer(app).replay(job_id)
        assert app.dead_letters.get(job_id) is None
        assert len(sandbox.calls) == 2  # the failed start and its replay: no third
        assert app.store.get(job_id).state is State.SUCCEEDED

    def test_a_job_replayed_already_is_not_replayed_twice(self, app, sandbox):
        """Two replays at once both published the job (no worker runs here: the first one's
        job waits on the queue). The second is refused, and the letter stays until the job
        ends."""
        app.runner.refuse("twice-1", START_RECORDING.task_name, reason="x", message="y")
        app.dead_letters.add(
            "twice-1", task=START_RECORDING.task_name, job=JOB, error={"reason": "x"}, attempts=0
        )
        assert Producer(app).replay("twice-1") == "twice-1"
        app.dead_letters.add(
            "twice-1", task=START_RECORDING.task_name, job=JOB, error={"reason": "x"}, attempts=0
        )
        with pytest.raises(JobConflict, match="is queued: it is being replayed or run already"):
            Producer(app).replay("twice-1")
        assert app.redis.llen(app.settings.queue) == 1

    def test_a_letter_written_again_during_its_replay_is_kept(self, app):
        """The replay failed again at once, and its new letter replaced the old one before the
        first replay removed it: the new letter stays."""
        letters = app.dead_letters
        letters.add("again-1", task=None, job=JOB, error={"reason": "x"}, attempts=1)
        first = letters.get("again-1")
        time.sleep(0.01)
        letters.add("again-1", task=None, job=JOB, error={"reason": "y"}, attempts=2)
        assert letters.remove_if_unchanged(first) is False
        assert letters.get("again-1").error == {"reason": "y", "message": ""}

    def test_a_replay_on_the_default_broker_is_recorded_and_pushed_in_one_step(
        self, app, sandbox, running_worker
    ):
        """Its record and its message are one transaction on the state store's Redis: a
        producer killed after recording the job queued, before publishing it, left it queued
        with nothing on its way, and a replay of the letter was refused ("is queued"). Nothing
        is published after the record any more: the job runs."""
        app.runner.refuse("whole-1", START_RECORDING.task_name, reason="x", message="first")
        app.dead_letters.add(
            "whole-1", task=START_RECORDING.task_name, job=JOB, error={"reason": "x"}, attempts=0
        )

        class Killed(BaseException):
            """The producer's process, killed."""

        class KilledBeforePublishing:
            def publish(self, messages):
                raise Killed

        app.__dict__["task_publisher"] = KilledBeforePublishing()
        assert Producer(app).replay("whole-1") == "whole-1"
        assert wait_for(app, "whole-1", State.SUCCEEDED).attempts == 1
        assert app.dead_letters.get("whole-1") is None

    def test_a_replay_the_broker_refuses_leaves_the_job_failed_to_replay_again(self, app):
        """The job was recorded queued, then the publish failed: it stayed queued with nothing
        on its way. It is failed again as its letter says, and the letter stays."""
        app.runner.refuse("cut-1", START_RECORDING.task_name, reason="x", message="first")
        app.dead_letters.add(
            "cut-1",
            task=START_RECORDING.task_name,
            job=JOB,
            error={"reason": "x", "message": "first"},
            attempts=0,
        )
        broken = create_app(app.settings.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
        broken.producer_store = app.producer_store  # the state store is up; the broker is not
        with pytest.raises(BrokerUnavailable):
            Producer(broken).replay("cut-1")
        assert app.store.get("cut-1").state is State.FAILED
        assert app.dead_letters.get("cut-1") is not None

    def test_a_replay_the_broker_refuses_fails_the_job_even_from_a_letter_without_a_message(
        self, app
    ):
        """A letter whose error has a reason and no message made that path raise KeyError,
        leaving the job queued with nothing on its way."""
        app.runner.refuse("cut-2", START_RECORDING.task_name, reason="x", message="first")
        app.dead_letters.add(
            "cut-2", task=START_RECORDING.task_name, job=JOB, error={"reason": "x"}, attempts=0
        )
        broken = create_app(app.settings.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
        broken.producer_store = app.producer_store
        with pytest.raises(BrokerUnavailable):
            Producer(broken).replay("cut-2")
        assert app.store.get("cut-2").error["reason"] == "x"
        assert app.store.get("cut-2").state is State.FAILED

    def test_a_message_that_could_not_be_run_is_not_replayed_as_if_its_job_were_wrong(self, app):
        """Its letter keeps no job: the replay says so, not "roomId is required"."""
        app.runner.refuse(
            "junk-2", START_RECORDING.task_name, reason="malformed_message", message="no args"
        )
        with pytest.raises(InvalidJob, match=r"keeps no job to replay.*\(malformed_message\)"):
            Producer(app).replay("junk-2")
        assert app.dead_letters.get("junk-2") is not None

    def test_every_letter_is_listed_past_a_thousand(self, app):
        """`recq dead list` and `replay --all` stopped at 1,000 letters without a word."""
        letters = app.dead_letters
        pipe = app.redis.pipeline(transaction=False)
        for n in range(1_205):
            letter = {"id": f"many-{n}", "job": JOB, "error": {"reason": "x"}, "failedAt": n}
            pipe.hset(f"{app.settings.namespace}:dead", f"many-{n}", json.dumps(letter))
            pipe.zadd(f"{app.settings.namespace}:dead:index", {f"many-{n}": n})
        pipe.execute()
        listed = [letter.job_id for letter in letters.list()]
        assert len(listed) == 1_205
        assert listed[:2] == ["many-1204", "many-1203"]
        assert [letter.job_id for letter in letters.list(limit=3)] == [
            "many-1204",
            "many-1203",
            "many-1202",
        ]

    def test_a_letter_recq_did_not_write_is_shown_as_unreadable(self, app):
        """One bad letter stopped recq dead list, show and replay for every other letter."""
        app.redis.hset(f"{app.settings.namespace}:dead", "junk-1", "not json")
        app.redis.zadd(f"{app.settings.namespace}:dead:index", {"junk-1": 1})
        [letter] = app.dead_letters.list()
        assert (letter.job_id, letter.error["reason"]) == ("junk-1", "unreadable_letter")
        with pytest.raises(InvalidJob):
            Producer(app).replay("junk-1")

    def test_the_largest_valid_bulk_job_is_kept_whole(self, app):
        """A valid bulk job of 300 KB was kept as "(too large to keep)", and could not be
        replayed: the letter measured it otherwise than validation does."""
        job = {"roomId": "r", "participants": ["p" * 200 + str(i) for i in range(1400)]}
        app.dead_letters.add("big-1", task=None, job=job, error={"reason": "x"}, attempts=0)
        assert app.dead_letters.get("big-1").job == job


class TestRawArguments:
    def test_an_oversized_job_fails_as_too_large(self, app, sandbox, running_worker):
        """A job of 100 KB published raw is failed by size, without a call."""
        job = {"roomId": "big", "metadata": {"blob": "x" * 100_000}}
        app.send_task(START_RECORDING.task_name, kwargs={"job": job}, task_id="big-1")
        record = wait_for(app, "big-1", State.FAILED)
        assert record.error["violations"][0]["code"] == "too-large"
        assert sandbox.calls == []

    def test_a_positional_job_fails_naming_the_arguments(self, app, sandbox, running_worker):
        """A producer that sends the job positionally is told the task takes job=... only."""
        app.send_task(START_RECORDING.task_name, args=[JOB], task_id="pos-1")
        record = wait_for(app, "pos-1", State.FAILED)
        assert "exactly one keyword argument, job" in record.error["message"]
        assert sandbox.calls == []


DEEP = b"[" * 100_000 + b"]" * 100_000
TOO_DEEP = b'[[], {"job": {"roomId": "r", "metadata": {"a": ' + DEEP + b"}}}, {}]"
"""JSON nested deeper than Python's recursion limit: json.loads raises RecursionError."""


class TestRefusedMessages:
    @pytest.mark.parametrize(
        ("task", "body", "content_type", "reason"),
        [
            ("recq.nope", b'[[], {"job": {}}, {}]', "application/json", "unknown_task"),
            ("recq.start_recording", b"{not json", "application/json", "undecodable_message"),
            (
                "recq.start_recording",
                b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.",
                "application/x-python-serialize",
                "undecodable_message",
            ),
            ("recq.start_recording", b'"just a string"', "application/json", "malformed_message"),
            ("recq.start_recording", TOO_DEEP, "application/json", "undecodable_message"),
            # These failed in the pool's thread, where nothing acknowledged them: each held a
            # worker slot for good, unrecorded, and came back after a restart to do it again.
            ("recq.start_recording", b"[1, 2, 3]", "application/json", "malformed_message"),
            ("recq.start_recording", b"[[], [], {}]", "application/json", "malformed_message"),
            (
                "recq.start_recording",
                b'[[], {"job": {"roomId": "r"}}, 5]',
                "application/json",
                "malformed_message",
            ),
            (
                "recq.start_recording",
                b'[[], {"job": {"roomId": "r"}}, {"chain": 5}]',
                "application/json",
                "malformed_message",
            ),
        ],
        ids=[
            "unknown-task",
            "broken-json",
            "pickle",
            "not-a-call",
            "nested-too-deep",
            "args-not-a-list",
            "kwargs-not-an-object",
            "embed-not-an-object",
            "embed-chain-not-a-list",
        ],
    )
    def test_a_refused_message_is_recorded_and_the_worker_goes_on(
        self, app, sandbox, running_worker, redis_client, task, body, content_type, reason
    ):
        """The message is failed with a reason under its id; a good job after it still runs."""
        queue = app.settings.queue
        message = celery_message(task, "bad-1", queue=queue, body=body, content_type=content_type)
        redis_client.lpush(queue, message)
        record = wait_for(app, "bad-1", State.FAILED)
        assert record.error["reason"] == reason
        assert sandbox.calls == []
        good = Producer(app).enqueue(START_RECORDING, JOB)
        assert wait_for(app, good, State.SUCCEEDED).state is State.SUCCEEDED

    @pytest.mark.parametrize(
        ("spoil", "named"),
        [
            (
                lambda m: m.update(body='[[], {"job": {"roomId": "r"}}, {}]'),
                "body_encoding is 'base64' but the body is not",
            ),
            (lambda m: m["properties"].pop("delivery_info"), "delivery_info must name"),
            (lambda m: m["properties"].pop("delivery_tag"), "have no 'delivery_tag'"),
            (lambda m: m["properties"].update(body_encoding="gzip"), "'gzip' is not 'base64'"),
        ],
        ids=["base64-promised-raw-json-sent", "no-delivery-info", "no-delivery-tag", "gzip"],
    )
    def test_an_envelope_kombu_cannot_read_is_recorded_and_the_worker_goes_on(
        self, app, sandbox, running_worker, redis_client, spoil, named
    ):
        """A hand-built envelope kombu fails on as it delivers it (a Node producer that forgot
        to base64 the body it says is base64, say): the worker stopped with "Unrecoverable
        error", and so did the next one to take the message. It is failed with the problem
        named, under its id, and the worker goes on."""
        queue = app.settings.queue
        envelope = json.loads(celery_message("recq.start_recording", "env-1", queue=queue, job=JOB))
        spoil(envelope)
        redis_client.lpush(queue, json.dumps(envelope))
        record = wait_for(app, "env-1", State.FAILED)
        assert record.error["reason"] == "undecodable_message"
        assert named in record.error["message"]
        good = Producer(app).enqueue(START_RECORDING, JOB)
        assert wait_for(app, good, State.SUCCEEDED).state is State.SUCCEEDED
        assert sandbox.calls[0].body == {"roomId": "room-d"}  # only the good job's call

    @pytest.mark.parametrize(
        ("header", "named"),
        [("eta", "give the job a startAt"), ("expires", "give the job a startDeadline")],
    )
    def test_a_message_with_celery_s_eta_or_expires_is_refused_naming_the_job_field(
        self, app, sandbox, running_worker, redis_client, header, named
    ):
        """Celery held a message with an eta in the worker's memory (unrecorded, and run twice
        after the visibility timeout) and discarded one past its expires without a trace."""
        queue = app.settings.queue
        envelope = json.loads(celery_message("recq.start_recording", "eta-1", queue=queue, job=JOB))
        envelope["headers"][header] = epoch_iso(time.time() + (20 if header == "eta" else -20))
        redis_client.lpush(queue, json.dumps(envelope))
        record = wait_for(app, "eta-1", State.FAILED)
        assert record.error["reason"] == "malformed_message"
        assert named in record.error["message"]
        assert sandbox.calls == []

    def test_a_null_id_falls_back_to_the_correlation_id(
        self, app, sandbox, running_worker, redis_client, caplog
    ):
        """A null id ran as job "None", and every later such message was dropped as its
        duplicate. It runs under its correlation_id; without one, it is refused and logged."""
        queue = app.settings.queue
        for job_id, room in (("corr-1", "room-n1"), ("corr-2", "room-n2"), ("", "room-n3")):
            envelope = json.loads(
                celery_message("recq.start_recording", "x", queue=queue, job={"roomId": room})
            )
            envelope["headers"]["id"] = None
            envelope["properties"]["correlation_id"] = job_id or None
            redis_client.lpush(queue, json.dumps(envelope))
        assert wait_for(app, "corr-1", State.SUCCEEDED).state is State.SUCCEEDED
        assert wait_for(app, "corr-2", State.SUCCEEDED).state is State.SUCCEEDED
        good = Producer(app).enqueue(START_RECORDING, JOB)
        assert wait_for(app, good, State.SUCCEEDED).state is State.SUCCEEDED
        assert app.store.get("None") is None
        assert "refused a message without an id (malformed_message)" in caplog.text
        assert "room-n3" not in {call.body["roomId"] for call in sandbox.calls}

    def test_json_with_a_utf8_charset_is_read_as_json(
        self, app, sandbox, running_worker, redis_client
    ):
        """'application/json; charset=utf-8', as HTTP-minded clients write it, was refused as
        undecodable."""
        queue = app.settings.queue
        envelope = json.loads(celery_message("recq.start_recording", "cs-1", queue=queue, job=JOB))
        envelope["content-type"] = "application/json; charset=UTF-8"
        redis_client.lpush(queue, json.dumps(envelope))
        assert wait_for(app, "cs-1", State.SUCCEEDED).state is State.SUCCEEDED

    def test_a_message_without_a_content_type_is_refused_naming_it(
        self, app, sandbox, running_worker, redis_client
    ):
        """It failed with "too many values to unpack", which did not say what was wrong."""
        queue = app.settings.queue
        envelope = json.loads(celery_message("recq.start_recording", "ct-1", queue=queue, job=JOB))
        del envelope["content-type"]
        redis_client.lpush(queue, json.dumps(envelope))
        record = wait_for(app, "ct-1", State.FAILED)
        assert record.error["reason"] == "undecodable_message"
        assert "names no content type: it must be application/json" in record.error["message"]
        assert sandbox.calls == []

    def test_a_message_that_is_not_json_is_logged_and_the_worker_goes_on(
        self, app, running_worker, redis_client, caplog
    ):
        """It names no job to record: logged by its size (not its content), and dropped. It
        stopped the worker with a JSONDecodeError."""
        queue = app.settings.queue
        redis_client.lpush(queue, b"hello world")
        good = Producer(app).enqueue(START_RECORDING, JOB)
        assert wait_for(app, good, State.SUCCEEDED).state is State.SUCCEEDED
        assert "dropped a message of 11 bytes" in caplog.text
        assert "hello world" not in caplog.text

    def test_a_message_nested_too_deep_to_read_is_logged_and_the_worker_goes_on(
        self, app, running_worker, redis_client, caplog
    ):
        """Reading it raised RecursionError, which stopped the worker like a bad envelope."""
        queue = app.settings.queue
        redis_client.lpush(queue, DEEP)
        good = Producer(app).enqueue(START_RECORDING, JOB)
        assert wait_for(app, good, State.SUCCEEDED).state is State.SUCCEEDED
        assert f"dropped a message of {len(DEEP)} bytes" in caplog.text

    def test_a_message_without_headers_is_recorded_under_its_correlation_id(
        self, app, running_worker, redis_client
    ):
        """Celery's task id is in the headers and, for a reply, the correlation id: a message
        whose headers were left out is failed under the latter (it was dropped unrecorded)."""
        queue = app.settings.queue
        envelope = json.loads(celery_message("recq.start_recording", "hdr-1", queue=queue, job=JOB))
        envelope["headers"] = {}
        redis_client.lpush(queue, json.dumps(envelope))
        record = wait_for(app, "hdr-1", State.FAILED)
        assert record.error["reason"] == "malformed_message"

    @pytest.mark.parametrize(
        ("task", "content_type", "encode"),
        [
            ("recq.start_recording", "text/plain", base64.b64encode),
            ("recq.start_recording", "application/x-python-serialize", lambda body: body),
            ("recq.nope", "application/json", lambda body: body),
        ],
        ids=["base64-text", "pickle-type", "unknown-task"],
    )
    def test_a_refused_message_s_body_is_not_in_the_log(
        self, app, settings, running_worker, redis_client, caplog, task, content_type, encode
    ):
        """Celery's own lines about a refused message print its body and headers, at ERROR:
        base64 hid a signature from redaction there. recq's formatters leave both out."""
        signed = "https://b/rec.mp4\n?X-Amz-Signature=SIGSECRET0123456789"
        body = encode(
            json.dumps([[], {"job": {"roomId": "r", "preSignedUrl": signed}}, {}]).encode()
        )
        queue = app.settings.queue
        message = celery_message(task, "log-1", queue=queue, body=body, content_type=content_type)
        redis_client.lpush(queue, message)
        wait_for(app, "log-1", State.FAILED)
        for formatter in (TextFormatter(settings), JsonFormatter(settings)):
            logged = "\n".join(formatter.format(record) for record in caplog.records)
            assert "SIGSECRET" not in logged
            assert body.decode("latin-1")[:24] not in logged

    def test_an_undecodable_body_is_not_logged(self, app, running_worker, redis_client, caplog):
        """Celery logs an undecodable body whole; base64 hides a signature from redaction, so
        only its size is logged."""
        job = b'{"job": {"roomId": "r", "preSignedUrl": "https://b/r.mp4?X-Amz-Signature=S"}}'
        body = base64.b64encode(b"[[], " + job + b", {}]")
        queue = app.settings.queue
        message = celery_message("recq.start_recording", "b64-1", queue=queue, body=body)
        redis_client.lpush(queue, message)
        wait_for(app, "b64-1", State.FAILED)
        assert "cannot decode a message (application/json, " in caplog.text
        assert body.decode()[:40] not in caplog.text
