"""The sandbox over real HTTP: a keep-alive HTTP/1.1 server on a background thread.

Kept cheap per request so it is never the bottleneck of a benchmark: one thread per connection
(not per request), connections kept alive, Nagle off and each answer written in one send.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

from worker.sandbox.messages import ApiError, Reply
from worker.sandbox.service import DEFAULT_API_KEY, DEFAULT_SECRET, Sandbox

logger = logging.getLogger(__name__)
MAX_BODY = 1 << 20
# A server bound to every interface is reached from this machine through the loopback.
_REACH_LOCALLY = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client connection must never keep the process alive
    # The default backlog of 5 resets connections when a benchmark's clients connect at once.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sandbox = sandbox
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def drop_connections(self) -> None:
        """Shut idle keep-alive connections so their threads end now, not at the client's will."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):  # already closed by the other side
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is normal here (timeouts, dropped answers).
        if not isinstance(sys.exc_info()[1], OSError):
            logger.exception("the sandbox failed to answer %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recq-sandbox"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body leave in one send, flushed after each request
    timeout = 300  # seconds an idle keep-alive connection is kept
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a benchmark makes thousands of requests."""

    def _serve(self) -> None:
        try:
            reply = self._reply()
        except ApiError as error:
            self.close_connection = True  # the rest of the stream cannot be trusted
            reply = error.reply()
        except Exception:
            # A bug of the sandbox: answer it plainly rather than leave the client guessing.
            logger.exception("the sandbox failed on %s %s", self.command, self.path)
            reply = ApiError(500, "the sandbox failed: see its log").reply()
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def _reply(self) -> Reply:
        url = urlsplit(self.path)
        body = self._body()
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        headers = dict(self.headers.items())
        return self.server.sandbox.handle(self.command, url.path, query, headers, body)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send a Content-Length, not a chunked body")
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(length) > MAX_BODY:
            raise ApiError(413, "the body is too large")
        return self.rfile.read(int(length))

    # The base class dispatches on these names.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815


class SandboxServer:
    """A :class:`Sandbox` served over HTTP on a background thread, from construction on.

    ``port=0`` picks a free port; :attr:`url` says where it is. Use as a context manager, or
    call :meth:`close`, which stops serving and closes every socket.
    """

    def __init__(
        self, sandbox: Sandbox | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.sandbox = sandbox if sandbox is not None else Sandbox()
        self._httpd = _HTTPServer((host, port), self.sandbox)
        self.host, self.port = host, int(self._httpd.server_address[1])
        self._closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() waits up to one poll interval
            name=f"recq-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL to give clients, e.g. ``http://127.0.0.1:54321``."""
        host = _REACH_LOCALLY.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving, end open connections and close the listening socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.drop_connections()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def run_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_API_KEY,
    secret: str = DEFAULT_SECRET,
    latency: float = 0.0,
    rooms_live_by_default: bool = True,
    out: TextIO | None = None,
) -> None:
    """Serve a sandbox until SIGINT or SIGTERM, after printing how to point recq at it.

    Must run on the main thread (signal handlers); the previous handlers are restored after.
    """
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    sandbox = Sandbox(api_key, secret, latency=latency, rooms_live_by_default=rooms_live_by_default)
    try:
        with SandboxServer(sandbox, host=host, port=port) as server:
            print(_banner(server.url, api_key, secret), file=out or sys.stdout, flush=True)
            while not stop.wait(0.5):  # a timeout, so a signal is noticed even if wait misses it
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _banner(url: str, api_key: str, secret: str) -> str:
    return (
        f"VideoSDK sandbox on {url} (api key {api_key}); point recq at it with: "
        f"VIDEOSDK_API_ENDPOINT={url} VIDEOSDK_API_KEY={api_key} VIDEOSDK_SECRET={secret}"
    )
