"""Helpers for testing systems built on recq: waiting for a job's end, hand-building a message,
running `recq worker` processes, counting calls against a rate limit.

Shipped with the package so that users' own integration tests (and ours) can use them.
"""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from worker.event_log import EventLog
from worker.publisher import redis_envelope, task_body
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET
from worker.settings import Settings
from worker.state import JobRecord, JobStore, State

T = TypeVar("T")


def _polled(read: Callable[[], T], ready: Callable[[T], bool], timeout: float) -> tuple[T, bool]:
    """``read()`` every 50 ms until ``ready`` holds of it or ``timeout`` passes: the last
    reading, and whether it was ready."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ready(value):
            return value, True
        if time.monotonic() >= deadline:
            return value, False
        time.sleep(0.05)


def wait_for_state(
    store: JobStore, job_id: str, *states: State, timeout: float = 20.0
) -> JobRecord:
    """The job's record once it is in one of ``states``; TimeoutError with the last one seen."""
    record, reached = _polled(
        lambda: store.get(job_id), lambda r: r is not None and r.state in states, timeout
    )
    if not reached or record is None:
        raise TimeoutError(f"job {job_id} did not reach {[s.value for s in states]}; last {record}")
    return record


def wait_until(ready: Callable[[], bool], failing: str, *, timeout: float = 20.0) -> None:
    """Return once ``ready()`` holds; TimeoutError saying ``failing`` once ``timeout`` passed."""
    _last, reached = _polled(ready, bool, timeout)
    if not reached:
        raise TimeoutError(f"{failing} within {timeout:g} s")


def wait_for_events(
    log: EventLog, event_type: str, count: int = 1, *, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The logged events of ``event_type``, oldest first, once there are ``count`` of them;
    TimeoutError with how many there were. An event may come a moment after the state it
    reports: a batch's first ``batch.completed`` is published once its record is written."""
    found, reached = _polled(
        lambda: [event for event in log.read() if event["type"] == event_type],
        lambda events: len(events) >= count,
        timeout,
    )
    if not reached:
        raise TimeoutError(f"{len(found)} {event_type} events logged, not {count}")
    return found


def busiest_window(times: Iterable[float], width: float) -> int:
    """The most of ``times`` (such as when VideoSDK saw each call) that fall in any half-open
    window ``[t, t + width)``: what a rate limit of that period must keep within its count."""
    ordered = sorted(times)
    ends = (bisect.bisect_left(ordered, t + width) - i for i, t in enumerate(ordered))
    return max(ends, default=0)


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
        body = task_body(job)
    return redis_envelope(task, job_id, queue=queue, body=body, content_type=content_type)


def celery_amqp_message(task: str, job_id: str, *, job: Any) -> dict[str, Any]:
    """A Celery protocol 2 task message for a bare AMQP client, built by hand.

    The parts of ``basic.publish`` a producer in any language sets: the JSON ``body``, the
    message ``properties``, and the task name and id as AMQP ``headers``. Publish it to the
    default exchange (``""``) with the queue's name as routing key.
    """
    return {
        "body": task_body(job),
        "properties": {
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "correlation_id": job_id,
            "delivery_mode": 2,
        },
        "headers": {"lang": "py", "task": task, "id": job_id, "root_id": job_id},
    }


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
    """`recq worker` subprocesses, all stopped by :meth:`stop_all`, which leaving a ``with``
    block calls too."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(
        self, concurrency: int | None = 8, *, args: Sequence[str] = (), log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start one worker (``concurrency`` None: `recq worker`'s own default); ``args`` go to
        `recq worker`, its output to ``log`` if given."""
        output = log.open("ab") if log is not None else subprocess.DEVNULL
        threads = [] if concurrency is None else ["--concurrency", str(concurrency)]
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [sys.executable, "-m", "worker", "worker", *threads, *args],
                env=self.env,
                stdout=output,
                stderr=output,
            )
        finally:
            if log is not None:
                output.close()  # type: ignore[union-attr]
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
