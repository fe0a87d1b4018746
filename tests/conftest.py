"""Fixtures: a real dualgate server on 127.0.0.1 and an ephemeral port, and raw-socket helpers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
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
    if failure:
        raise failure[0]
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
    """Read one response with a Content-Length or chunked body; returns (status line, headers, body)."""
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
