"""A lean HTTP load for the sandbox's own capacity: keep-alive connections on one asyncio loop.

Each connection sends a start-recording call (the token and body recq sends, one room per call),
reads the answer and sends the next; there is no HTTP library in the way, so a call costs the
client a few tens of microseconds and the sandbox, not the client, is what gets saturated.
``python -m bench.hammer`` runs it in a process of its own, from ``--start-at`` (epoch seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from urllib.parse import urlsplit

from bench.sandbox_process import START, sandbox_token


async def hammer(url: str, *, calls: int, connections: int, prefix: str) -> int:
    """Make ``calls`` calls over ``connections`` connections; return how many were not 2xx."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {START} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {sandbox_token()}\r\n"
        "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    numbers = itertools.count()
    failures = 0

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (number := next(numbers)) < calls:
                body = json.dumps({"roomId": f"{prefix}-{number}"}).encode()
                writer.write(head.format(length=len(body)).encode() + body)
                status_line = await reader.readline()
                headers = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(headers))
                failures += not status_line.split(b" ", 2)[1].startswith(b"2")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return failures


def _content_length(headers: bytes) -> int:
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def main() -> None:
    """One load process; exits 1 if any call was not answered 2xx."""
    parser = argparse.ArgumentParser(prog="python -m bench.hammer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()
    time.sleep(max(0.0, args.start_at - time.time()))
    coroutine = hammer(args.url, calls=args.calls, connections=args.connections, prefix=args.prefix)
    raise SystemExit(1 if asyncio.run(coroutine) else 0)


if __name__ == "__main__":
    main()
