"""The test stand every measurement runs against: a throwaway Redis and the sandbox process.

The Redis is a ``redis-server`` of the benchmark's own on a free port (never the shared one at
6379), with recq's default namespace and queue, so the worker runs with its defaults untouched.
Logs of every child process go to one directory, kept (and named) when the run fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import redis

from bench.sandbox_process import SandboxProcess
from worker.redis_server import throwaway_redis
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET
from worker.settings import Credentials, Secret, Settings

LATENCY = 0.020  # seconds the sandbox waits before each answer, as the issue fixes it


class Stand:
    """A throwaway Redis and a sandbox process, stopped when ``stack`` closes."""

    def __init__(self, stack: ExitStack, *, latency: float = LATENCY) -> None:
        self._stack = stack
        self.logs = Path(tempfile.mkdtemp(prefix="recq-bench-"))
        self.failed = False
        self.notes: list[str] = []  # what a reader of the table should know about this run
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RECQ_", "VIDEOSDK_"))}
        stack.callback(self._remove_logs)
        self.redis_server = stack.enter_context(throwaway_redis())
        self.redis = redis.Redis.from_url(self.redis_server.url)
        stack.callback(self.redis.close)
        self.notes.append(
            f"Redis: a throwaway redis-server on port {self.redis_server.port} (not the shared "
            "one), recq's default namespace and queue"
        )
        self.sandbox = SandboxProcess(self.env, latency=latency, log=self.log("sandbox"))
        stack.callback(self.sandbox.close)
        self.settings = Settings(
            credentials=Credentials(DEFAULT_API_KEY, Secret(DEFAULT_SECRET)),
            api_endpoint=self.sandbox.url,
            broker_url=self.redis_server.url,
            redis_url=self.redis_server.url,
        )

    def log(self, name: str) -> IO[bytes]:
        """A new log file in the run's log directory, closed with the stand."""
        handle = (self.logs / f"{name}.log").open("ab")
        self._stack.callback(handle.close)
        return handle

    @property
    def redis_pid(self) -> int:
        """The throwaway redis-server's process id."""
        info = self.redis.info("server")
        return int(info["process_id"])

    def flush(self) -> None:
        """Empty the Redis and the sandbox's log and rooms, between measurements."""
        self.redis.flushdb()
        self.sandbox.reset()

    def _remove_logs(self) -> None:
        if self.failed:
            print(f"bench: the child processes' logs are kept in {self.logs}")
        else:
            shutil.rmtree(self.logs, ignore_errors=True)
