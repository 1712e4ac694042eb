"""The VideoSDK sandbox in a process of its own: its CPU never shares a GIL with what is measured.

``python -m bench.sandbox_process --latency 0.02`` serves a :class:`CountingSandbox` and prints
its URL. Besides the sandbox's control API (``/_sandbox/calls``, ``/_sandbox/reset``) it answers
``GET /_bench/count``: how many VideoSDK calls were answered, a cheap thing to poll while a run
is under way (the call log itself is fetched once, at the end of a run).
:class:`SandboxProcess` starts one and talks to it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import requests

from bench.procs import python, spawn, stop
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET, Reply, Sandbox, SandboxServer
from worker.settings import Credentials, Secret
from worker.tokens import TokenSigner

COUNT_PATH = "/_bench/count"
START = "/v2/recordings/start"
START_TRACK = "/v2/recordings/participant/track/start"


def sandbox_token() -> str:
    """A token signed exactly as a recq worker signs it, for the sandbox's account."""
    return TokenSigner(Credentials(DEFAULT_API_KEY, Secret(DEFAULT_SECRET))).token()


class CountingSandbox(Sandbox):
    """A sandbox that also counts the VideoSDK calls it has answered."""

    def __init__(self, *, latency: float) -> None:
        super().__init__(DEFAULT_API_KEY, DEFAULT_SECRET, latency=latency)
        self._lock = threading.Lock()
        self._answered = 0

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        """Answer as the sandbox does, counting VideoSDK calls once they are answered."""
        if path == COUNT_PATH:
            return Reply.json(200, {"calls": self._answered})
        reply = super().handle(method, path, query, headers, body)
        control = path.startswith("/_sandbox")
        with self._lock:
            if not control:
                self._answered += 1
            elif path == "/_sandbox/reset":
                self._answered = 0
        return reply


@dataclass(frozen=True, slots=True)
class Call:
    """What a benchmark needs of one logged call: where, about which room, when, answered how."""

    path: str
    room: str
    participant: str | None
    at: float
    status: int


class SandboxProcess:
    """A ``bench.sandbox_process`` child: its URL, its counter and its call log."""

    def __init__(self, env: Mapping[str, str], *, latency: float, log: IO[bytes]) -> None:
        self.latency = latency
        self._url_file = Path(log.name).with_suffix(".url")
        args = ["-m", "bench.sandbox_process", "--latency", str(latency)]
        self.process = spawn(python(*args, "--url-file", str(self._url_file)), env, log=log)
        self.url = self._await_url(timeout=20.0)
        self._session = requests.Session()

    def _await_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the sandbox process exited at start; see its log")
            if self._url_file.exists() and (text := self._url_file.read_text().strip()):
                return text
            time.sleep(0.05)
        raise RuntimeError(f"the sandbox process gave no URL within {timeout:g} s")

    def count(self) -> int:
        """How many VideoSDK calls have been answered since the last reset."""
        answer = self._session.get(self.url + COUNT_PATH, timeout=10)
        return int(answer.json()["calls"])

    def wait_for(self, calls: int, *, timeout: float) -> None:
        """Block until ``calls`` VideoSDK calls were answered; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            seen = self.count()
            if seen >= calls:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{seen} of {calls} VideoSDK calls arrived within {timeout:g} s")

    def calls(self, path: str) -> list[Call]:
        """The logged calls to ``path``, oldest first."""
        answer = self._session.get(self.url + "/_sandbox/calls", params={"path": path}, timeout=60)
        answer.raise_for_status()
        return sorted((_call(raw) for raw in answer.json()), key=lambda call: call.at)

    def reset(self) -> None:
        """Forget every call, room and recording."""
        self._session.post(self.url + "/_sandbox/reset", timeout=10).raise_for_status()

    def close(self) -> None:
        """Stop the process."""
        self._session.close()
        stop(self.process, grace=5.0)
        self._url_file.unlink(missing_ok=True)


def _call(raw: dict[str, Any]) -> Call:
    body = raw.get("body") or {}
    return Call(
        path=raw["path"],
        room=str(body.get("roomId", "")),
        participant=body.get("participantId"),
        at=float(raw["at"]),
        status=int(raw["status"]),
    )


def main() -> None:
    """Serve a counting sandbox until SIGTERM or SIGINT; write its URL to ``--url-file``."""
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_process")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--url-file", type=Path, required=True)
    args = parser.parse_args()
    stopped = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with SandboxServer(CountingSandbox(latency=args.latency)) as server:
        args.url_file.write_text(server.url)
        while not stopped.wait(0.5):
            continue
    sys.exit(0)


if __name__ == "__main__":
    main()
