"""The peer's throughput: :mod:`bench.peer_app` on the same Redis, at recq's default concurrency.

As for recq, the jobs are published first (plain ``send_task``, one room each) and the worker
started after; the figure is counted on the sandbox's clock, first call to last.
"""

from __future__ import annotations

from celery import Celery

from bench.peer_app import TASK
from bench.procs import python
from bench.recq_run import Throughput, WorkerProcess, drain
from bench.sandbox_process import sandbox_token
from bench.stand import Stand


def measure(stand: Stand, *, jobs: int, concurrency: int) -> Throughput:
    """Publish ``jobs`` peer tasks, then drain them with a threads-pool Celery worker."""
    stand.flush()
    url = stand.redis_server.url
    sender = Celery("peer-producer", broker=url)
    try:
        with sender.producer_or_acquire() as producer:
            for number in range(jobs):
                sender.send_task(TASK, args=[f"peer-{number}"], producer=producer)
    finally:
        sender.close()
    env = {
        **stand.env,
        "CELERY_BROKER_URL": url,
        "VIDEOSDK_API_ENDPOINT": stand.sandbox.url,
        "VIDEOSDK_TOKEN": sandbox_token(),
    }
    args = ["-A", "bench.peer_app", "worker", "--pool", "threads"]
    command = python("-m", "celery", *args, "--concurrency", str(concurrency))
    with WorkerProcess(stand, command, env, "peer-worker") as worker:
        return drain(stand, [worker], jobs)
