"""Events: CloudEvents that match the published schema, the Redis log, fan-out and the exchange."""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

import kombu
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

import schemas
from worker.errors import ErrorInfo, Target, Violation
from worker.event_log import EventLog
from worker.events import (
    CONTENT_TYPE,
    EXCHANGE,
    Event,
    Events,
    ExchangeSink,
    RedisExchangeSink,
    build_event,
)
from worker.state import State

ROOM = Target(room_id="r1")
TRACK = Target(room_id="r1", participant_id="alice", kind="audio")
UNAVAILABLE = ErrorInfo(reason="upstream_unavailable", message="VideoSDK answered 503", status=503)
INVALID = ErrorInfo(
    reason="invalid_job",
    message="invalid job: config.layout.gridSize: must be at most 4 (got 5)",
    violations=(Violation("config.layout.gridSize", "maximum", "must be at most 4 (got 5)"),),
)


def validator() -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resources(
        (uri, DRAFT202012.create_resource(schema)) for uri, schema in schemas.all_schemas().items()
    )
    return Draft202012Validator(schemas.load("events/event.v1.json"), registry=registry)


def event(event_type: str = "recording.started", job_id: str = "j1", **data: Any) -> Event:
    fields: dict[str, Any] = {
        "kind": "start-recording",
        "state": State.SUCCEEDED,
        "target": ROOM,
        "attempt": 1,
        "metadata": {"meeting": "board"},
    }
    return build_event(event_type, job_id=job_id, **{**fields, **data})


