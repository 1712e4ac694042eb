"""A `recq worker` as an operator runs it: JSON logs at DEBUG, metrics over HTTP, probes.

Each test starts a real worker process on this test's Redis namespace and the sandbox.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.sandbox import DEFAULT_SECRET, Fault
from worker.state import State
from worker.testing import Workers, wait_for_state, worker_env

pytestmark = pytest.mark.integration
SIGNATURE = "X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f0"
PRESIGNED = f"https://bucket.example.com/hook?{SIGNATURE}&X-Amz-Credential=AKIAEXAMPLE"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def heartbeat(tmp_path) -> Path:
    return tmp_path / "recq.heartbeat"


@pytest.fixture
def workers(settings, heartbeat) -> Iterator[Workers]:
    env = worker_env(
        settings,
        RECQ_LOG_FORMAT="json",
        RECQ_HEARTBEAT_FILE=str(heartbeat),
        RECQ_HEARTBEAT_INTERVAL="0.2",
    )
    with Workers(env) as pool:
        yield pool


def _wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "health", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class TestJsonLogs:
    def test_a_job_run_at_debug_logs_json_lines_with_its_id_and_no_secret(
        self, app, sandbox, workers, heartbeat, tmp_path
    ):
        """Every line is a JSON object; lines about the job name it; no secret at any level."""
        log = tmp_path / "worker.log"
        process = workers.start(concurrency=2, args=["--loglevel", "DEBUG"], log=log)
        _wait_for(heartbeat)
        job = {"roomId": "logged", "webhookUrl": PRESIGNED, "metadata": {"hook": PRESIGNED}}
        job_id = Producer(app).enqueue(START_RECORDING, job)
        assert wait_for_state(app.store, job_id, State.SUCCEEDED).state is State.SUCCEEDED
        workers.stop_all()
        assert process.returncode == 0
        text = log.read_text()
        lines = [json.loads(line) for line in text.splitlines()]  # every line, to the last
        assert "worker: Warm shutdown (MainProcess)" in [line["message"] for line in lines]
        about_job = [line for line in lines if job_id in line["message"]]
        assert about_job
        assert all(line["job_id"] == job_id for line in about_job), [
            line for line in about_job if line["job_id"] != job_id
        ]
        assert any(
            line["level"] == "DEBUG" and "POST /v2/recordings/start: 200" in line["message"]
            for line in lines
            if line["job_id"] == job_id
        )
        # "eyJ" starts every JWT: no token, ours or echoed back, is in the log.
        for secret in (DEFAULT_SECRET, "eyJ", SIGNATURE, "AKIAEXAMPLE"):
            assert secret not in text
        # At DEBUG, Celery's own two lines per task are there, naming the job.
        assert any("received" in line["message"] for line in about_job)
        assert any("succeeded in" in line["message"] for line in about_job)

    def test_at_the_default_level_a_success_writes_no_line_and_a_failure_one(
        self, app, sandbox, workers, heartbeat, tmp_path
    ):
        """At INFO (the default), Celery's per-task lines are left out; recq's warning for a
        failed job stays, with its id."""
        log = tmp_path / "worker.log"
        workers.start(concurrency=2, log=log)
        _wait_for(heartbeat)
        producer = Producer(app)
        done = producer.enqueue(START_RECORDING, {"roomId": "quiet"})
        sandbox.inject(Fault(status=400, room="refused", body='{"message": "no such room"}'))
        failed = producer.enqueue(START_RECORDING, {"roomId": "refused"})
        assert wait_for_state(app.store, done, State.SUCCEEDED).state is State.SUCCEEDED
        assert wait_for_state(app.store, failed, State.FAILED).state is State.FAILED
        workers.stop_all()
        printed = [line for line in log.read_text().splitlines() if line.startswith("{")]
        lines = [json.loads(line) for line in printed]
        assert any(line["message"].startswith("celery@") for line in lines)  # the worker spoke
        assert [line for line in lines if line["job_id"] == done] == []
        about_failure = [line for line in lines if line["job_id"] == failed]
        assert [line["level"] for line in about_failure] == ["WARNING"]

    def test_a_worker_stopped_with_ctrl_c_writes_only_json_lines(
        self, app, workers, heartbeat, tmp_path
    ):
        """Celery's notices on Ctrl-C (SIGINT), which it prints outside logging, are logged."""
        log = tmp_path / "worker.log"
        process = workers.start(concurrency=2, log=log)
        _wait_for(heartbeat)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        messages = [line["message"] for line in lines]
        assert "worker: Warm shutdown (MainProcess)" in messages
        assert any(message.startswith("worker: Hitting Ctrl+C again") for message in messages)


class TestMetricsEndpoint:
    def test_the_worker_serves_prometheus_metrics_on_its_port(self, app, workers, heartbeat):
        """RECQ_METRICS_PORT serves /metrics with the job counted, all names prefixed recq_."""
        port = _free_port()
        workers.env["RECQ_METRICS_PORT"] = str(port)
        workers.start(concurrency=2)
        _wait_for(heartbeat)
        job_id = Producer(app).enqueue(START_RECORDING, {"roomId": "scraped"})
        wait_for_state(app.store, job_id, State.SUCCEEDED)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
        assert 'recq_jobs_total{kind="start-recording",outcome="succeeded"} 1.0' in body
        assert "recq_videosdk_request_duration_seconds_bucket" in body
        assert "recq_pending_jobs 0.0" in body
        assert "recq_scheduled_jobs 0.0" in body
        names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line[:1] != "#"}
        assert all(
            name.startswith("recq_")
            for name in names
            if not name.startswith(("python_", "process_"))
        )

    def test_a_metrics_address_keeps_the_port_off_every_other_address(self, workers, heartbeat):
        """RECQ_METRICS_ADDRESS=127.0.0.1: served there, refused on 127.0.0.2 (another address
        of this host's loopback), which the default (every interface) answers."""
        port = _free_port()
        workers.env.update(RECQ_METRICS_PORT=str(port), RECQ_METRICS_ADDRESS="127.0.0.1")
        workers.start(concurrency=2)
        _wait_for(heartbeat)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.URLError, match="Connection refused"):
            urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5)


class TestProbes:
    def test_liveness_follows_the_heartbeat_and_fails_when_the_worker_is_stuck(
        self, workers, heartbeat
    ):
        """Alive while consuming; a stopped (stuck) process fails the probe; alive again after."""
        env = workers.env
        assert _health(env, "liveness").returncode == 1
        process = workers.start(concurrency=2)
        _wait_for(heartbeat)
        alive = _health(env, "liveness", "--max-age", "2")
        assert alive.returncode == 0, alive.stderr
        process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(2.5)
            stuck = _health(env, "liveness", "--max-age", "2")
        finally:
            process.send_signal(signal.SIGCONT)
        assert stuck.returncode == 1
        assert "stuck" in stuck.stderr
        time.sleep(1)
        assert _health(env, "liveness", "--max-age", "2").returncode == 0

    def test_readiness_needs_the_broker_and_redis(self, workers):
        """Ready with both answering; not ready, naming Redis, when Redis does not answer."""
        env = workers.env
        assert _health(env, "readiness").returncode == 0
        dead = _health(
            {**env, "RECQ_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"}, "readiness"
        )
        assert dead.returncode == 1
        assert "Redis redis://127.0.0.1" in dead.stderr

    def test_the_heartbeat_file_is_removed_when_the_worker_stops(self, workers, heartbeat):
        """After a clean shutdown, liveness fails at once instead of trusting an old beat."""
        workers.start(concurrency=2)
        _wait_for(heartbeat)
        workers.stop_all()
        assert not heartbeat.exists()
