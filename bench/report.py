"""From a run's figures to the table's rows: each figure, how it was taken, its goal, met or not.

The goals are the issue's: recq at least 0.85 of the ceiling; at least 5,000 jobs/s enqueued
through the producer API; p99 added latency at most 50 ms at half load; a 1,000-track batch
fanned out in at most 1 s; worker RSS at most 150 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.enqueue import EnqueueRates
from bench.fanout import FanOut
from bench.latency import Latency
from bench.profile import Hotspot, render
from bench.recq_run import MB, Throughput
from bench.results import Results, Row, at_least, at_most
from bench.sandbox_capacity import Capacity

SHARE_OF_CEILING = 0.85
ENQUEUE_RATE = 5_000.0
P99_ADDED = 0.050
FANOUT_SECONDS = 1.0
RSS_MB = 150.0


@dataclass(slots=True)
class Figures:
    """Everything one run measured; None where a measurement did not run."""

    pool: str
    concurrency: int
    load_before: str = ""
    load_after: str = ""
    capacity: Capacity | None = None
    capacity_clients: tuple[int, int] = (0, 0)
    ceiling: float | None = None
    ceiling_threads: int = 32
    ceiling_at_concurrency: float | None = None
    enqueue: EnqueueRates | None = None
    recq: Throughput | None = None
    latency: Latency | None = None
    fanout: FanOut | None = None
    cores: int = 0
    """The cores the run could use; as many `recq worker` processes drained together."""
    per_core: Throughput | None = None
    peer: Throughput | None = None
    hotspots: list[Hotspot] = field(default_factory=list)


def rows(figures: Figures, tracks: int) -> Results:
    """The table of ``figures``, in reading order, with its notes."""
    results = Results()
    _throughput(results, figures)
    _latency(results, figures.latency)
    _enqueue(results, figures.enqueue)
    _fanout(results, figures.fanout, tracks)
    _memory(results, figures.recq, figures.per_core)
    _notes(results, figures)
    return results


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def _throughput(results: Results, f: Figures) -> None:
    recq = f.recq.rate if f.recq else None
    peer = f.peer.rate if f.peer else None
    fastest = max((r for r in (f.ceiling, recq, peer) if r is not None), default=None)
    processes, connections = f.capacity_clients
    capacity = f.capacity.rate if f.capacity else None
    results.add(
        Row(
            "sandbox capacity",
            capacity,
            "calls/s",
            f"{processes * connections} connections from {processes} processes sharing the cores",
            "above every rate here",
            None if capacity is None or fastest is None else capacity > fastest,
        )
    )
    per_core = f.capacity.per_core if f.capacity else None
    how = "from its CPU time per call in the capacity run"
    results.add(Row("sandbox: calls one core answers", per_core, "calls/s", how))
    how = f"{f.ceiling_threads} threads"
    results.add(Row("ceiling: requests, no queue", f.ceiling, "jobs/s", how))
    how = f"{f.concurrency} threads"
    results.add(Row("ceiling at recq's concurrency", f.ceiling_at_concurrency, "jobs/s", how))
    goal = SHARE_OF_CEILING * f.ceiling if f.ceiling else None
    jobs = f.recq.jobs if f.recq else 0
    how = f"defaults: --pool {f.pool} --concurrency {f.concurrency}; {jobs:,} jobs"
    goal_text = f">= 0.85 x ceiling = {goal:,.0f}" if goal else ">= 0.85 x ceiling"
    results.add(Row("recq worker", recq, "jobs/s", how, goal_text, at_least(recq, goal)))
    how = f"threads pool, concurrency {f.concurrency}, requests.post, Celery defaults"
    results.add(Row("peer: plain Celery task", peer, "jobs/s", how))
    ratio = _ratio(recq, f.ceiling)
    results.add(Row("recq / ceiling", ratio, "x", "", ">= 0.85", at_least(ratio, SHARE_OF_CEILING)))
    results.add(Row("recq / peer", _ratio(recq, peer), "x"))
    per_core = f.per_core.rate if f.per_core else None
    how = "not measured: one core" if f.cores == 1 else "not measured"
    if f.per_core is not None:
        jobs = f.per_core.jobs
        how = f"{f.per_core.processes} `recq worker` processes, defaults each; {jobs:,} jobs"
    results.add(Row("recq worker, one process per core", per_core, "jobs/s", how))
    results.add(Row("recq per core / ceiling", _ratio(per_core, f.ceiling), "x"))


def _latency(results: Results, latency: Latency | None) -> None:
    how = "not measured"
    if latency is not None:
        how = f"{latency.achieved:,.0f} jobs/s = half of recq's, {latency.jobs:,} jobs"
    p50 = None if latency is None or latency.p50 is None else latency.p50 * 1000
    p99 = None if latency is None or latency.p99 is None else latency.p99 * 1000
    results.add(Row("added latency p50, enqueue to call", p50, "ms", how))
    goal = P99_ADDED * 1000
    name = "added latency p99, enqueue to call"
    results.add(Row(name, p99, "ms", how, "<= 50 ms", at_most(p99, goal)))


def _enqueue(results: Results, rates: EnqueueRates | None) -> None:
    jobs = f"{rates.jobs:,} jobs" if rates else ""
    goal = f">= {ENQUEUE_RATE:,.0f} jobs/s"
    many = rates.enqueue_many if rates else None
    loop = rates.enqueue_loop if rates else None
    met = at_least(many, ENQUEUE_RATE)
    results.add(Row("enqueue: Producer.enqueue_many", many, "jobs/s", jobs, goal, met))
    how = f"{jobs}, one call each"
    results.add(
        Row("enqueue: Producer.enqueue", loop, "jobs/s", how, goal, at_least(loop, ENQUEUE_RATE))
    )
    startup = f", {rates.cli_startup:.2f} s of it start-up" if rates else ""
    how = f"JSON lines on stdin, {jobs}, whole process{startup}"
    results.add(Row("enqueue: recq enqueue", rates.cli if rates else None, "jobs/s", how))
    how = "the same, start-up (a one-job run) taken out"
    cli = rates.cli_without_startup if rates else None
    results.add(Row("enqueue: recq enqueue, after start-up", cli, "jobs/s", how))


def _fanout(results: Results, fan: FanOut | None, tracks: int) -> None:
    name = f"fan-out of {tracks:,} tracks"
    how = "batch task's first record to last child published"
    value = fan.fan_out if fan else None
    results.add(Row(name, value, "s", how, "<= 1 s", at_most(value, FANOUT_SECONDS)))
    how = "from Producer.enqueue to last child published"
    results.add(Row(f"{name}, from enqueue", fan.enqueue_to_published if fan else None, "s", how))
    how = "from Producer.enqueue to every child ended"
    completed = fan.completed if fan else None
    results.add(Row(f"batch of {tracks:,} tracks completed", completed, "s", how))


def _memory(results: Results, recq: Throughput | None, per_core: Throughput | None) -> None:
    after = recq.rss_after / MB if recq else None
    peak = recq.rss_peak / MB if recq else None
    how = "every process of the tree, after the throughput run"
    results.add(Row("recq worker RSS", after, "MB", how, "<= 150 MB", at_most(after, RSS_MB)))
    how = "sampled every 0.5 s during the throughput run"
    results.add(Row("recq worker RSS, peak", peak, "MB", how))
    all_of_them = per_core.rss_after / MB if per_core else None
    how = f"the {per_core.processes} processes together" if per_core else "not measured"
    results.add(Row("recq worker RSS, one process per core", all_of_them, "MB", how))


def _cpu_per_job(run: Throughput) -> float | None:
    """Seconds of worker CPU per job: its cores over the jobs per second."""
    cores = run.cpu.get("worker")
    return cores / run.rate if cores and run.rate else None


def _notes(results: Results, f: Figures) -> None:
    runs = (("recq", f.recq), ("recq per core", f.per_core), ("peer", f.peer))
    for name, run in runs:
        if run is None:
            continue
        shares = ", ".join(f"{who} {cores:.2f}" for who, cores in run.cpu.items())
        if shares:
            per_job = _cpu_per_job(run)
            each = f" ({per_job * 1000:.2f} ms of worker CPU per job)" if per_job else ""
            results.notes.append(f"CPU during the {name} run, in cores: {shares}{each}")
        per_job = run.commands_per_job()
        if per_job is not None:
            top = sorted(run.redis_commands.items(), key=lambda item: -item[1])[:8]
            named = ", ".join(f"{name} {count / run.jobs:.1f}" for name, count in top)
            results.notes.append(f"Redis commands per {name} job: {per_job:.1f} ({named})")
        if run.failures:
            results.notes.append(f"{name}: {run.failures} calls were not answered 2xx")
    if f.fanout is not None and f.fanout.failed:
        results.notes.append(f"fan-out: {f.fanout.failed} children failed")
    results.notes.append(f"load average before {f.load_before}, after {f.load_after}")
    if f.hotspots:
        results.notes.append("recq worker hotspots (py-spy, GIL samples):\n" + render(f.hotspots))
