"""The sandbox's own capacity, under far more concurrent calls than any measurement here makes.

The load is :mod:`bench.hammer`: lean keep-alive connections on asyncio, in processes of their
own that begin together, so that the sandbox and not the client is what saturates. On a small
machine those clients still share the cores with the sandbox, so the figure is a floor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.procs import python, spawn, stop
from bench.results import rate
from bench.sandbox_process import START
from bench.stand import Stand
from bench.usage import Usage


@dataclass(frozen=True, slots=True)
class Capacity:
    """Calls per second answered, and the cores the sandbox used meanwhile."""

    rate: float | None
    cores: float | None

    @property
    def per_core(self) -> float | None:
        """Calls one fully busy core answers: the sandbox's CPU cost per call, inverted."""
        return self.rate / self.cores if self.rate and self.cores else None


def measure(stand: Stand, *, calls: int, processes: int, connections: int) -> Capacity:
    """The sandbox's answers per second to ``processes`` x ``connections`` connections."""
    stand.sandbox.reset()
    per_process = max(1, calls // processes)
    start_at = time.time() + 2.0  # every process imported and ready by then
    loads = []
    try:
        with Usage({"sandbox": [stand.sandbox.process.pid]}, interval=0.25) as usage:
            for number in range(processes):
                args = ["--url", stand.sandbox.url, "--connections", str(connections)]
                args += ["--prefix", f"capacity-{number}", "--calls", str(per_process)]
                command = python("-m", "bench.hammer", *args, "--start-at", str(start_at))
                loads.append(spawn(command, stand.env, log=stand.log("hammer")))
            for load in loads:
                load.wait(timeout=60 + calls / 100)
                if load.returncode:
                    stand.notes.append("sandbox capacity: some calls were not answered 2xx")
    finally:
        for load in loads:
            stop(load, grace=1.0)
    times = [call.at for call in stand.sandbox.calls(START)]
    cores = usage.cpu_shares(min(times), max(times)).get("sandbox") if times else None
    return Capacity(rate(times), cores)
