"""Stopping a child process the way an operator would: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], *, grace: float = 15.0) -> None:
    """Ask ``process`` to stop, wait up to ``grace`` seconds, kill it if it has not, and reap it."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
