"""The machine and software a run measured, printed under its table."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on (its affinity), which a container's cpuset limits."""
    return len(os.sched_getaffinity(0))


def describe(redis_version: str) -> dict[str, str]:
    """What the figures depend on: cores, CPU, system, Python and the libraries on the path."""
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu_model(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis-py": version("redis"),
        "requests": version("requests"),
        "redis-server": redis_version,
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine shows here."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
