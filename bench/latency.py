"""Added latency at half load: from the moment a job is enqueued to the VideoSDK call it makes.

Jobs are enqueued one by one through :meth:`Producer.enqueue` at a steady rate (half the
measured capacity) for a few seconds, each to a room of its own, so the sandbox's log says when
each job's call arrived. Added latency = the call's arrival (sandbox clock) minus the moment the
producer was called (benchmark clock; one machine, one clock). The sandbox's own answer latency
comes after the arrival, so it is not in the figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.recq_run import WorkerProcess, wait
from bench.results import percentile
from bench.sandbox_process import START
from bench.stand import Stand
from worker.jobs import START_RECORDING
from worker.producer import Producer


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of added latency, in seconds, and the load they were measured at."""

    offered: float
    achieved: float
    jobs: int
    p50: float | None
    p99: float | None
    worst: float | None


def measure(
    stand: Stand, producer: Producer, worker: WorkerProcess, *, per_second: float, seconds: float
) -> Latency:
    """Enqueue at ``per_second`` for ``seconds`` and read each job's added latency."""
    stand.sandbox.reset()
    jobs = max(2, int(per_second * seconds))
    sent: dict[str, float] = {}
    begin = time.time() + 0.05
    for number in range(jobs):
        pause = begin + number / per_second - time.time()
        if pause > 0:
            time.sleep(pause)
        room = f"latency-{number}"
        sent[room] = time.time()
        producer.enqueue(START_RECORDING, {"roomId": room})
    achieved = (jobs - 1) / (time.time() - begin) if jobs > 1 else 0.0
    wait(stand, [worker], jobs)
    added = [call.at - sent[call.room] for call in stand.sandbox.calls(START) if call.room in sent]
    return Latency(
        offered=per_second,
        achieved=achieved,
        jobs=len(added),
        p50=percentile(added, 0.50),
        p99=percentile(added, 0.99),
        worst=max(added, default=None),
    )
