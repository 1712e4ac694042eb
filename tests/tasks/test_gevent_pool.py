"""The gevent pool: `recq worker --pool gevent` runs jobs on green threads, each job once.

gevent is opt-in (the default is the threads pool, docs/performance.md). These tests run real
`recq worker` processes on it against the sandbox and a real Redis.
"""

from __future__ import annotations

import time

import pytest

from worker.celery_app import create_app
from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.state import State
from worker.testing import Workers, worker_env

pytestmark = pytest.mark.integration

START = START_RECORDING.endpoint


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
