"""``recq worker`` with its defaults: end-to-end throughput, memory and CPU.

The jobs are enqueued first, with no worker running; then one ``recq worker`` starts with no
option at all (its defaults are whatever ``worker.cli.WORKER_DEFAULTS`` says at run time) and
drains the queue. Throughput is counted on the sandbox's clock, between the first and the last
call it receives, so the worker's start-up is not in the figure.

Several workers draining together (:func:`recq_workers`) are started first instead, and the
jobs enqueued once every one has started consuming: otherwise the first worker up would drain
alone for as long as the others take to start, and their start-up would count in the figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.procs import python, rss_bytes, spawn, stop
from bench.results import rate
from bench.sandbox_process import START
from bench.stand import Stand
from bench.usage import Usage
from worker.cli import WORKER_DEFAULTS
from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.testing import worker_env

MB = 1 << 20
SETTLE = 0.5  # seconds
READY_TIMEOUT = 60.0  # seconds for every worker of a group to start consuming


def worker_defaults() -> tuple[str, int]:
    """The pool and concurrency `recq worker` runs with when given no option."""
    args = list(WORKER_DEFAULTS)

    def option(name: str) -> str | None:
        return args[args.index(name) + 1] if name in args else None

    concurrency = option("--concurrency") or option("-c")
    if concurrency is None:
        raise RuntimeError("recq worker names no default concurrency: Celery's would be used")
    return option("--pool") or option("-P") or "prefork", int(concurrency)


class WorkerProcess:
    """A worker process (``recq worker``, or the peer's ``celery worker``), stopped on exit."""

    def __init__(self, stand: Stand, command: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.process = spawn(command, env, log=stand.log(name))
        self.pid = self.process.pid

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stop(self.process, grace=30.0)

    def alive(self) -> None:
        """Raise if the worker has exited (a misconfiguration shows at once, not as a timeout)."""
        if self.process.poll() is not None:
            code = self.process.returncode
            raise RuntimeError(f"{self.name} exited with {code}; see its log")


def recq_worker(
    stand: Stand,
    options: Sequence[str] = (),
    *,
    name: str = "recq-worker",
    heartbeat: Path | None = None,
) -> WorkerProcess:
    """`recq worker` on the stand's Redis and sandbox: with no option, its defaults.

    ``heartbeat`` is where its consumer records that it runs (``RECQ_HEARTBEAT_FILE``).
    """
    command = python("-m", "worker", "worker", *options)
    overrides = {"RECQ_HEARTBEAT_FILE": str(heartbeat)} if heartbeat is not None else {}
    return WorkerProcess(stand, command, worker_env(stand.settings, **overrides), name)


def recq_workers(
    stand: Stand, stack: ExitStack, count: int, options: Sequence[str] = ()
) -> list[WorkerProcess]:
    """``count`` `recq worker` processes, stopped when ``stack`` closes, once every one of them
    has started consuming (each has a heartbeat file of its own, written when it starts)."""
    beats = [stand.logs / f"recq-worker-{n}.heartbeat" for n in range(1, count + 1)]
    workers = [
        stack.enter_context(recq_worker(stand, options, name=beat.stem, heartbeat=beat))
        for beat in beats
    ]
    until(
        lambda: all(beat.exists() for beat in beats),
        workers,
        timeout=READY_TIMEOUT,
        failure=lambda: f"not all {count} workers started within {READY_TIMEOUT:.0f} s",
    )
    return workers


@dataclass(slots=True)
class Throughput:
    """A drained queue: its rate, failures, each process's CPU and the workers' memory."""

    jobs: int
    processes: int
    rate: float | None
    failures: int
    cpu: dict[str, float] = field(default_factory=dict)
    rss_after: int = 0
    rss_peak: int = 0
    redis_commands: dict[str, int] = field(default_factory=dict)
    """Redis commands run while draining, by name (every client: the worker's, mostly)."""

    def commands_per_job(self) -> float | None:
        total = sum(self.redis_commands.values())
        return total / self.jobs if self.jobs and total else None


def enqueue(producer: Producer, jobs: int, *, prefix: str) -> list[str]:
    """Publish ``jobs`` start-recording jobs, one room each; return the rooms."""
    rooms = [f"{prefix}-{n}" for n in range(jobs)]
    producer.enqueue_many(START_RECORDING, [{"roomId": room} for room in rooms])
    return rooms


def drain(stand: Stand, workers: Sequence[WorkerProcess], jobs: int) -> Throughput:
    """Wait until the sandbox answered ``jobs`` calls, sampling the processes meanwhile: the
    workers' CPU and memory are their sum.

    Counts every VideoSDK call since the sandbox's last reset, so reset it before enqueueing.
    """
    groups = {
        "worker": [worker.pid for worker in workers],
        "sandbox": [stand.sandbox.process.pid],
        "redis": [stand.redis_pid],
    }
    before = _commands(stand)
    with Usage(groups) as usage:
        wait(stand, workers, jobs)
        rss_after = sum(rss_bytes(worker.pid) for worker in workers)
    time.sleep(SETTLE)  # the last jobs' acknowledgements and state writes
    after = _commands(stand)
    calls = stand.sandbox.calls(START)
    times = [call.at for call in calls]
    return Throughput(
        jobs=len(calls),
        processes=len(workers),
        rate=rate(times),
        failures=sum(1 for call in calls if call.status // 100 != 2),  # noqa: PLR2004
        cpu=usage.cpu_shares(min(times), max(times)) if times else {},
        rss_after=rss_after,
        rss_peak=max(usage.peak_rss(), rss_after),
        redis_commands={k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)},
    )


def _commands(stand: Stand) -> dict[str, int]:
    """How many times Redis has run each command (INFO commandstats)."""
    stats = stand.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def wait(stand: Stand, workers: Sequence[WorkerProcess], calls: int) -> None:
    """Block until the sandbox answered ``calls`` calls, failing fast if a worker died."""
    until(
        lambda: stand.sandbox.count() >= calls,
        workers,
        timeout=60 + calls / 20,
        failure=lambda: f"only {stand.sandbox.count()} of {calls} VideoSDK calls arrived in time",
    )


def until(
    done: Callable[[], bool],
    workers: Sequence[WorkerProcess],
    *,
    timeout: float,
    failure: Callable[[], str],
    every: float = 0.1,
) -> None:
    """Block until ``done()``: raise at once if a worker has exited, and ``TimeoutError`` with
    ``failure()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        for worker in workers:
            worker.alive()
        if time.monotonic() > deadline:
            raise TimeoutError(failure())
        time.sleep(every)