class Sink:
    """Keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


class BrokenSink:
    """Fails on every event, like a broker that went away."""

    def publish(self, event: Event) -> None:
        raise ConnectionError("the broker is gone")


class TestBuildEvent:
    @pytest.mark.parametrize(
        ("event_type", "data"),
        [
            ("recording.started", {}),
            ("recording.started", {"attempt": 2, "reconciled": True}),
            ("recording.retrying", {"state": State.RETRYING, "error": UNAVAILABLE}),
            ("recording.failed", {"state": State.FAILED, "attempt": 0, "error": INVALID}),
            ("track_recording.failed", {"state": State.FAILED, "target": TRACK, "error": INVALID}),
        ],
    )
    def test_events_match_the_published_schema(self, event_type, data):
        """Started, retrying and failed events (violations included) validate against event.v1."""
        built = event(event_type, **data)
        errors = [error.message for error in validator().iter_errors(built)]
        assert errors == []

    def test_a_failed_event_without_an_error_does_not_match(self):
        """The schema check has teeth: a failure must say why."""
        assert list(validator().iter_errors(event("recording.failed", state=State.FAILED)))

    def test_the_type_is_the_routing_key_and_the_subject_the_job(self):
        """type is what subscribers bind on; subject and data.jobId name the job."""
        built = event("track_recording.failed", job_id="j9", state=State.FAILED, error=INVALID)
        assert built["type"] == "track_recording.failed"
        assert built["subject"] == built["data"]["jobId"] == "j9"
        assert built["data"]["error"]["violations"] == [
            {
                "field": "config.layout.gridSize",
                "code": "maximum",
                "message": "must be at most 4 (got 5)",
            }
        ]

    def test_each_event_has_its_own_id(self):
        """Two events about the same job are told apart by their ids."""
        assert event()["id"] != event()["id"]


class TestEventLog:
    def test_events_are_read_back_in_publishing_order(self, redis_client, namespace):
        """The log returns every event, oldest first, as published."""
        log = EventLog(redis_client, namespace=namespace)
        published = [event(job_id=f"j{n}") for n in range(3)]
        for each in published:
            log.publish(each)
        assert list(log.read()) == published

    def test_follow_yields_an_event_published_after_the_read_started(self, redis_client, namespace):
        """A follower sees the old events, then one published while it waits."""
        log = EventLog(redis_client, namespace=namespace)
        first, later = event(job_id="first"), event(job_id="later")
        log.publish(first)
        seen: queue.Queue[Event] = queue.Queue()

        def follow() -> None:
            for each in log.read(follow=True, block_ms=100):
                seen.put(each)
                if each["id"] == later["id"]:
                    break

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert seen.get(timeout=5) == first  # the follower is reading now
        log.publish(later)
        assert seen.get(timeout=5) == later
        follower.join(timeout=5)
        assert not follower.is_alive()


class TestEvents:
    def test_every_sink_receives_every_event(self):
        """Each event goes to each sink, in order."""
        sinks = [Sink(), Sink()]
        published = [event(job_id="a"), event(job_id="b")]
        for each in published:
            Events(sinks).publish(each)
        assert [s.events for s in sinks] == [published, published]

    def test_a_failing_sink_neither_stops_the_others_nor_raises(self, caplog):
        """A broken sink is logged; the sinks after it still get the event."""
        before, after = Sink(), Sink()
        built = event()
        Events([before, BrokenSink(), after]).publish(built)
        assert before.events == after.events == [built]
        assert "could not publish recording.started for job j1 to BrokenSink" in caplog.text


@pytest.fixture
def track_queue(app, namespace):
    """A queue of this test's own, bound to track_recording.* on the recq.events exchange, and
    deleted afterwards (on Redis, leaving is not enough to unbind it)."""
    bound = kombu.Queue(
        f"{namespace}-track-events", EXCHANGE, routing_key="track_recording.*", auto_delete=True
    )
    with app.connection_for_write() as connection:
        simple = connection.SimpleQueue(bound)
        yield simple
        simple.queue.delete()
        simple.close()


class TestExchangeSink:
    def test_subscribers_receive_only_the_types_they_bound(self, app, track_queue):
        """A track_recording.* queue gets track events as CloudEvents, and no room events."""
        sink = ExchangeSink(app.producer_or_acquire)
        track_started = event("track_recording.started", target=TRACK)
        track_failed = event(
            "track_recording.failed", state=State.FAILED, target=TRACK, error=INVALID
        )
        for each in (event("recording.started"), track_started, event("recording.failed")):
            sink.publish(each)
        sink.publish(track_failed)
        received = []
        for _ in range(2):
            message = track_queue.get(timeout=10)
            message.ack()
            assert message.content_type == CONTENT_TYPE
            received.append(json.loads(message.body))
        assert received == [track_started, track_failed]
        with pytest.raises(track_queue.Empty):
            track_queue.get(timeout=0.5)


BINDINGS = (
    "recording.*",
    "*.failed",
    "#",
    "recording.#",
    "track_recording.started",
    "*.*",
    "batch.completed.#",
    "no.such",
)
TYPES = (
    "recording.started",
    "recording.failed",
    "track_recording.started",
    "track_recording.retrying",
    "batch.completed",
    "recording.stop_scheduled",
)


@pytest.fixture
def own_exchange(namespace) -> kombu.Exchange:
    """A topic exchange of this test's own, so no other test's bindings receive its events."""
    return kombu.Exchange(f"{namespace}-events", type="topic", durable=True)


def bind(app, exchange: kombu.Exchange, prefix: str) -> list[str]:
    """One queue per binding key in BINDINGS, declared and bound with kombu as a subscriber's."""
    names = [f"{prefix}-{n}" for n in range(len(BINDINGS))]
    with app.connection_for_write() as connection:
        channel = connection.channel()
        for name, key in zip(names, BINDINGS, strict=True):
            kombu.Queue(name, exchange, routing_key=key)(channel).declare()
    return names


def routed(app, name: str) -> list[str]:
    """The routing keys of the messages in a queue's list, oldest first; the list emptied."""
    raw = app.broker_redis.lrange(name, 0, -1)
    app.broker_redis.delete(name)
    return [json.loads(m)["properties"]["delivery_info"]["routing_key"] for m in reversed(raw)]


def drain(simple: Any) -> list[kombu.Message]:
    messages = []
    while True:
        try:
            message = simple.get(timeout=0.2)
        except simple.Empty:
            return messages
        message.ack()
        messages.append(message)


