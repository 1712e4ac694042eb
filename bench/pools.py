"""``python -m bench.pools JOBS [recq worker options]``: one worker's throughput with options.

The pool and concurrency comparison of docs/performance.md: the same throughput step as the
suite (jobs enqueued first, then one ``recq worker`` drains them, counted on the sandbox's clock),
with the options given passed to ``recq worker``, e.g. ``--pool prefork --concurrency 2``.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from bench.procs import python
from bench.recq_run import WorkerProcess, drain
from bench.recq_run import enqueue as prefill
from bench.stand import Stand
from worker.celery_app import create_app
from worker.producer import Producer
from worker.testing import worker_env

MB = 1 << 20


def main() -> None:
    jobs, options = int(sys.argv[1]), sys.argv[2:]
    with ExitStack() as stack:
        stand = Stand(stack)
        app = create_app(stand.settings)
        stack.callback(app.close)
        prefill(Producer(app), jobs, prefix="pools")
        command = python("-m", "worker", "worker", *options)
        with WorkerProcess(stand, command, worker_env(stand.settings), "recq-worker") as worker:
            result = drain(stand, worker, jobs)
    rate = f"{result.rate:.0f} jobs/s" if result.rate else "n/a"
    cpu = result.cpu.get("worker", 0.0)
    shown = " ".join(options) or "(defaults)"
    print(f"{shown}: {rate}, worker CPU {cpu:.2f} cores, RSS {result.rss_after / MB:.0f} MB")


if __name__ == "__main__":
    main()
