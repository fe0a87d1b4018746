"""Limits and timeouts: idle keep-alive, slow heads, head and body sizes, concurrency, workers.

Every limit is set tiny so the tests stay fast; every wait is bounded.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    ServeFactory,
    assert_serves,
    connect,
    ok_app,
    read_until_closed,
)

# Every server here runs once with each request head parser (h11, httptools).
pytestmark = pytest.mark.usefixtures("both_parsers")


class CountingApp:
    """Counts the requests that reach it, reads their bodies, answers 200 "ok"."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        with self.lock:
            self.calls += 1
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


def send_until_answered(sock: socket.socket, pieces: list[bytes], pause: float) -> bytes:
    """Send `pieces` one by one, `pause` apart, until the server answers or closes.

    Returns everything the server sent (read until it closes); fails if it never answers.
    """
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        if select.select([sock], [], [], pause)[0]:
            break
    else:
        raise AssertionError("the server never answered")
    return read_until_closed(sock)


def status_of(response: bytes) -> bytes:
    return response.partition(b"\r\n")[0]


# -- timeouts -----------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed_after_timeout(serve: ServeFactory) -> None:
    server = serve(ok_app, timeout_keep_alive=0.3)
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = Reader(sock).read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert headers.get(b"connection", b"").lower() != b"close"
        idle_since = time.monotonic()
        assert read_until_closed(sock) == b"", "an idle close sends nothing"
        idle = time.monotonic() - idle_since
    assert 0.2 <= idle < 3.0, f"closed after {idle:.2f}s of idleness, timeout is 0.3s"


def test_slow_request_head_is_cut_off(serve: ServeFactory) -> None:
    app = CountingApp()
    server = serve(app, timeout_request_head=1.0, timeout_keep_alive=5.0)
    # A head that would never end: one byte every 0.2 s, at most 60 bytes (12 s).
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60
    with connect(server.port) as sock:
        started = time.monotonic()
        response = send_until_answered(sock, [head[i : i + 1] for i in range(len(head))], 0.2)
        elapsed = time.monotonic() - started
    # RFC 9110 15.5.9: 408 when the server would rather close than keep waiting; a bare close
    # is allowed too.
    assert response == b"" or status_of(response) == b"HTTP/1.1 408 Request Timeout", response
    assert 0.8 <= elapsed < 3.0, f"cut off after {elapsed:.2f}s, timeout is 1s"
    assert app.calls == 0
    assert_serves(server.port)


# -- head size (RFC 6585 section 5) -------------------------------------------------------


def test_head_larger_than_limit_in_one_piece_gets_431(serve: ServeFactory) -> None:
    app = CountingApp()
    server = serve(app, max_head_size=1024)
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        response = read_until_closed(sock)
    assert status_of(response) == b"HTTP/1.1 431 Request Header Fields Too Large", response
    assert app.calls == 0
    assert_serves(server.port)


def test_long_request_target_gets_414(serve: ServeFactory) -> None:
    # RFC 9112 section 3: a target longer than the server will parse MUST get 414. Both shapes:
    # the whole head in one piece, and a request line that never ends within the limit.
    app = CountingApp()
    server = serve(app, max_head_size=1024)
    for request in (
        b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + b"a" * 2000,
    ):
        with connect(server.port) as sock:
            sock.sendall(request)
            response = read_until_closed(sock)
        assert status_of(response) == b"HTTP/1.1 414 URI Too Long", response
    assert app.calls == 0
    assert_serves(server.port)


def test_head_just_under_limit_is_served(serve: ServeFactory) -> None:
    app = CountingApp()
    server = serve(app, max_head_size=1024)
    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
    padding = b"a" * (1024 - len(start) - 4 - 16)
    with connect(server.port) as sock:
        sock.sendall(start + padding + b"\r\n\r\n")
        status, _, _ = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert app.calls == 1


def test_growing_head_gets_431(serve: ServeFactory) -> None:
    app = CountingApp()
    server = serve(app, max_head_size=1024)
    lines = [b"GET / HTTP/1.1\r\nHost: x\r\n"] + [
        b"X-Line-%03d: %s\r\n" % (i, b"b" * 80) for i in range(100)
    ]
    with connect(server.port) as sock:
        response = send_until_answered(sock, lines, 0.05)
    assert status_of(response) == b"HTTP/1.1 431 Request Header Fields Too Large", response
    assert app.calls == 0
    assert_serves(server.port)