class TestRedisExchangeSink:
    """The one-script publisher a Redis broker uses delivers exactly what kombu would."""

    def test_every_binding_receives_what_kombu_s_own_publisher_gives_it(
        self, app, own_exchange, namespace
    ):
        """Same bindings, same events: kombu's publisher and the script fill the queues alike."""
        received: dict[str, list[list[str]]] = {}
        sinks = {
            "kombu": ExchangeSink(app.producer_or_acquire, own_exchange),
            "script": RedisExchangeSink(app.broker_redis, own_exchange),
        }
        for name, sink in sinks.items():
            queues = bind(app, own_exchange, f"{namespace}-{name}")
            for event_type in TYPES:
                sink.publish(event(event_type))
            received[name] = [routed(app, queue) for queue in queues]
        assert received["script"] == received["kombu"]
        by_binding = dict(zip(BINDINGS, received["script"], strict=True))
        assert by_binding["recording.*"] == [
            "recording.started",
            "recording.failed",
            "recording.stop_scheduled",
        ]
        assert by_binding["*.failed"] == ["recording.failed"]
        assert by_binding["#"] == list(TYPES)
        assert by_binding["no.such"] == []

    def test_a_subscriber_reads_the_event_as_kombu_would_have_sent_it(
        self, app, own_exchange, namespace
    ):
        """Content type, encoding, body and routing key: a kombu consumer sees no difference."""
        [simple] = [
            app.connection_for_write().SimpleQueue(
                kombu.Queue(f"{namespace}-one", own_exchange, routing_key="recording.*")
            )
        ]
        sent = event("recording.started")
        RedisExchangeSink(app.broker_redis, own_exchange).publish(sent)
        message = simple.get(timeout=5)
        message.ack()
        assert message.content_type == CONTENT_TYPE
        assert message.content_encoding == "utf-8"
        assert json.loads(message.body) == sent
        assert message.delivery_info["exchange"] == own_exchange.name
        assert message.properties["delivery_mode"] == 2
        simple.queue.delete()
        simple.close()

    def test_a_queue_bound_twice_receives_one_copy(self, app, own_exchange, namespace):
        """A queue bound with recording.* and # gets each event once, as with kombu."""
        name = f"{namespace}-twice"
        connection = app.connection_for_write()
        simple = connection.SimpleQueue(kombu.Queue(name, own_exchange, routing_key="#"))
        kombu.Queue(name, own_exchange, routing_key="recording.*")(connection.channel()).declare()
        RedisExchangeSink(app.broker_redis, own_exchange).publish(event("recording.started"))
        assert len(drain(simple)) == 1
        simple.queue.delete()
        simple.close()

    def test_with_the_log_the_event_is_also_in_the_event_log(self, app, own_exchange, namespace):
        """On one Redis, one call logs the event for `recq events` and routes it."""
        log = EventLog(app.broker_redis, namespace=namespace)
        simple = app.connection_for_write().SimpleQueue(
            kombu.Queue(f"{namespace}-logged", own_exchange, routing_key="#")
        )
        sent = event("recording.failed", state=State.FAILED, error=INVALID)
        RedisExchangeSink(app.broker_redis, own_exchange, log=log).publish(sent)
        assert list(log.read()) == [sent]
        assert [json.loads(m.body) for m in drain(simple)] == [sent]
        simple.queue.delete()
        simple.close()

    def test_an_event_no_queue_is_bound_for_is_only_logged(self, app, own_exchange, namespace):
        log = EventLog(app.broker_redis, namespace=namespace)
        RedisExchangeSink(app.broker_redis, own_exchange, log=log).publish(event())
        assert [e["type"] for e in log.read()] == ["recording.started"]

    def test_the_worker_s_publisher_is_the_script_on_a_redis_broker(self, app):
        """The default settings (one Redis for broker and state) take the one-call path, on
        the state store's client, so a job's end and its event can share a round trip."""
        [sink] = app.publisher._sinks
        assert isinstance(sink, RedisExchangeSink)
        assert sink.client is app.store.write_call("j", State.SUCCEEDED).client
