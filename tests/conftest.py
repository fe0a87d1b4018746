"""Fixtures: a real dualgate server on 127.0.0.1 and an ephemeral port, and raw-socket helpers."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dualgate import Config, Server
from tests.http_client import read_response

SOCKET_TIMEOUT = 10.0
# The request head parser (`--http`) of the servers started here: DUALGATE_TEST_HTTP for a whole
# run (h11 or httptools), else auto; the wire-level modules run under both (`both_parsers`).
_http_parser = [os.environ.get("DUALGATE_TEST_HTTP", "auto")]


@pytest.fixture(scope="module", params=["h11", "httptools"])
def both_parsers(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every server a module starts reads requests with this parser; each module runs twice.

    Module-scoped, so that module-scoped servers get it too and pytest groups a module's tests
    by parser. Use it as `pytestmark = pytest.mark.usefixtures("both_parsers")`."""
    _http_parser.append(request.param)
    yield request.param
    _http_parser.pop()


@contextmanager
def running_server(app: Any, **options: Any) -> Iterator[Server]:
    """Serve `app` in a background thread; yields once the socket is bound."""
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    options.setdefault("access_log", False)
    options.setdefault("loop", "asyncio")
    options.setdefault("http", _http_parser[-1])
    server = Server(Config(app=app, **options))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=serve, name="dualgate-test-server", daemon=True)
    thread.start()
    assert server.started.wait(SOCKET_TIMEOUT), "server did not start"
    if server.startup_error is not None:
        thread.join(SOCKET_TIMEOUT)
        raise server.startup_error
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(SOCKET_TIMEOUT)
        assert not thread.is_alive(), "server did not stop"


ServeFactory = Callable[..., Server]


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """serve(app, **config) starts a server for this test and stops it afterwards."""
    stack: list[Any] = []

    def start(app: Any, **options: Any) -> Server:
        manager = running_server(app, **options)
        server = manager.__enter__()
        stack.append(manager)
        return server

    yield start
    while stack:
        stack.pop().__exit__(None, None, None)


def connect(port: int, timeout: float = SOCKET_TIMEOUT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, data: bytes, timeout: float = SOCKET_TIMEOUT) -> bytes:
    """Send raw bytes, half-close, and read everything the server sends until it closes."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


# The WSGI conformance fixtures (`wsgi_url`, parametrized over feeders) live in wsgi_feeders.py;
# importing them here makes them visible to every test module. (Imported last: that module
# imports `running_server` from this one.)
# Likewise the real nginx and HAProxy in front of an upstream, and trustme certificates
# (tests/proxies.py).
from tests.proxies import haproxy_proxy as haproxy_proxy  # noqa: E402
from tests.proxies import nginx_proxy as nginx_proxy  # noqa: E402
from tests.proxies import raw_upstream as raw_upstream  # noqa: E402
from tests.proxies import tls_certs as tls_certs  # noqa: E402
from tests.wsgi_feeders import wsgi_feeder as wsgi_feeder  # noqa: E402
from tests.wsgi_feeders import wsgi_url as wsgi_url  # noqa: E402

# -- helpers for the raw-socket protocol tests (tests/http/test_*.py) ----------------------

OK_BODY = b"ok"


def ok_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The smallest app: 200 with a fixed body."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [OK_BODY]


class Reader:
    """Reads responses off one connection, keeping bytes that arrive early.

    `read_response` parses with h11 (tests/http_client.py); the raw reads are for tests that
    check the bytes themselves (chunk framing, an interim 100 Continue).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def read_head(self) -> tuple[bytes, dict[bytes, bytes]]:
        """Status line and headers (parsed by h11) of the next response, interim or final.

        The body's raw bytes stay unread, for `read_line` and `read_exact`.
        """
        response = read_response(self, head_only=True)
        return response.status_line, dict(response.headers)

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self.fill():
                raise ConnectionError(f"closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self.fill():
                raise ConnectionError(f"closed mid-line: {self.buffer!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_until_closed(self) -> bytes:
        while self.fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def read_response(self, *, head: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """One whole response: (status line, headers, body); `head=True` answers a HEAD.

        Names are lower-cased; a repeated name keeps its last value. A response broken off
        before its framing says it ended raises ConnectionError.
        """
        response = read_response(self, b"HEAD" if head else b"GET")
        if not response.complete:
            raise ConnectionError(f"closed mid-body after {len(response.body)} bytes")
        return response.status_line, dict(response.headers), response.body


def assert_serves(port: int, path: bytes = b"/") -> None:
    """A fresh connection gets a 200: the server survived whatever the test did before."""
    with connect(port) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = Reader(sock).read_response()
        assert status == b"HTTP/1.1 200 OK", status


# -- helpers for the ASGI and WSGIMiddleware tests (tests/test_asgi_*.py, test_middleware_*.py) --

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi_app(handler: ASGIApp, startup: Callable[[Scope], None] | None = None) -> ASGIApp:
    """An ASGI app: `handler` for http scopes; lifespan answered (`startup(scope)` first)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await handler(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if startup is not None:
                    startup(scope)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def request(
    port: int, data: bytes, *, head: bool = False
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One raw request on a fresh connection; its response (status line, headers, body)."""
    with connect(port) as sock:
        sock.sendall(data)
        return Reader(sock).read_response(head=head)


class ServerProcess:
    """A server in a subprocess; stderr is drained by a thread so the pipe never fills."""

    PORT_LINE = re.compile(r"https?://127\.0\.0\.1:(\d+)")

    def __init__(self, argv: list[str], cwd: str | os.PathLike[str] | None = None) -> None:
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_port(self, timeout: float = SOCKET_TIMEOUT) -> int:
        """The port from the first log line naming http(s)://127.0.0.1:PORT (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no port logged in {timeout}s: {self.stderr}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"server exited: {self.stderr}"
            found = self.PORT_LINE.search(line)
            if found:
                return int(found.group(1))

    def status_kb(self, key: str) -> int:
        """A `kB` field of /proc/PID/status, e.g. VmRSS or VmHWM."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"{key} not in /proc/{self.process.pid}/status")

    def stop(self, timeout: float = SOCKET_TIMEOUT) -> int:
        """SIGTERM, bounded wait (then SIGKILL); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout)
        self._reader.join(timeout)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
