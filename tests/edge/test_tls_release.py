"""A lost TLS connection lets go of its transport at once: asyncio's SSL protocol behind it (a
256 KiB read buffer, its SSLObject and memory BIOs) is freed by reference counting, not left
in a reference cycle of the connection's own objects for the cyclic GC's next full
collection. The soak found the cycle as RSS growing by tens of MiB a minute under TLS clients
that come and go (benchmarks/README.md, the soak); these tests run with the cyclic GC off, so
anything only it would free stays countable."""

from __future__ import annotations

import gc
import socket
import ssl
import time
import weakref
from asyncio.sslproto import SSLProtocol
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest
import wsproto
import wsproto.events

from tests.conftest import SOCKET_TIMEOUT, Receive, Scope, Send, ServeFactory
from tests.proxies import Certs

CONNECTIONS = 20
BODY = b"x" * 300_000  # more than one TLS record and more than a socket buffer takes at once


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    headers = [(b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def ssl_protocols() -> list[SSLProtocol]:
    # type(), not isinstance: a lazy proxy's __class__ (django's settings) would evaluate it.
    return [item for item in gc.get_objects() if issubclass(type(item), SSLProtocol)]


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settled(before: weakref.WeakSet[SSLProtocol]) -> int:
    """SSL protocols alive that were not before, once the server has handled every close
    (bounded polling: each one goes as its connection_lost runs on the server's loop)."""
    extra = -1
    for _ in range(100):
        extra = sum(1 for protocol in ssl_protocols() if protocol not in before)
        if not extra:
            break
        time.sleep(0.05)
    return extra


def exchange(port: int, context: ssl.SSLContext, *, read_all: bool) -> None:
    raw = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = tls.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 ")
        while read_all and tls.recv(65536):
            pass


@pytest.mark.usefixtures("no_cyclic_gc")
@pytest.mark.parametrize("read_all", [True, False], ids=["closed-by-server", "client-vanished"])
def test_a_lost_tls_connection_frees_its_ssl_protocol_without_the_cyclic_gc(
    serve: ServeFactory, tls_certs: Certs, read_all: bool
) -> None:
    server = serve(
        app,
        ssl_certfile=str(tls_certs.server_cert_file),
        ssl_keyfile=str(tls_certs.server_key_file),
        loop="asyncio",
    )
    context = tls_certs.client_context()
    exchange(server.port, context, read_all=True)  # the first one's imports and caches
    before = weakref.WeakSet(ssl_protocols())  # other tests' servers' may go meanwhile
    for _ in range(CONNECTIONS):
        exchange(server.port, context, read_all=read_all)
    extra = settled(before)
    assert extra == 0, f"{extra} SSL protocols alive after {CONNECTIONS} connections closed"


def h2_exchange(port: int, context: ssl.SSLContext) -> None:
    """One request over h2 (ALPN), read whole, then the client's GOAWAY and close."""
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/")],
            end_stream=True,
        )
        tls.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = tls.recv(65536)
            assert data, "the server closed before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                ended = ended or isinstance(event, h2.events.StreamEnded)
            tls.sendall(conn.data_to_send())
        conn.close_connection()
        tls.sendall(conn.data_to_send())
        while tls.recv(65536):
            pass


def ws_exchange(port: int, context: ssl.SSLContext) -> None:
    """A WebSocket opened and closed by the client's Close, over TLS."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        tls.sendall(ws.send(wsproto.events.Request(host="x", target="/")))
        accepted = closed = False
        while not closed:
            data = tls.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, wsproto.events.AcceptConnection):
                    accepted = True
                    tls.sendall(ws.send(wsproto.events.CloseConnection(code=1000)))
                closed = closed or isinstance(event, wsproto.events.CloseConnection)
            assert data or closed, "the server closed without a Close"
        assert accepted


@pytest.mark.usefixtures("no_cyclic_gc")
@pytest.mark.parametrize("protocol", ["h2", "websocket"])
def test_a_lost_tls_connection_frees_its_ssl_protocol_after_a_hand_over(
    serve: ServeFactory, tls_certs: Certs, protocol: str
) -> None:
    """The same once the HTTP/1.1 connection has handed its transport to HTTP/2 (ALPN) or to
    a WebSocket: neither the new protocol nor the old one keeps it."""
    server = serve(
        app,
        ssl_certfile=str(tls_certs.server_cert_file),
        ssl_keyfile=str(tls_certs.server_key_file),
        loop="asyncio",
        http2="on",
    )
    exchange = h2_exchange if protocol == "h2" else ws_exchange
    exchange(server.port, tls_certs.client_context())
    before = weakref.WeakSet(ssl_protocols())
    for _ in range(CONNECTIONS):
        exchange(server.port, tls_certs.client_context())
    extra = settled(before)
    assert extra == 0, f"{extra} SSL protocols alive after {CONNECTIONS} connections closed"
