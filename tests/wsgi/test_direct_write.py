"""A pool thread writing a whole WSGI response to the socket itself (http/wire.py), over real
sockets: when it does, when it must not, and that the loop still learns of every response.

`DirectWire.write_last` is wrapped to record what each direct write did: (bytes of the
response, bytes the socket took, whether the loop needed no post).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from dualgate.http import connection
from dualgate.http.cycle import RequestCycle
from dualgate.http.wire import DirectWire, Written, wire_fd
from tests.conftest import Reader, ServeFactory, connect
from tests.proxies import Certs

pytestmark = pytest.mark.usefixtures("both_parsers")

BIG = 1 << 20  # sent whole (a one-item list), larger than a socket takes at once


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [bytes(range(256)) * (BIG // 256)]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one ", b"two"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [path.encode()]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int, bool]]]:
    recorded: list[tuple[int, int, bool]] = []
    original = DirectWire.write_last

    def write_last(
        wire: DirectWire, cycle: RequestCycle, data: bytes, closes: bool
    ) -> tuple[int, bool]:
        written, settled = original(wire, cycle, data, closes)
        recorded.append((len(data), written, settled))
        return written, settled

    monkeypatch.setattr(DirectWire, "write_last", write_last)
    yield recorded


def settled_count(writes: list[tuple[int, int, bool]], count: int) -> int:
    """len(writes) once it reaches `count` (or after 5 s): a thread records its write only
    after the client may already have read the response."""
    deadline = time.monotonic() + 5
    while len(writes) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(writes)


def get(reader: Reader, sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, _, body = reader.read_response()
    assert status == b"HTTP/1.1 200 OK"
    return body


def test_keep_alive_responses_are_written_by_the_thread(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    server = serve(app)
    with connect(server.port) as sock:
        reader = Reader(sock)
        for index in range(5):
            assert get(reader, sock, f"/{index}") == f"/{index}".encode()
    # Each response went out whole from its thread, and needed no post: the loop learned of
    # it from the next request's bytes (or the close).
    assert settled_count(writes, 5) == 5
    assert all(written == size and settled for size, written, settled in writes)


def test_a_thread_that_wrote_its_response_is_free_before_the_loop_hears_of_it(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    # A long keep-alive timeout: the sweep, the loop's only news of an idle connection's
    # response, runs once a second.
    server = serve(app, threads=1, timeout_keep_alive=30, timeout_worker=0.2)
    with connect(server.port) as idle:
        assert get(Reader(idle), idle, "/first") == b"/first"
        deadline = time.monotonic() + 0.3
        while server.stats().pool_busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats().pool_busy == 0
        # The one thread serves another client meanwhile, rather than a 503.
        with connect(server.port) as other:
            assert get(Reader(other), other, "/second") == b"/second"
    assert settled_count(writes, 2) == 2
    assert all(settled for _, _, settled in writes)


def test_an_idle_connection_gets_its_keep_alive_deadline(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    server = serve(app, timeout_keep_alive=0.4)
    with connect(server.port) as idle:
        assert get(Reader(idle), idle, "/first") == b"/first"
        # The sweep settled the response, so the idle connection's keep-alive deadline ran.
        started = time.monotonic()
        assert idle.recv(1) == b""
        assert time.monotonic() - started < 3.0
    assert settled_count(writes, 1) == 1


class _Sentinel:
    """Put in a request's environ: alive as long as something keeps the environ."""


