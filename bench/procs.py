"""The processes a benchmark starts: spawned in their own group, stopped with all their children.

Also what a process tree costs, read from ``/proc`` (Linux): resident memory and CPU time summed
over a process and its descendants, so a prefork worker is counted whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def bench_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the repository root on ``PYTHONPATH``, so children can import ``bench``."""
    path = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def spawn(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    log: IO[bytes] | None = None,
    stdin: int | None = None,
    stdout: int | IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a process group of its own, from the repository root.

    Its own group: a Ctrl-C at the terminal reaches only the benchmark, which then stops every
    child in order (see :func:`stop`), instead of every child stopping on its own at once.
    """
    return subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        list(args),
        env=bench_env(env),
        cwd=ROOT,
        stdin=stdin,
        stdout=stdout if stdout is not None else (log or subprocess.DEVNULL),
        stderr=log or subprocess.DEVNULL,
        start_new_session=True,
    )


def python(*args: str) -> list[str]:
    """A command line running this interpreter."""
    return [sys.executable, *args]


def stop(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM the process's group, wait up to ``grace`` seconds, then SIGKILL the group."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # Children of the group leader may outlive it (a prefork pool): kill what is left.
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant of it that is alive now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            parents.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in bytes."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            pages = Path(f"/proc/{member}/statm").read_text().split()[1]
            total += int(pages) * _PAGE
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) used so far by ``pid`` and its live descendants."""
    total = 0
    for member in tree(pid):
        stat = _stat(member)
        if stat is not None:
            total += int(stat[11]) + int(stat[12])  # utime, stime: fields 14 and 15
    return total / _TICK


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid is [1])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()
