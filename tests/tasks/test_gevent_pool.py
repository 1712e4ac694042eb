"""The gevent pool: `recq worker --pool gevent` runs jobs on green threads, each job once.

gevent is opt-in (the default is the threads pool, docs/performance.md). These tests run real
`recq worker` processes on it against the sandbox and a real Redis.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from worker.celery_app import create_app
from worker.entry import requested_pool
from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.state import State
from worker.testing import Workers, worker_env

pytestmark = pytest.mark.integration

START = START_RECORDING.endpoint


@pytest.mark.parametrize(
    ("args", "pool"),
    [
        ([], None),
        (["--pool", "gevent"], "gevent"),
        (["-P", "gevent"], "gevent"),
        (["-Pgevent"], "gevent"),
        (["--pool=gevent"], "gevent"),
        (["--pool", "threads", "--concurrency", "8", "-P", "gevent"], "gevent"),
        (["-P", "gevent", "--pool", "threads"], "threads"),
    ],
)
def test_the_pool_asked_for_is_the_last_one_given(args, pool):
    """As for Celery's options, the last -P/--pool wins (recq's defaults come first)."""
    assert requested_pool(args) == pool


def test_a_gevent_worker_runs_every_job_once_with_its_green_threads_at_once(
    settings, sandbox, tmp_path
):
    """24 green threads call VideoSDK side by side (the process is patched: a blocking call
    would run them one after another), every job succeeds and starts its room once, and every
    acknowledgement goes through (kombu's 10 broker connections would refuse the 11th)."""
    sandbox.latency = 0.5
    app = create_app(settings)
    workers = Workers(worker_env(settings))
    log = tmp_path / "worker.log"
    rooms = [f"green-{n}" for n in range(72)]
    try:
        workers.start(concurrency=24, args=["--pool", "gevent"], log=log)
        job_ids = Producer(app).enqueue_many(START_RECORDING, [{"roomId": r} for r in rooms])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            records = [app.store.get(job_id) for job_id in job_ids]
            if all(record is not None and record.state.terminal for record in records):
                break
            time.sleep(0.25)
    finally:
        workers.stop_all()
        app.close()
    output = log.read_text()
    assert "concurrency: 24 (gevent)" in output
    assert [record.state if record else None for record in records] == [State.SUCCEEDED] * 72
    accepted = [call.body["roomId"] for call in sandbox.accepted(START)]
    assert sorted(accepted) == sorted(rooms)
    first = sorted(call.at for call in sandbox.accepted(START))[:24]
    assert first[-1] - first[0] < sandbox.latency, "24 calls were in flight at once"
    assert "Couldn't ack" not in output
    assert "CRITICAL" not in output


def run_worker_main(pool: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Celery's worker started from code, on ``pool``, without recq's entry point."""
    code = (
        "import os\n"
        "from worker.celery_app import create_app\n"
        "from worker.settings import Settings\n"
        "app = create_app(Settings.from_env(os.environ))\n"
        f"app.worker_main(['worker', '--pool', {pool!r}])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_gevent_pool_in_a_process_not_patched_is_refused(settings):
    """Started from code, nothing patched the process: it says how to start it instead of
    running every job one after another."""
    result = run_worker_main("gevent", worker_env(settings))
    assert result.returncode == 2
    assert "--pool gevent needs the process patched by gevent" in result.stderr
    assert "recq worker --pool gevent" in result.stderr


def test_the_eventlet_pool_is_refused(settings):
    """eventlet is not supported: a clear refusal, before the worker connects."""
    result = run_worker_main("eventlet", worker_env(settings))
    assert result.returncode == 2
    assert "--pool eventlet is not supported" in result.stderr