def test_an_idle_connection_keeps_nothing_of_its_last_request(
    serve: ServeFactory, writes: list[tuple[int, int, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every request's cycle and environ, watched by weak references.
    cycles: list[weakref.ref[RequestCycle]] = []
    environs: list[weakref.ref[_Sentinel]] = []

    class WatchedCycle(RequestCycle):
        __slots__ = ("__weakref__",)

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            cycles.append(weakref.ref(self))

    def watched_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        sentinel = environ["test.sentinel"] = _Sentinel()
        environs.append(weakref.ref(sentinel))
        return app(environ, start_response)

    monkeypatch.setattr(connection, "RequestCycle", WatchedCycle)
    # No sweep: what the loop does at its events alone must let go of the finished requests.
    monkeypatch.setattr(connection.HTTPProtocol, "check_deadline", lambda self, now: None)
    server = serve(watched_app, timeout_keep_alive=30)
    idle = [connect(server.port) for _ in range(3)]
    try:
        for index, sock in enumerate(idle):
            assert get(Reader(sock), sock, f"/{index}") == f"/{index}".encode()
            # Written by its thread, which tells the loop nothing (the connection stays idle).
            assert settled_count(writes, index + 1) == index + 1
        assert all(settled for _, _, settled in writes)
        # One more event on the loop, on another connection: one accepted.
        with connect(server.port):
            deadline = time.monotonic() + 5
            while any(ref() is not None for ref in cycles + environs):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert len(cycles) == len(environs) == 3
            assert [ref() for ref in cycles] == [None, None, None]
            assert [ref() for ref in environs] == [None, None, None]
            # Nor does it keep a wire: the one the first response used served all three.
            assert server.state is not None
            assert len(server.state.spare_wires) == 1
        # Still served as keep-alive connections.
        for index, sock in enumerate(idle):
            assert get(Reader(sock), sock, f"/again{index}") == f"/again{index}".encode()
    finally:
        for sock in idle:
            sock.close()


def test_pipelined_requests_do_not_wait_for_the_sweep(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    # A long keep-alive timeout makes the sweep run once a second: an answer that waited for
    # it would take that long.
    server = serve(app, timeout_keep_alive=30)
    with connect(server.port) as sock:
        reader = Reader(sock)
        for _ in range(5):
            started = time.monotonic()
            sock.sendall(
                b"".join(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3))
            )
            for index in range(3):
                status, _, body = reader.read_response()
                assert (status, body) == (b"HTTP/1.1 200 OK", f"/{index}".encode())
            assert time.monotonic() - started < 0.5
    assert settled_count(writes, 15) == 15


def test_a_response_the_socket_cannot_take_at_once_is_finished_by_the_loop(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    server = serve(app)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow, small client
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    with sock:
        # Pipelined, and not read for a while: the threads' writes fill the socket's buffers.
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 6)
        time.sleep(0.5)
        reader = Reader(sock)
        for _ in range(6):
            status, _, body = reader.read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert body == bytes(range(256)) * (BIG // 256)
        # The connection is still good for the next request.
        assert get(reader, sock, "/after") == b"/after"
    # Some response went out only in part from its thread (the rest from the loop); after one
    # that did, bytes were still queued on the loop for the next, which the loop then wrote.
    assert any(0 <= written < size and not settled for size, written, settled in writes)
    assert len(writes) <= 7


def test_a_streamed_response_goes_through_the_loop(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    server = serve(app)
    with connect(server.port) as sock:
        reader = Reader(sock)
        assert get(reader, sock, "/stream") == b"one two"
        assert get(reader, sock, "/after") == b"/after"
    assert settled_count(writes, 1) == 1  # only /after


def test_connection_close_and_access_log_are_told_at_once(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    server = serve(app, access_log=True, timeout_keep_alive=30)
    with connect(server.port) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert Reader(sock).read_response()[2] == b"/a"
    with connect(server.port) as sock:
        sock.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        started = time.monotonic()
        assert Reader(sock).read_response()[2] == b"/b"
        assert sock.recv(1) == b""  # closed at once, not at the next sweep
        assert time.monotonic() - started < 0.5
    assert settled_count(writes, 2) == 2
    assert [settled for _, _, settled in writes] == [False, False]


def test_metrics_count_what_the_thread_wrote(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    server = serve(app, metrics_address="127.0.0.1:0")
    received = 0
    with connect(server.port) as sock:
        for index in range(3):
            sock.sendall(f"GET /{index} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            _, _, body = Reader(sock).read_response()
            received += len(body)
    assert settled_count(writes, 3) == 3
    deadline = time.monotonic() + 5
    while server.stats().requests.get(("wsgi", "2xx"), 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = server.stats()
    assert stats.requests.get(("wsgi", "2xx")) == 3
    assert stats.sent_bytes == sum(size for size, _, _ in writes)


def test_no_thread_writes_under_tls(
    serve: ServeFactory, tls_certs: Certs, writes: list[tuple[int, int, bool]]
) -> None:
    server = serve(
        app,
        ssl_certfile=str(tls_certs.server_cert_file),
        ssl_keyfile=str(tls_certs.server_key_file),
    )
    context = tls_certs.client_context()
    with connect(server.port) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        reader = Reader(sock)
        for index in range(3):
            assert get(reader, sock, f"/{index}") == f"/{index}".encode()
    assert writes == []


def test_no_thread_writes_under_uvloop(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    pytest.importorskip("uvloop")
    server = serve(app, loop="uvloop")
    with connect(server.port) as sock:
        reader = Reader(sock)
        for index in range(3):
            assert get(reader, sock, f"/{index}") == f"/{index}".encode()
    assert writes == []


def test_a_client_gone_before_the_write_gets_nothing_written(
    serve: ServeFactory, writes: list[tuple[int, int, bool]]
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    server = serve(slow)
    with connect(server.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.wait(10)
    time.sleep(0.2)  # the reset reaches the loop: the connection is lost
    release.set()
    deadline = time.monotonic() + 5
    while not writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writes == [(writes[0][0], 0, False)]
    with connect(server.port) as sock:
        assert get(Reader(sock), sock, "/fine") == b"/fine"


def test_the_wire_refuses_a_connection_that_is_gone() -> None:
    # The lock and the gone mark are what keep a thread off a closed (or reused) descriptor.
    left, right = socket.socketpair()
    written = Written()
    with left, right:
        wire = DirectWire(written)
        cycle = object.__new__(RequestCycle)
        wire.lend(cycle, left.fileno(), always_wake=False)
        wire.lost()
        assert wire.write_last(cycle, b"data", closes=False) == (0, False)
        wire.lend(cycle, left.fileno(), always_wake=False)
        wire.give_back(cycle)
        assert wire.write_last(cycle, b"data", closes=False) == (0, False)
        right.setblocking(False)
        with pytest.raises(BlockingIOError):
            right.recv(10)
        assert not written  # only a response written in full is queued for the loop
        wire = DirectWire(written)
        wire.lend(cycle, left.fileno(), always_wake=False)
        assert wire.write_last(cycle, b"data", closes=False) == (4, True)
        assert right.recv(10) == b"data"
        assert list(written) == [wire]
        assert wire.claim() == (cycle, 4)
        assert wire.claim() is None
        assert wire.claim_written() is None  # claimed at its own event: the queue's is stale


def test_only_asyncio_socket_transports_lend_their_socket() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        assert wire_fd(transport) == transport.get_extra_info("socket").fileno() >= 0
        assert wire_fd(asyncio.Transport()) == -1
        transport.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
