"""The health probes: liveness from the heartbeat file, readiness from the broker and Redis."""

from __future__ import annotations

import socket

import pytest

from worker.errors import SettingsError
from worker.health import _beat, beat, default_max_age, liveness, readiness, require_writable


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestLiveness:
    def test_a_fresh_heartbeat_is_alive(self, tmp_path):
        """A beat younger than the maximum age passes."""
        path = tmp_path / "hb"
        beat(path, clock=lambda: 1000.0)
        verdict = liveness(path, max_age=60, clock=lambda: 1030.0)
        assert verdict.healthy
        assert "30.0 s old" in verdict.message

    def test_an_old_heartbeat_means_a_stuck_worker(self, tmp_path):
        """A beat older than the maximum age fails, saying how old it is."""
        path = tmp_path / "hb"
        beat(path, clock=lambda: 1000.0)
        verdict = liveness(path, max_age=60, clock=lambda: 1061.0)
        assert not verdict.healthy
        assert "61 s old (more than 60 s)" in verdict.message

    def test_a_longer_heartbeat_interval_raises_the_default_limit(self):
        """At the default 10 s interval the limit is 60 s; at 75 s it is six beats, or a
        healthy worker would fail between two of them."""
        assert default_max_age(10) == 60
        assert default_max_age(75) == 450

    def test_no_heartbeat_means_no_consumer(self, tmp_path):
        """A missing file fails, naming the path."""
        verdict = liveness(tmp_path / "missing")
        assert not verdict.healthy
        assert str(tmp_path / "missing") in verdict.message

    def test_a_garbled_heartbeat_fails_instead_of_crashing(self, tmp_path):
        """A file that holds no time is unhealthy, with the reason."""
        path = tmp_path / "hb"
        path.write_text("not a time")
        assert not liveness(path).healthy

    def test_a_heartbeat_that_cannot_be_written_is_named_before_the_worker_starts(self, tmp_path):
        """The check the worker runs at start names the variable; it leaves no file behind."""
        (tmp_path / "plain-file").write_text("")
        with pytest.raises(SettingsError, match=r"RECQ_HEARTBEAT_FILE=.* cannot be written"):
            require_writable(tmp_path / "plain-file" / "hb")
        require_writable(tmp_path / "hb")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-file"]

    def test_a_beat_the_consumer_cannot_write_is_logged_not_raised(self, tmp_path, caplog):
        """Raised in the consumer's loop, it would restart the consumer; the age tells instead."""
        (tmp_path / "plain-file").write_text("")
        _beat(tmp_path / "plain-file" / "hb")
        assert "cannot write the heartbeat" in caplog.text


class TestReadiness:
    def test_ready_when_the_broker_and_redis_answer(self, settings):
        """The test's Redis is both broker and store: ready."""
        verdict = readiness(settings)
        assert verdict.healthy, verdict.message

    def test_not_ready_names_what_does_not_answer(self, settings):
        """A Redis store nobody listens on is named; the password in its URL is not shown."""
        store = f"redis://:hunter2@127.0.0.1:{_dead_port()}/0"
        verdict = readiness(settings.replace(redis_url=store), timeout=1)
        assert not verdict.healthy
        assert "Redis redis://:**@127.0.0.1" in verdict.message
        assert "hunter2" not in verdict.message
        assert "the broker" not in verdict.message

    @pytest.mark.timeout(60)
    def test_a_redis_broker_that_never_answers_is_not_ready_within_the_timeout(
        self, settings, silent_port
    ):
        """A Redis broker that accepts the connection and stays silent: not ready, named (kombu
        would otherwise wait on its read for ever)."""
        broker = f"redis://127.0.0.1:{silent_port}/0"
        verdict = readiness(settings.replace(broker_url=broker), timeout=0.5)
        assert not verdict.healthy
        assert f"the broker {broker} does not answer" in verdict.message

    @pytest.mark.integration
    def test_ready_on_rabbitmq(self, settings, amqp_url):
        """A RabbitMQ broker that answers counts as ready."""
        assert readiness(settings.replace(broker_url=amqp_url)).healthy
