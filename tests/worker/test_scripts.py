"""Script calls sharing one round trip: each answered in order, each failing on its own, and a
script Redis forgot loaded again; and the round trip it saves a job's end (its state and event)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from worker.errors import ErrorInfo
from worker.event_log import EventLog
from worker.events import Events, RedisExchangeSink
from worker.jobs import START_RECORDING, Job
from worker.redis_server import throwaway_redis
from worker.reporter import Report, Reporter
from worker.scripts import ScriptCall, run_together
from worker.state import JobStore, State

COUNT = "return redis.call('INCR', KEYS[1])"
FAIL = "return redis.error_reply('no ' .. ARGV[1])"


class CountingConnection(redis.Connection):
    """A connection that counts what it sends: one send is one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted() -> type[CountingConnection]:
    """A connection class of this test's own (its count starts at zero)."""
    return type("Counted", (CountingConnection,), {"sends": 0})


@pytest.fixture
def client(redis_url, counted) -> Iterator[redis.Redis]:
    """A client of the shared Redis whose round trips are counted by ``counted``."""
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=counted)
    with redis.Redis(connection_pool=pool) as counting:
        yield counting


def call(client: redis.Redis, source: str, key: str, *args: str) -> ScriptCall:
    return ScriptCall(client, client.register_script(source), [key], list(args))


class TestRunTogether:
    def test_each_call_is_answered_in_order_in_one_round_trip(self, client, counted, namespace):
        """Three calls, one send; each answer in the order of the calls."""
        key = f"{namespace}:n"
        calls = [call(client, COUNT, key) for _ in range(3)]
        client.register_script(COUNT)(keys=[key])  # the script known, the count at 1
        counted.sends = 0
        assert run_together(calls) == [2, 3, 4]
        assert counted.sends == 1

    def test_a_failing_call_gets_its_error_and_the_others_still_run(self, client, namespace):
        """Not a transaction: a call's error is its answer alone."""
        key = f"{namespace}:n"
        first, failed, last = run_together(
            [call(client, COUNT, key), call(client, FAIL, key, "luck"), call(client, COUNT, key)]
        )
        assert (first, last) == (1, 2)
        assert isinstance(failed, redis.ResponseError)
        assert "no luck" in str(failed)

    def test_scripts_redis_forgot_are_loaded_and_only_their_calls_made_again(self):
        """After SCRIPT FLUSH (or a restart) every call is still made, and made once."""
        with throwaway_redis() as server, redis.Redis.from_url(server.url) as fresh:
            known = call(fresh, COUNT, "known")
            known.run()
            fresh.script_flush()
            calls = [call(fresh, COUNT, "a"), call(fresh, COUNT, "b"), call(fresh, COUNT, "a")]
            assert run_together(calls) == [1, 1, 2]
            assert fresh.mget("a", "b") == [b"2", b"1"]

    def test_calls_on_two_clients_cannot_share_a_round_trip(self, client, redis_url):
        with (
            redis.Redis.from_url(redis_url) as other,
            pytest.raises(ValueError, match="share one client"),
        ):
            run_together([call(client, COUNT, "x"), call(other, COUNT, "x")])

    def test_no_calls_make_no_round_trip(self, counted):
        assert run_together([]) == []
        assert counted.sends == 0


@pytest.fixture
def reporter(client, namespace) -> Reporter:
    """Reporting as a worker does on its default settings: one Redis for state and events."""
    store = JobStore(client, namespace=namespace)
    log = EventLog(client, namespace=namespace)
    exchange = kombu.Exchange(f"{namespace}-events", type="topic")  # bindings of its own
    events = Events([RedisExchangeSink(client, exchange, log=log)])
    dead_letters: Any = None  # never reached: no dead letter is kept here
    return Reporter(store, events, dead_letters)


JOB = Job("j1", START_RECORDING, {"roomId": "r1"})


class TestAJobsEnd:
    def test_its_state_and_its_event_take_one_round_trip(
        self, reporter, client, counted, namespace
    ):
        """The final state write and the event's script go to Redis together."""
        earlier = Job("j0", START_RECORDING, {"roomId": "r0"})
        reporter.record_and_announce(earlier, "started", Report(State.SUCCEEDED))  # scripts known
        counted.sends = 0
        reporter.record_and_announce(JOB, "started", Report(State.SUCCEEDED, attempt=1))
        assert counted.sends == 1
        assert reporter.store.get("j1").state is State.SUCCEEDED
        logged = EventLog(client, namespace=namespace).read()
        assert [(e["subject"], e["data"]["state"]) for e in logged] == [
            ("j0", "succeeded"),
            ("j1", "succeeded"),
        ]

    def test_an_event_that_cannot_be_published_is_logged_and_the_state_kept(
        self, reporter, client, namespace, caplog
    ):
        """A broken exchange (its bindings key of the wrong type) fails the event alone."""
        client.set(f"_kombu.binding.{namespace}-events", "not a set")
        with caplog.at_level(logging.ERROR):
            reporter.record_and_announce(JOB, "started", Report(State.SUCCEEDED, attempt=1))
        assert reporter.store.get("j1").state is State.SUCCEEDED
        assert "could not publish recording.started for job j1" in caplog.text

    def test_a_state_that_cannot_be_written_raises(self, reporter, client):
        """The write's failure is the caller's, as the write alone would be."""
        client.set(reporter.store.key("j1"), "not a hash")
        error = ErrorInfo("invalid_job", "bad")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            reporter.record_and_announce(JOB, "failed", Report(State.FAILED, error=error))

    def test_sinks_on_other_clients_still_get_the_event(self, reporter, redis_url, namespace):
        """An event log on another client is published to on its own, after the write."""
        with redis.Redis.from_url(redis_url) as other:
            log = EventLog(other, namespace=f"{namespace}-other")
            store = reporter.store
            Reporter(store, Events([log]), None).record_and_announce(  # type: ignore[arg-type]
                JOB, "started", Report(State.SUCCEEDED, attempt=1)
            )
            assert [e["type"] for e in log.read()] == ["recording.started"]
        assert store.get("j1").state is State.SUCCEEDED