# -- body size (RFC 9110 section 15.5.14) -------------------------------------------------


def test_declared_content_length_over_limit_gets_413(serve: ServeFactory) -> None:
    app = CountingApp()
    server = serve(app, max_body_size=100)
    with connect(server.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"x" * 101)
        response = read_until_closed(sock)
    assert status_of(response) == b"HTTP/1.1 413 Content Too Large", response
    assert app.calls == 0
    assert_serves(server.port)


def test_body_at_limit_is_served(serve: ServeFactory) -> None:
    app = CountingApp()
    server = serve(app, max_body_size=100)
    with connect(server.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        status, _, _ = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert app.calls == 1


def test_chunked_body_growing_over_limit_gets_413(serve: ServeFactory) -> None:
    app = CountingApp()
    server = serve(app, max_body_size=100)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = [b"32\r\n" + b"c" * 50 + b"\r\n" for _ in range(20)]
    with connect(server.port) as sock:
        response = send_until_answered(sock, [head, *chunks], 0.05)
    assert status_of(response) == b"HTTP/1.1 413 Content Too Large", response
    assert app.calls == 0
    assert_serves(server.port)


# -- concurrency and workers --------------------------------------------------------------


def test_connection_over_limit_concurrency_gets_503(serve: ServeFactory) -> None:
    server = serve(ok_app, limit_concurrency=2)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server.port) as first, connect(server.port) as second:
        for sock in (first, second):
            sock.sendall(request)
            assert Reader(sock).read_response()[0] == b"HTTP/1.1 200 OK"
        with connect(server.port) as third:
            third.sendall(request)
            response = read_until_closed(third)
        assert status_of(response) == b"HTTP/1.1 503 Service Unavailable", response
        # Once one of the two is closed (by the server, so it has counted it), there is room.
        first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(read_until_closed(first)) == b"HTTP/1.1 200 OK"
        assert_serves(server.port)


def test_exhausted_worker_pool_gets_503_with_retry_after(serve: ServeFactory) -> None:
    entered = threading.Event()
    release = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/block":
            entered.set()
            release.wait(SOCKET_TIMEOUT)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    server = serve(app, threads=1, timeout_worker=0.2)
    try:
        with connect(server.port) as blocked:
            blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            assert entered.wait(SOCKET_TIMEOUT), "the blocking request never reached the app"
            with connect(server.port) as sock:
                started = time.monotonic()
                sock.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
                status, headers, _ = Reader(sock).read_response()
                waited = time.monotonic() - started
            assert status == b"HTTP/1.1 503 Service Unavailable"
            assert headers[b"retry-after"].isdigit(), headers
            assert 0.1 <= waited < 3.0, f"refused after {waited:.2f}s, timeout_worker is 0.2s"
            release.set()
            status, _, body = Reader(blocked).read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert body == b"/block"
        assert_serves(server.port)
    finally:
        release.set()


def test_header_field_count_limit(serve: ServeFactory) -> None:
    """--max-header-fields: at the limit the request is served; one more field gets 431, and the
    pipelined request behind it never reaches the application."""
    app = CountingApp()
    server = serve(app, max_header_fields=10)
    fields = b"".join(b"X-F%d: v\r\n" % index for index in range(9))  # + Host = 10
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK" and body == b"ok"
    assert app.calls == 1
    with connect(server.port) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"X-Extra: v\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        response = read_until_closed(sock)
    assert status_of(response) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert response.count(b"HTTP/1.1") == 1
    assert app.calls == 1
    assert_serves(server.port)


def test_thousands_of_tiny_fields_refused_before_parsing(serve: ServeFactory) -> None:
    """7,000 tiny fields in a head under the 64 KiB size limit: the default field limit (100)
    refuses it with 431, counted on the raw bytes, so h11 never spends its tens of milliseconds
    of loop time parsing such a head."""
    app = CountingApp()
    server = serve(app)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"a: b\r\n" * 7000 + b"\r\n"
    assert len(head) < 65536
    with connect(server.port) as sock:
        sock.sendall(head)
        response = read_until_closed(sock)
    assert status_of(response) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert app.calls == 0
    assert_serves(server.port)
