"""``python -m bench.task JOBS``: what one delivery costs recq's own code, without Celery.

The task's path alone, the part of each job that recq itself runs (validation, the claim, the
VideoSDK call, the state writes, the event): JOBS start-recording jobs, one after another,
through the job runner a worker builds, in this thread, against the sandbox in a process of its
own answering at once, on a throwaway Redis. It prints the CPU this thread spent per job
(``time.thread_time``: the sandbox and Redis run in other processes) and the Redis commands per
job (the server's own count). Without Celery's consumer and with no waiting, it is far less
noisy than a whole worker's throughput (``python -m bench.pools``), so a change to the per-job
path can be measured with a few alternated runs.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

from bench.stand import Stand
from worker.celery_app import create_app
from worker.jobs import START_RECORDING
from worker.runner import JobRunner

WARM_UP = 100  # jobs run first and not counted: connections opened, scripts loaded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.task",
        description="Run JOBS start-recording jobs one after another through recq's job runner "
        "(no broker, no Celery) against the VideoSDK sandbox answering at once, on a throwaway "
        "Redis, and print the CPU per job and the Redis commands per job.",
    )
    parser.add_argument("jobs", type=int, metavar="JOBS", help="how many jobs to run")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("JOBS must be at least 1")
    with ExitStack() as stack:
        stand = Stand(stack, latency=0.0)
        app = create_app(stand.settings)
        stack.callback(app.close)
        runner = app.runner
        run_jobs(runner, "warm", WARM_UP)
        before = commands(stand)
        began = time.thread_time()
        run_jobs(runner, "job", args.jobs)
        cpu = time.thread_time() - began
        sent = commands(stand) - before - 1  # the INFO that read the count
    print(
        f"{args.jobs} jobs: {cpu / args.jobs * 1e6:.0f} us of CPU per job, "
        f"{sent / args.jobs:.1f} Redis commands per job"
    )


def run_jobs(runner: JobRunner, prefix: str, count: int) -> None:
    """``count`` jobs, each in a room of its own (a room records once at a time)."""
    for n in range(count):
        job_id = f"{prefix}-{n}"
        outcome = runner.run(START_RECORDING, {"roomId": job_id}, job_id=job_id)
        if outcome.error is not None:
            raise RuntimeError(f"job {job_id} failed: {outcome.error.message}")


def commands(stand: Stand) -> int:
    """The commands the stand's Redis has processed so far."""
    return int(stand.redis.info("stats")["total_commands_processed"])


if __name__ == "__main__":
    main()
