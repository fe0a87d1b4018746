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
from asyncio.sslproto import SSLProtocol
from collections.abc import Iterator

import pytest

from tests.conftest import SOCKET_TIMEOUT, Receive, Scope, Send, ServeFactory
from tests.proxies import Certs

CONNECTIONS = 20
BODY = b"x" * 300_000  # more than one TLS record and more than a socket buffer takes at once


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def ssl_protocols() -> int:
    return sum(1 for item in gc.get_objects() if isinstance(item, SSLProtocol))


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settled(before: int) -> int:
    """SSL protocols alive beyond `before`, once the server has handled every close (bounded
    polling: each one goes as its connection_lost runs on the server's loop)."""
    extra = ssl_protocols() - before
    for _ in range(100):
        if extra <= 0:
            break
        time.sleep(0.05)
        extra = ssl_protocols() - before
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
    before = ssl_protocols()
    for _ in range(CONNECTIONS):
        exchange(server.port, context, read_all=read_all)
    assert settled(before) == 0
