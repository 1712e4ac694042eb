"""Health probes: is this worker alive (liveness), and can it work (readiness)?

**Liveness** is a heartbeat file. While a worker's consumer runs, its event loop rewrites
``RECQ_HEARTBEAT_FILE`` every ``RECQ_HEARTBEAT_INTERVAL`` seconds (10). A loop that is stuck (a
hung call, a deadlock, a process stopped by the kernel) or that has been unable to consume for
long (the broker away beyond its reconnection attempts) stops the beats, and
``recq health liveness`` fails once the last beat is older than ``--max-age`` (60 s): restarting
the worker is then the right thing for a supervisor to do. The file is local, so the probe
needs neither the broker nor Redis.

**Readiness** asks the broker and Redis to answer within a timeout: a worker that cannot reach
them should not count as serving, but restarting it would not help either.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kombu
import redis
from celery import bootsteps
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from worker.errors import SettingsError
from worker.settings import Settings

DEFAULT_MAX_AGE = 60.0
BEATS_MISSED = 6
"""How many beats in a row a live worker may miss before liveness fails."""
logger = logging.getLogger(__name__)


def default_max_age(interval: float) -> float:
    """The oldest heartbeat liveness accepts by default: 60 s, or six beats of a longer
    ``RECQ_HEARTBEAT_INTERVAL`` (a healthy worker's file is never older than its interval)."""
    return max(DEFAULT_MAX_AGE, BEATS_MISSED * interval)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A probe's answer: healthy or not, and a sentence saying why."""

    healthy: bool
    message: str


def beat(path: Path, clock: Callable[[], float] = time.time) -> None:
    """Record a heartbeat now (write, then rename: a reader never sees half a file)."""
    partial = _partial(path)
    partial.write_text(f"{clock():.3f}\n", encoding="ascii")
    partial.replace(path)


def _partial(path: Path) -> Path:
    """Where a beat of this process is written before it is renamed to ``path`` (its directory
    made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}")


def require_writable(path: Path) -> None:
    """Check, before a worker starts, that its heartbeat can be written at ``path``.

    Raises a :class:`SettingsError` naming ``RECQ_HEARTBEAT_FILE``: a worker that cannot beat
    would otherwise fail its liveness probe for ever (or, from the consumer, restart it in a
    loop)."""
    try:
        partial = _partial(path)
        partial.write_text("", encoding="ascii")
        partial.unlink()
    except OSError as exc:
        raise SettingsError(
            [
                f"RECQ_HEARTBEAT_FILE={str(path)!r} cannot be written ({exc.strerror}): point it "
                "at a file in a writable directory"
            ]
        ) from None


def liveness(
    path: Path, *, max_age: float = DEFAULT_MAX_AGE, clock: Callable[[], float] = time.time
) -> Verdict:
    """Whether the heartbeat at ``path`` is younger than ``max_age`` seconds."""
    try:
        last = float(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        return Verdict(
            False,
            f"no heartbeat at {path}: the worker's consumer has not started, or the worker "
            "stopped (is RECQ_HEARTBEAT_FILE the worker's?)",
        )
    except (OSError, ValueError) as exc:
        return Verdict(False, f"cannot read the heartbeat at {path}: {exc}")
    age = clock() - last
    if age > max_age:
        return Verdict(
            False,
            f"the last heartbeat is {age:.0f} s old (more than {max_age:.0f} s): the consumer "
            "is stuck or has not reached the broker for that long",
        )
    return Verdict(True, f"alive: the last heartbeat is {age:.1f} s old")


def readiness(settings: Settings, *, timeout: float = 3.0) -> Verdict:
    """Whether the broker and Redis both answer within ``timeout`` seconds each."""
    problems = []
    broker = maybe_sanitize_url(settings.broker_url)
    try:
        # The transport options bound a Redis broker's reads (kombu's own default: none): a
        # broker that accepts the connection but never answers is not ready.
        waits = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        with kombu.Connection(
            settings.broker_url, connect_timeout=timeout, transport_options=waits
        ) as connection:
            connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))
    except (OperationalError, OSError) as exc:
        problems.append(f"the broker {broker} does not answer ({type(exc).__name__}: {exc})")
    store = maybe_sanitize_url(settings.redis_url)
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        problems.append(f"Redis {store} does not answer ({type(exc).__name__}: {exc})")
    finally:
        client.close()
    if problems:
        return Verdict(False, "not ready: " + "; ".join(problems))
    return Verdict(True, f"ready: the broker {broker} and Redis {store} answer")


class HeartbeatStep(bootsteps.StartStopStep):
    """Beats from the consumer's event loop while it consumes; removes the file at shutdown."""

    label = "recq heartbeat"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._entry: Any = None

    def start(self, parent: Any) -> None:
        settings: Settings = parent.app.settings
        _beat(settings.heartbeat_file)
        self._entry = parent.timer.call_repeatedly(
            settings.heartbeat_interval, _beat, (settings.heartbeat_file,)
        )

    def stop(self, parent: Any) -> None:
        # A consumer restarting after a lost connection stops beating, but keeps its file: a
        # short reconnection must not fail the probe.
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        parent.app.settings.heartbeat_file.unlink(missing_ok=True)


def _beat(path: Path) -> None:
    """A beat from the consumer's loop: a failure to write it (a full disk) is logged, and the
    probe sees the heartbeat age; raised, it would make the consumer restart."""
    try:
        beat(path)
    except OSError as exc:
        logger.warning("cannot write the heartbeat at %s: %s", path, exc.strerror)
