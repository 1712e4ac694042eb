"""What the processes of a run cost while it runs: CPU shares and the worker's resident memory.

A :class:`Usage` thread samples, twice a second, the CPU time of each watched group of process
trees (several worker processes count as one group) and the resident memory (RSS, every process
of every tree) of the first group. CPU shares are then read
over any window of the run, such as the span between the first and last VideoSDK call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from bench.procs import cpu_seconds, rss_bytes

INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    cpu: dict[str, float]
    rss: int


class Usage:
    """Samples ``groups`` (name: the pids of its process trees) until stopped; the first group's
    memory is sampled too."""

    def __init__(self, groups: Mapping[str, Sequence[int]], *, interval: float = INTERVAL) -> None:
        self._groups = {name: list(pids) for name, pids in groups.items()}
        self._interval = interval
        self._stopped = threading.Event()
        self.samples: list[Sample] = []
        self._thread = threading.Thread(target=self._run, name="bench-usage", daemon=True)

    def __enter__(self) -> Usage:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        first = next(iter(self._groups.values()))
        while True:
            cpu = {name: sum(map(cpu_seconds, pids)) for name, pids in self._groups.items()}
            self.samples.append(Sample(time.time(), cpu, sum(map(rss_bytes, first))))
            if self._stopped.wait(self._interval):
                return

    def cpu_shares(self, start: float, end: float) -> dict[str, float]:
        """Each group's CPU use between the first and last samples within ``start``..``end``, in
        cores (1.0: one core busy all along); empty when the window holds fewer than two."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:  # noqa: PLR2004 - a share needs two samples
            return {}
        first, last = inside[0], inside[-1]
        span = last.at - first.at
        return {name: (last.cpu[name] - first.cpu[name]) / span for name in self._groups}

    def peak_rss(self) -> int:
        """The largest resident memory sampled, in bytes."""
        return max((s.rss for s in self.samples), default=0)
