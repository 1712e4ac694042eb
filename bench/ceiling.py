"""The ceiling: plain ``requests`` calls from a thread pool, recq's tokens and bodies, no queue.

Run from the benchmark's own process, which does nothing else meanwhile. Each thread keeps its
own ``requests.Session`` (keep-alive, no pool to contend for) and posts the body recq sends for a
start-recording job with the token recq signs. The figure uses the sandbox's clock, as every
throughput here does: (calls - 1) / (last arrival - first arrival).
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.results import rate
from bench.sandbox_process import START, sandbox_token
from bench.stand import Stand


def measure(stand: Stand, *, calls: int, threads: int) -> float | None:
    """Calls per second from a pool of ``threads`` threads."""
    stand.sandbox.reset()
    rooms = [f"ceiling-{threads}-{n}" for n in range(calls)]
    cpu, wall = _cpu(), time.monotonic()
    failures = fire(stand.sandbox.url, rooms, threads=threads, token=sandbox_token())
    cores = (_cpu() - cpu) / (time.monotonic() - wall)
    stand.notes.append(f"ceiling, {threads} threads: the client process used {cores:.2f} cores")
    if failures:
        stand.notes.append(f"ceiling, {threads} threads: {failures} calls failed")
    return rate([call.at for call in stand.sandbox.calls(START)])


def _cpu() -> float:
    """CPU seconds this process (every thread) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fire(url: str, rooms: Sequence[str], *, threads: int, token: str) -> int:
    """Start a recording in each of ``rooms`` from ``threads`` threads; return the failures."""
    local = threading.local()

    def call(room: str) -> bool:
        session: requests.Session | None = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        try:
            answer = session.post(
                url + START, json={"roomId": room}, headers={"Authorization": token}, timeout=30
            )
        except requests.RequestException:
            return False
        return answer.ok

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(1 for ok in pool.map(call, rooms) if not ok)
