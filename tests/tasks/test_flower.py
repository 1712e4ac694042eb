"""Flower, the Celery monitor, against `worker.app:app` and a real `recq worker`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.state import State
from worker.testing import Workers, wait_for_state, worker_env

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def env(settings) -> dict[str, str]:
    return worker_env(settings, FLOWER_UNAUTHENTICATED_API="true")


@pytest.fixture
def flower(env, tmp_path) -> Iterator[str]:
    """Flower as the README runs it, on a free port; its base URL."""
    port = _free_port()
    log = tmp_path / "flower.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app:app", "flower", f"--port={port}"],
            env=env,
            stdout=output,
            stderr=output,
        )
        yield f"http://127.0.0.1:{port}"
        process.terminate()
        process.wait(timeout=30)
    print(log.read_text()[-3000:])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _until(read: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = read()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, "Flower never showed it"
        time.sleep(0.5)


class TestFlower:
    def test_flower_sees_the_worker_its_tasks_and_a_job(self, app, env, flower, namespace):
        """Flower lists the recq worker with recq's tasks, and the job it ran."""
        with Workers(env) as workers:
            workers.start(concurrency=2, args=["--hostname", f"{namespace}@%h", "-E"])
            listed = _until(
                lambda: {
                    name: info
                    for name, info in _get(f"{flower}/api/workers?refresh=1").items()
                    if name.startswith(namespace)
                }
            )
            (info,) = listed.values()
            assert "recq.start_recording" in info["registered"]
            job_id = Producer(app).enqueue(START_RECORDING, {"roomId": "watched"})
            wait_for_state(app.store, job_id, State.SUCCEEDED)
            task = _until(lambda: _get(f"{flower}/api/tasks").get(job_id))
            assert task["name"] == "recq.start_recording"
