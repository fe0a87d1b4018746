"""HTTP/2's figures, counted over a real socket and rendered for Prometheus; the byte counters
against what really crossed the socket, plain and under TLS; nothing metered with metrics off."""

from __future__ import annotations

import contextlib
import socket
import ssl

import httpx
import pytest

from dualgate import Server
from dualgate.h2.protocol import H2Protocol, MeteredH2Protocol
from dualgate.metrics.prometheus import render
from tests.conftest import running_server
from tests.h2.apps import asgi_app, big_body, wsgi_app
from tests.h2.client import Client, tls_socket
from tests.metrics.test_server import scrape
from tests.metrics.test_units import value
from tests.proxies import Certs, make_certs

TIMEOUT = 10.0


def test_http2_requests_resets_and_goaways_are_counted() -> None:
    with running_server(asgi_app, http2="on", metrics_address="127.0.0.1:0") as server:
        base = f"http://127.0.0.1:{server.addresses[0][1]}"
        with httpx.Client(http1=False, http2=True, timeout=10) as client:
            for _ in range(3):
                assert client.get(f"{base}/info").http_version == "HTTP/2"
            snapshot = server.stats()
            assert snapshot.h2_streams_open == 0
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{base}/info").http_version == "HTTP/1.1"
        stats = server.stats()
    assert (stats.h2_connections, stats.h2_streams) == (1, 3)
    assert stats.requests_by_version() == {"1.1": 1, "2": 3}
    text = render(stats).decode()
    assert 'dualgate_http_requests_total{http_version="2"} 3' in text
    assert "dualgate_http2_connections_total 1" in text
    assert 'dualgate_http2_resets_total{by="client"} 0' in text


# -- bytes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("h2-metrics-certs"))


def _open(server: Server, certs: Certs | None) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", server.addresses[0][1]), timeout=TIMEOUT)
    return raw if certs is None else tls_socket(raw, certs.client_context())


def read_to_the_end(client: Client) -> None:
    """Every byte the server still writes, counted, until it closes (h2's client is not fed:
    it takes nothing after its own GOAWAY)."""
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while data := client.sock.recv(65536):
            client.received += len(data)


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
@pytest.mark.parametrize("app", [wsgi_app, asgi_app], ids=["wsgi", "asgi"])
def test_http2_bytes_both_ways_are_counted_exactly(tls: bool, app: object, certs: Certs) -> None:
    tls_options = certs.server_options() if tls else {}
    with running_server(app, http2="on", metrics_address="127.0.0.1:0", **tls_options) as server:
        client = Client(_open(server, certs if tls else None))
        try:
            upload = big_body(50_000)  # within the stream's first window
            client.send(1, b"POST", b"/echo", body=upload)
            assert client.answer(1).startswith(b"50000 ")
            client.get(b"/big?300000", 3)  # more than the windows: WINDOW_UPDATEs both ways
            assert client.answer(3) == big_body(300_000)
            client.conn.close_connection()  # the client's GOAWAY: the server closes
            client.flush()
            read_to_the_end(client)
        finally:
            client.close()
        assert client.sent > 50_000 and client.received > 300_000
        families = scrape(server)
    # Every byte the client wrote was read by the server before it closed, and every byte the
    # server wrote was read by the client before it saw the close (TLS: the plaintext).
    received = value(families["dualgate_received_bytes"], "dualgate_received_bytes_total")
    sent = value(families["dualgate_sent_bytes"], "dualgate_sent_bytes_total")
    assert (received, sent) == (client.sent, client.received)


def _h2_connections(server: Server) -> list[H2Protocol]:
    state = server.state
    assert state is not None
    return [c for c in list(state.connections) if isinstance(c, H2Protocol)]


def test_with_metrics_off_an_http2_connection_writes_to_its_transport_directly() -> None:
    with running_server(asgi_app, http2="on") as server:
        client = Client(server.addresses[0][1])
        try:
            client.get(b"/info", 1)
            assert client.answer(1).startswith(b"HTTP/2 ")
            (connection,) = _h2_connections(server)
            # Not a counting function in between: the transport's own bound write.
            send, write = connection._send, connection.transport.write
        finally:
            client.close()
        stats = server.stats()
    assert type(connection) is H2Protocol
    assert send == write
    assert (stats.received_bytes, stats.sent_bytes) == (0, 0)


def test_with_metrics_on_an_http2_connection_is_the_metered_one() -> None:
    with running_server(asgi_app, http2="on", metrics_address="127.0.0.1:0") as server:
        client = Client(server.addresses[0][1])
        try:
            client.get(b"/info", 1)
            assert client.answer(1).startswith(b"HTTP/2 ")
            (connection,) = _h2_connections(server)
        finally:
            client.close()
    assert type(connection) is MeteredH2Protocol
