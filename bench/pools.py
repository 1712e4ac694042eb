"""``python -m bench.pools JOBS [--processes N] [--latency] [recq worker options]``: throughput
with options.

The pool and concurrency comparison of docs/performance.md: the suite's throughput step, with
the options given passed to ``recq worker``, e.g. ``--pool prefork --concurrency 2``. With
``--processes N``, N ``recq worker`` processes drain the queue together (one per core is what
docs/performance.md advises); the CPU and memory shown are then their sum. The workers start
first and the jobs are enqueued once every one consumes, so no worker drains alone while
another starts; the rate is counted on the sandbox's clock, first call to last. With
``--latency``, the first worker then gets jobs one at a time at half the drained rate, and the
added latency from enqueue to the VideoSDK call is printed (as the suite's latency row).
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from bench import latency
from bench.recq_run import MB, drain, recq_workers
from bench.recq_run import enqueue as prefill
from bench.stand import Stand
from worker.celery_app import create_app
from worker.producer import Producer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pools",
        description="Enqueue JOBS jobs, let `recq worker` drain them from a throwaway Redis "
        "against the VideoSDK sandbox (20 ms answers), and print the jobs per second (on the "
        "sandbox's clock), the worker's CPU and its memory. Options after JOBS other than "
        "--processes and --latency go to `recq worker`, e.g. --concurrency 16.",
    )
    parser.add_argument("jobs", type=int, metavar="JOBS", help="how many jobs to drain")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N `recq worker` processes side by side (default 1)",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="then measure the added latency from enqueue to the VideoSDK call at half of the "
        "drained rate, for 5 seconds, with the same worker",
    )
    args, options = parser.parse_known_args(argv)
    if args.jobs < 1 or args.processes < 1:
        parser.error("JOBS and --processes must be at least 1")
    jobs, processes = args.jobs, args.processes
    with ExitStack() as stack:
        stand = Stand(stack)
        app = create_app(stand.settings)
        stack.callback(app.close)
        workers = recq_workers(stand, stack, processes, options)
        prefill(Producer(app), jobs, prefix="pools")
        result = drain(stand, workers, jobs)
        added: latency.Latency | None = None
        if args.latency and result.rate:
            added = latency.measure(
                stand, Producer(app), workers[0], per_second=result.rate / 2, seconds=5
            )
    rate = f"{result.rate:.0f} jobs/s" if result.rate else "n/a"
    cpu = result.cpu.get("worker", 0.0)
    shown = " ".join(options) or "(defaults)"
    if processes > 1:
        shown = f"{processes} processes, {shown}"
    together = " in all" if processes > 1 else ""
    memory = f"RSS {result.rss_after / MB:.0f} MB{together}"
    print(f"{shown}: {rate}, worker CPU {cpu:.2f} cores{together}, {memory}")
    if added is not None:
        p50, p99 = (
            f"{v * 1000:.1f} ms" if v is not None else "n/a" for v in (added.p50, added.p99)
        )
        print(f"  added latency at {added.achieved:.0f} jobs/s: p50 {p50}, p99 {p99}")


if __name__ == "__main__":
    main()
