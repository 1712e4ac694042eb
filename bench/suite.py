"""The whole run, in order, on one stand: every figure of the table from the same run.

1. the sandbox's own capacity; 2. the ceiling (32 threads, and at recq's concurrency);
3. enqueue rates (no worker running); 4. one ``recq worker`` with its defaults: throughput,
memory, added latency at half its throughput, a 1,000-track fan-out (and, on request, a
profile); 5. one ``recq worker`` per core, with its defaults, draining together (how deploy/
runs them: systemd's template unit or replicas); 6. the peer Celery task at recq's concurrency.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import ceiling, enqueue, fanout, latency, peer, sandbox_capacity
from bench.machine import describe, load_average, usable_cores
from bench.profile import Hotspot, Profiler
from bench.recq_run import (
    Throughput,
    WorkerProcess,
    drain,
    recq_worker,
    recq_workers,
    wait,
    worker_defaults,
)
from bench.recq_run import enqueue as prefill
from bench.report import Figures, rows
from bench.results import Results
from bench.stand import Stand
from worker.celery_app import RecqCelery, create_app
from worker.producer import Producer

CEILING_THREADS = 32  # fixed by the issue


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much each measurement does."""

    jobs: int = 5_000  # per throughput run: the ceilings, recq and the peer
    capacity_calls: int = 10_000
    capacity_processes: int = 2
    capacity_connections: int = 64
    enqueue_jobs: int = 10_000
    latency_seconds: float = 10.0
    fanout_tracks: int = 1_000


QUICK = Sizes(
    jobs=300, capacity_calls=600, enqueue_jobs=500, latency_seconds=2.0, fanout_tracks=200
)


def run(sizes: Sizes, *, profile: Path | None = None) -> tuple[Results, dict[str, str]]:
    """Measure everything; return the table's rows (and notes) and the machine."""
    with ExitStack() as stack:
        stand = Stand(stack)
        try:
            machine = describe(str(stand.redis.info("server")["redis_version"]))
            figures = _measure(stand, stack, sizes, profile)
        except BaseException:
            stand.failed = True
            raise
        results = rows(figures, sizes.fanout_tracks)
        results.notes[:0] = stand.notes
        return results, machine


def _measure(stand: Stand, stack: ExitStack, sizes: Sizes, profile: Path | None) -> Figures:
    pool, concurrency = worker_defaults()
    figures = Figures(pool=pool, concurrency=concurrency, load_before=load_average())
    figures.ceiling_threads = CEILING_THREADS
    with step("sandbox capacity"):
        figures.capacity = sandbox_capacity.measure(
            stand,
            calls=sizes.capacity_calls,
            processes=sizes.capacity_processes,
            connections=sizes.capacity_connections,
        )
        figures.capacity_clients = (sizes.capacity_processes, sizes.capacity_connections)
    with step(f"ceiling, {CEILING_THREADS} and {concurrency} threads"):
        figures.ceiling = ceiling.measure(stand, calls=sizes.jobs, threads=CEILING_THREADS)
        figures.ceiling_at_concurrency = ceiling.measure(
            stand, calls=sizes.jobs, threads=concurrency
        )
    with step("enqueue rates"):
        figures.enqueue = enqueue.measure(stand, jobs=sizes.enqueue_jobs)
    app = create_app(stand.settings)
    stack.callback(app.close)
    _recq(stand, app, sizes, figures, profile)
    figures.cores = usable_cores()
    if figures.cores > 1:
        with step(f"recq worker, one process per core ({figures.cores})"):
            figures.per_core = _per_core(stand, app, sizes.jobs, figures.cores)
    with step("peer Celery task"):
        figures.peer = peer.measure(stand, jobs=sizes.jobs, concurrency=concurrency)
    figures.load_after = load_average()
    return figures


def _recq(
    stand: Stand, app: RecqCelery, sizes: Sizes, figures: Figures, profile: Path | None
) -> None:
    """Throughput, memory, latency, fan-out (and a profile) of one `recq worker`."""
    producer = Producer(app)
    prefill(producer, sizes.jobs, prefix="recq")
    with recq_worker(stand) as worker:
        with step("recq worker throughput"):
            figures.recq = drain(stand, [worker], sizes.jobs)
        with step("added latency at half load"):
            half = 0.5 * (figures.recq.rate or 100.0)
            figures.latency = latency.measure(
                stand, producer, worker, per_second=half, seconds=sizes.latency_seconds
            )
        with step(f"fan-out of {sizes.fanout_tracks} tracks"):
            store, batches = app.producer_store, app.batches
            tracks = sizes.fanout_tracks
            figures.fanout = fanout.measure(
                stand, producer, store, batches, worker, participants=tracks
            )
        if profile is not None:
            with step("profile of the recq worker"):
                figures.hotspots = _profile(stand, producer, worker, sizes.jobs, profile)
            stand.notes.append(f"py-spy's folded stacks of the recq worker: {profile}")


def _per_core(stand: Stand, app: RecqCelery, jobs: int, cores: int) -> Throughput:
    """``cores`` `recq worker` processes with their defaults, draining ``jobs`` together."""
    stand.flush()
    with ExitStack() as stack:
        workers = recq_workers(stand, stack, cores)
        prefill(Producer(app), jobs, prefix="per-core")
        drained = drain(stand, workers, jobs)
    # The workers took the first jobs while the rest were enqueued, before drain() read Redis's
    # counters: a count per job would miss those jobs' commands (the one-process run has it).
    drained.redis_commands.clear()
    return drained


@contextmanager
def step(name: str) -> Iterator[None]:
    """Say on standard error what is being measured, and how long it took."""
    print(f"bench: {name}...", end="", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(" stopped", file=sys.stderr, flush=True)
        raise
    print(f" {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def _profile(
    stand: Stand, producer: Producer, worker: WorkerProcess, jobs: int, output: Path
) -> list[Hotspot]:
    """Profile the running worker (py-spy, GIL samples) while it drains ``jobs`` more jobs."""
    stand.sandbox.reset()
    profiler = Profiler(worker.pid, output)
    try:
        prefill(producer, jobs, prefix="profile")
        wait(stand, [worker], jobs)
    finally:
        spots = profiler.finish()
    return spots
