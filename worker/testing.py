"""Helpers for testing systems built on recq: waiting for a job's end, hand-building a message,
running `recq worker` processes.

Shipped with the package so that users' own integration tests (and ours) can use them.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET
from worker.settings import Settings
from worker.state import JobRecord, JobStore, State


def wait_for_state(
    store: JobStore, job_id: str, *states: State, timeout: float = 20.0
) -> JobRecord:
    """The job's record once it is in one of ``states``; TimeoutError with the last one seen."""
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record is not None and record.state in states:
            return record
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach {[s.value for s in states]}; last {record}")


def celery_message(
    task: str,
    job_id: str,
    *,
    queue: str = "recq",
    job: Any = None,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> bytes:
    """A Celery protocol 2 task message in the Redis transport's envelope, built by hand.

    This is what a producer in any language pushes (``LPUSH <queue>``) to publish a job without
    Celery: the body ``[[], {"job": JOB}, {...}]`` base64-encoded, the task name and id in the
    headers. ``body`` overrides the encoded job, for tests of malformed messages.
    """
    if body is None:
        call = [[], {"job": job}, {"callbacks": None, "errbacks": None, "chain": None}]
        body = json.dumps(call).encode()
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8" if content_type == "application/json" else "binary",
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": job_id, "root_id": job_id},
        "properties": {
            "correlation_id": job_id,
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
        },
    }
    return json.dumps(envelope).encode()


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a `recq worker` process on ``settings``, against the sandbox's account.

    Every ``VIDEOSDK_*`` and ``RECQ_*`` variable of this process is left out; ``overrides`` add
    more (``RECQ_LIVE_POLL_INTERVAL="0.5"``).
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "RECQ_"))}
    return {
        **clean,
        "CELERY_BROKER_URL": settings.broker_url,
        "RECQ_REDIS_URL": settings.redis_url,
        "RECQ_NAMESPACE": settings.namespace,
        "RECQ_QUEUE": settings.queue,
        "VIDEOSDK_API_KEY": DEFAULT_API_KEY,
        "VIDEOSDK_SECRET": DEFAULT_SECRET,
        "VIDEOSDK_API_ENDPOINT": settings.api_endpoint,
        **overrides,
    }


class Workers:
    """`recq worker` subprocesses, all stopped by :meth:`stop_all`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, concurrency: int = 8) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "worker", "worker", "--concurrency", str(concurrency)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM every worker still running, and wait for it (SIGKILL after 90 s)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
