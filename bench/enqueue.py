"""Enqueue rates: valid start-recording jobs through the producer API and through ``recq enqueue``.

No worker consumes meanwhile: the jobs go to a queue and namespace of their own
(``bench-enqueue``) and are flushed afterwards. Every job is validated, recorded ``queued`` and
published, exactly as for a user. ``recq enqueue`` is a fresh process fed JSON lines on standard
input, so its figure includes the interpreter's start-up and imports; the rate without them is
also given, from a second run with a single job.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

from bench.procs import python, spawn
from bench.stand import Stand
from worker.celery_app import create_app
from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.testing import worker_env

QUEUE = "bench-enqueue"


@dataclass(frozen=True, slots=True)
class EnqueueRates:
    """Jobs per second by each route, and what the command's start-up costs (seconds)."""

    jobs: int
    enqueue_many: float
    enqueue_loop: float
    cli: float
    cli_without_startup: float | None
    cli_startup: float


def measure(stand: Stand, *, jobs: int) -> EnqueueRates:
    """Enqueue ``jobs`` jobs by each route; flush them from Redis afterwards."""
    settings = stand.settings.replace(namespace=QUEUE, queue=QUEUE)
    app = create_app(settings)
    try:
        producer = Producer(app)
        producer.enqueue(START_RECORDING, {"roomId": "warm-up"})  # connections, compiled schema
        started = time.perf_counter()
        producer.enqueue_many(START_RECORDING, _jobs("many", jobs))
        many = jobs / (time.perf_counter() - started)
        started = time.perf_counter()
        for job in _jobs("loop", jobs):
            producer.enqueue(START_RECORDING, job)
        loop = jobs / (time.perf_counter() - started)
    finally:
        app.close()
    env = worker_env(settings)
    startup = _cli(stand, env, _jobs("cli-one", 1))
    whole = _cli(stand, env, _jobs("cli", jobs))
    stand.flush()
    return EnqueueRates(
        jobs=jobs,
        enqueue_many=many,
        enqueue_loop=loop,
        cli=jobs / whole,
        cli_without_startup=(jobs - 1) / (whole - startup) if whole > startup else None,
        cli_startup=startup,
    )


def _jobs(prefix: str, count: int) -> list[dict[str, str]]:
    return [{"roomId": f"enqueue-{prefix}-{n}"} for n in range(count)]


def _cli(stand: Stand, env: dict[str, str], jobs: list[dict[str, str]]) -> float:
    """Seconds `recq enqueue start-recording -` takes, from spawn to exit, for ``jobs``."""
    lines = "".join(json.dumps(job) + "\n" for job in jobs).encode()
    command = python("-m", "worker", "enqueue", "start-recording", "-")
    started = time.perf_counter()
    process = spawn(
        command, env, log=stand.log("recq-enqueue"), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    out, _ = process.communicate(lines, timeout=120 + len(jobs) / 100)
    elapsed = time.perf_counter() - started
    printed = len(out.splitlines())
    if process.returncode != 0 or printed != len(jobs):
        raise RuntimeError(f"recq enqueue exited {process.returncode}, printed {printed} ids")
    return elapsed
