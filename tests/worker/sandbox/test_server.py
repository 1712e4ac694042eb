"""The HTTP server: keep-alive, clean shutdown, and run_forever for `recq fake-api`."""

from __future__ import annotations

import http.client
import io
import os
import signal
import socket
import threading

import pytest
import requests

from worker.sandbox import DEFAULT_API_KEY, SandboxServer, run_forever


def test_the_url_names_a_free_local_port(server):
    """Port 0 picks a free port, and the url says which."""
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


def test_requests_share_one_keep_alive_connection(server):
    """HTTP/1.1 keep-alive: several requests travel on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    sockets = []
    try:
        for _ in range(3):
            connection.request("GET", "/_sandbox/health")
            response = connection.getresponse()
            response.read()
            assert (response.status, response.version) == (200, 11)
            sockets.append(connection.sock)
    finally:
        connection.close()
    assert all(sock is sockets[0] for sock in sockets)


def test_close_ends_idle_connections_and_frees_the_port(start_server):
    """close() returns promptly even with a keep-alive connection open, and stops listening."""
    server = start_server()
    with requests.Session() as session:
        assert session.get(server.url + "/_sandbox/health", timeout=5).status_code == 200
        server.close()
        server.close()  # idempotent
        with pytest.raises(requests.ConnectionError):
            session.get(server.url + "/_sandbox/health", timeout=5)


def test_a_chunked_body_is_refused_with_411(server):
    """The sandbox wants a Content-Length, as every JSON client sends."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v2/recordings/start HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 411")


class _Output(io.StringIO):
    """Captures run_forever's banner and says when it was printed."""

    def __init__(self) -> None:
        super().__init__()
        self.printed = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self.printed.set()
        return written


def test_run_forever_prints_how_to_point_recq_at_it_and_stops_on_sigterm():
    """run_forever serves until SIGTERM after printing the endpoint, key and secret to use."""
    out = _Output()
    seen: dict[str, object] = {}

    def probe_then_stop() -> None:
        out.printed.wait(5)
        url = out.getvalue().split("VIDEOSDK_API_ENDPOINT=")[1].split()[0]
        seen["health"] = requests.get(url + "/_sandbox/health", timeout=5).status_code
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    prober = threading.Thread(target=probe_then_stop)
    prober.start()
    run_forever(port=0, secret="s3cret", out=out)
    prober.join()
    assert seen["health"] == 200
    banner = out.getvalue()
    assert banner.count("\n") == 1
    assert f"VIDEOSDK_API_KEY={DEFAULT_API_KEY} VIDEOSDK_SECRET=s3cret" in banner
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_server_can_be_used_as_a_context_manager():
    """Leaving the with block closes the server."""
    with SandboxServer() as server:
        port = server.port
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass
