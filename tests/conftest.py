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

SOCKET_TIMEOUT = 10.0


@contextmanager
def running_server(app: Any, **options: Any) -> Iterator[Server]:
    """Serve `app` in a background thread; yields once the socket is bound."""
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    options.setdefault("access_log", False)
    options.setdefault("loop", "asyncio")
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


def read_response(sock: socket.socket) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Read one response with a Content-Length or chunked body.

    Returns (status line, headers, body).
    """
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {buffer!r}")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()

    def fill(size: int) -> None:
        nonlocal rest
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk

    if b"content-length" in headers:
        size = int(headers[b"content-length"])
        fill(size)
        return status, headers, rest[:size]
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                fill(len(rest) + 1)
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            fill(size + 2)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                return status, headers, body
    return status, headers, rest


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

# -- helpers for the raw-socket protocol tests (tests/test_http_*.py) ----------------------

OK_BODY = b"ok"


def ok_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The smallest app: 200 with a fixed body."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [OK_BODY]


class Reader:
    """Reads several responses off one connection, keeping bytes that arrive early.

    `read_response` (above) drops what follows the body it reads; pipelined responses, and a
    HEAD response followed by another one, need the leftover bytes kept.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def read_head(self) -> tuple[bytes, dict[bytes, bytes]]:
        """Status line and headers (names lower-cased; a repeated name keeps the last value)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError(f"closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed mid-line: {self.buffer!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_until_closed(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def read_response(self, *, head: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """One response; `head=True` for the answer to a HEAD request (never a body)."""
        status, headers = self.read_head()
        if head or status.split(b" ")[1][:1] == b"1" or b" 204 " in status + b" ":
            return status, headers, b""
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size = int(self.read_line().split(b";")[0], 16)
                if size == 0:
                    while self.read_line():  # trailer section, up to the empty line
                        pass
                    return status, headers, body
                body += self.read_exact(size)
                if self.read_exact(2) != b"\r\n":
                    raise ConnectionError("chunk not followed by CRLF")
        if b"content-length" in headers:
            return status, headers, self.read_exact(int(headers[b"content-length"]))
        return status, headers, self.read_until_closed()


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
