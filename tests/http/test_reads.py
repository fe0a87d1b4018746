"""How a connection reads from its socket: into one reused buffer, never a fresh 256 KiB object
per read.

asyncio hands a plain Protocol a fresh bytes object per read, made as a 256 KiB buffer and
shrunk to what arrived, and so do the TLS layers of asyncio and uvloop (SSLObject.read(256 KiB)).
Freed 256 KiB buffers raise glibc's mmap threshold, so later ones come from the heap and,
shrunk around the small objects allocated meanwhile, fragment it: the soak measured the
server's RSS growing 18 MiB a minute under asyncio's loop (python -m benchmarks.soak
--server-arg=--loop=asyncio), and 4.2 MiB a minute on its TLS server under uvloop, glibc's
bytes in use flat and its free bytes growing; both flat with a fixed mmap threshold
(MALLOC_MMAP_THRESHOLD_=131072). A BufferedProtocol reads into one reused buffer instead: HTTP/1.1
on asyncio's loop and under TLS on either loop, HTTP/2 on every loop, and the memory-BIO TLS
that runs after a PROXY header.

Each test holds what is allocated during each of 50 requests on one connection, measured by
tracemalloc, under 160 KiB at the peak: the client's own reads take 64 KiB at a time, and a
server read of 256 KiB would show.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import tracemalloc
from collections.abc import Callable

import pytest
import wsproto
import wsproto.events

from tests.conftest import (
    OK_BODY,
    SOCKET_TIMEOUT,
    Reader,
    Receive,
    Scope,
    Send,
    ServeFactory,
    connect,
    ok_app,
)
from tests.h2.client import Client, tls_socket
from tests.proxies import Certs

READS = 50
PEAK_LIMIT = 160 * 1024

# Every server here runs once with each request head parser (h11, httptools).
pytestmark = pytest.mark.usefixtures("both_parsers")

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def peak_allocated(exchange: Callable[[], None]) -> int:
    """The most allocated at once (the server's and the client's) during an exchange, above
    what was allocated as it began (what a connection keeps from one request to the next, h2's
    closed streams, the client's answers, does not add up here): the median over READS
    exchanges, since tracemalloc counts every thread of the process, and a thread another test
    left ending may allocate during one of them. A read of 256 KiB would show in every one."""
    tracemalloc.start()
    try:
        peaks = []
        for _ in range(READS):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            exchange()
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
        return int(statistics.median(peaks))
    finally:
        tracemalloc.stop()


def http11_exchanges(sock: socket.socket) -> int:
    """One request to set the connection up, then the peak over READS more."""
    reader = Reader(sock)

    def exchange() -> None:
        sock.sendall(GET)
        status, _, _ = reader.read_response()
        assert status == b"HTTP/1.1 200 OK"

    exchange()  # connection and buffers set up before measuring
    return peak_allocated(exchange)


def h2_exchanges(sock: socket.socket) -> int:
    client = Client(sock)
    stream_ids = iter(range(1, 2 * READS + 4, 2))

    def exchange() -> None:
        stream_id = next(stream_ids)
        client.get(b"/", stream_id)
        assert client.answer(stream_id) == OK_BODY

    exchange()
    return peak_allocated(exchange)


def test_reads_reuse_one_buffer_instead_of_a_fresh_256_kib_each(serve: ServeFactory) -> None:
    server = serve(ok_app, loop="asyncio")
    with connect(server.port) as sock:
        peak = http11_exchanges(sock)
    assert peak < PEAK_LIMIT, f"{peak} bytes at the peak"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_reads_reuse_the_buffer_on_either_loop(
    serve: ServeFactory, tls_certs: Certs, loop: str
) -> None:
    server = serve(ok_app, loop=loop, **tls_certs.server_options())
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
    with raw, tls_certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        peak = http11_exchanges(sock)
    assert peak < PEAK_LIMIT, f"{peak} bytes at the peak"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_http2_reads_reuse_the_buffer(
    serve: ServeFactory, tls_certs: Certs, loop: str, tls: bool
) -> None:
    options = tls_certs.server_options() if tls else {}
    server = serve(ok_app, loop=loop, http2="on", **options)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
    sock = tls_socket(raw, tls_certs.client_context()) if tls else raw
    with raw, sock:
        peak = h2_exchanges(sock)
    assert peak < PEAK_LIMIT, f"{peak} bytes at the peak"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_after_a_proxy_header_reads_into_the_buffer(
    serve: ServeFactory, tls_certs: Certs, loop: str
) -> None:
    """The memory-BIO TLS (edge/tls_bio.py) decrypts into the buffer, and its raw side reads
    into it on asyncio's loop."""
    server = serve(ok_app, loop=loop, proxy_protocol=True, **tls_certs.server_options())
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
    with raw:
        raw.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\n")
        context: ssl.SSLContext = tls_certs.client_context()
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            peak = http11_exchanges(sock)
    assert peak < PEAK_LIMIT, f"{peak} bytes at the peak"


def test_uvloop_reads_into_its_own_buffer_and_asyncio_into_the_shared_one(
    serve: ServeFactory,
) -> None:
    import asyncio

    from dualgate.http.connection import HTTPProtocol

    for loop, buffered in (("asyncio", True), ("uvloop", False)):
        server = serve(ok_app, loop=loop)
        state = server.state
        assert state is not None
        with connect(server.port) as sock:
            sock.sendall(GET)
            assert Reader(sock).read_response()[0] == b"HTTP/1.1 200 OK"
            (connection,) = state.connections
        # The loops ask isinstance(protocol, BufferedProtocol): uvloop then calls get_buffer
        # and buffer_updated, two Python calls per read for a buffer it has itself.
        assert isinstance(connection, asyncio.BufferedProtocol) is buffered, loop
        assert isinstance(connection, HTTPProtocol)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """A WebSocket echo."""
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "bytes": message["bytes"]})


def ws_exchanges(sock: socket.socket) -> int:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    sock.sendall(ws.send(wsproto.events.Request(host="x", target="/")))

    def next_event() -> wsproto.events.Event:
        while True:
            for event in ws.events():
                return event
            data = sock.recv(65536)
            assert data, "the server closed"
            ws.receive_data(data)

    assert isinstance(next_event(), wsproto.events.AcceptConnection)

    def exchange() -> None:
        sock.sendall(ws.send(wsproto.events.BytesMessage(data=b"x" * 100)))
        answer = next_event()
        assert isinstance(answer, wsproto.events.BytesMessage) and answer.data == b"x" * 100

    exchange()
    return peak_allocated(exchange)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_websocket_reads_reuse_the_buffer(
    serve: ServeFactory, tls_certs: Certs, loop: str, tls: bool
) -> None:
    options = tls_certs.server_options() if tls else {}
    server = serve(echo, loop=loop, **options)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
    context = tls_certs.client_context()
    sock = context.wrap_socket(raw, server_hostname="localhost") if tls else raw
    with raw, sock:
        peak = ws_exchanges(sock)
    assert peak < PEAK_LIMIT, f"{peak} bytes at the peak"
