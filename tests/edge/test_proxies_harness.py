"""The proxy harness (tests/proxies.py) proven against a raw upstream: a real nginx and a real
HAProxy forward what they should, and what they write is what dualgate's readers expect."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from dualgate.edge.forwarded import ProxyTrust
from dualgate.edge.proxy_protocol import V2_SIGNATURE, ProxyHeader, ProxyHeaderReader
from tests.proxies import (
    CLIENT_ADDRESS,
    NGINX_FORWARDING,
    RESPONSE,
    Certs,
    ProxyFactory,
    RawUpstream,
    client_connect,
    header_values,
    read_all,
    request_headers,
)

UpstreamFactory = Callable[..., RawUpstream]

SPOOFING_REQUEST = (
    b"GET /some/path?q=1 HTTP/1.1\r\n"
    b"Host: app.example:8443\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"Forwarded: for=6.6.6.6;proto=https\r\n"
    b"Connection: close\r\n"
    b"\r\n"
)


def send(port: int, request: bytes, tls: Certs | None = None) -> bytes:
    """One request from 127.0.0.2 (through TLS when `tls`); the whole response."""
    sock: socket.socket | ssl.SSLSocket = client_connect(port)
    if tls is not None:
        # wrap_socket detaches the plain socket: the wrapped one is what must be closed.
        sock = tls.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
    with sock:
        sock.sendall(request)
        return read_all(sock)


def one(raw: bytes, name: bytes) -> bytes:
    values = header_values(raw, name)
    assert len(values) == 1, (name, values, raw)
    return values[0]


def resolved(raw: bytes) -> tuple[object, ...]:
    """What dualgate's rules make of the forwarded head, the proxy being 127.0.0.1."""
    view = ProxyTrust("127.0.0.1").resolve(
        ("127.0.0.1", 1), request_headers(raw), "http", ("127.0.0.1", 8000)
    )
    assert view is not None
    return view.client, view.scheme, view.host, view.server


def test_nginx_forwards_the_usual_headers(
    nginx_proxy: ProxyFactory, raw_upstream: UpstreamFactory
) -> None:
    upstream = raw_upstream()
    proxy = nginx_proxy(upstream.address)
    response = send(proxy.port, SPOOFING_REQUEST)
    assert response.startswith(b"HTTP/1.1 200 OK"), response
    raw = upstream.next_request()
    assert raw.startswith(b"GET /some/path?q=1 HTTP/1.1\r\n")
    # nginx appends the address it saw to the client's list, and replaces Forwarded.
    assert one(raw, b"x-forwarded-for") == b"6.6.6.6, " + CLIENT_ADDRESS.encode()
    assert one(raw, b"x-forwarded-proto") == b"http"
    assert one(raw, b"x-forwarded-host") == b"app.example"
    assert one(raw, b"x-forwarded-port") == str(proxy.port).encode()
    assert one(raw, b"host") == b"app.example:8443"
    assert one(raw, b"forwarded") == (
        b'for="' + CLIENT_ADDRESS.encode() + b'";proto=http;host="app.example:8443"'
    )
    # Forwarded wins over X-Forwarded-*; the spoofed entries are passed over either way.
    assert resolved(raw) == (
        (CLIENT_ADDRESS, None),
        "http",
        b"app.example:8443",
        ("app.example", 8443),
    )


def test_nginx_to_a_unix_socket(
    nginx_proxy: ProxyFactory, raw_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = raw_upstream(tmp_path / "app.sock")
    proxy = nginx_proxy(upstream.address)
    assert send(proxy.port, SPOOFING_REQUEST).startswith(b"HTTP/1.1 200 OK")
    raw = upstream.next_request()
    assert one(raw, b"x-forwarded-for") == b"6.6.6.6, " + CLIENT_ADDRESS.encode()
    view = ProxyTrust("unix:").resolve(None, request_headers(raw), "http", None)
    assert view is not None
    assert view.client == (CLIENT_ADDRESS, None)


def test_nginx_terminating_tls(
    nginx_proxy: ProxyFactory, raw_upstream: UpstreamFactory, tls_certs: Certs
) -> None:
    upstream = raw_upstream()
    proxy = nginx_proxy(upstream.address, tls=tls_certs)
    assert proxy.scheme == "https"
    response = send(proxy.port, SPOOFING_REQUEST, tls=tls_certs)
    assert response.endswith(b"\r\n\r\nok"), response
    raw = upstream.next_request()
    assert one(raw, b"x-forwarded-proto") == b"https"
    assert one(raw, b"forwarded").endswith(b';proto=https;host="app.example:8443"')
    assert resolved(raw)[1] == "https"


def test_nginx_forwarding_can_be_replaced(
    nginx_proxy: ProxyFactory, raw_upstream: UpstreamFactory
) -> None:
    upstream = raw_upstream()
    only_xff = "\n".join(
        line for line in NGINX_FORWARDING.splitlines() if "X-Forwarded-For" in line
    )
    proxy = nginx_proxy(upstream.address, forwarding=only_xff)
    send(proxy.port, SPOOFING_REQUEST)
    raw = upstream.next_request()
    assert header_values(raw, b"x-forwarded-proto") == []
    # nginx passes the client's own Forwarded header on untouched when told nothing else,
    # and Forwarded wins: the client chose its address. README tells to set or drop it.
    assert one(raw, b"forwarded") == b"for=6.6.6.6;proto=https"
    assert resolved(raw)[:2] == (("6.6.6.6", None), "https")


def test_haproxy_send_proxy_v1(haproxy_proxy: ProxyFactory, raw_upstream: UpstreamFactory) -> None:
    upstream = raw_upstream()
    proxy = haproxy_proxy(upstream.address, send_proxy="v1", mode="tcp")
    sock = client_connect(proxy.port)
    with sock:
        client_port = sock.getsockname()[1]
        sock.sendall(SPOOFING_REQUEST)
        assert read_all(sock) == RESPONSE
    raw = upstream.next_request()
    line = f"PROXY TCP4 {CLIENT_ADDRESS} 127.0.0.1 {client_port} {proxy.port}\r\n".encode()
    assert raw.startswith(line + SPOOFING_REQUEST[:20]), raw
    header = ProxyHeaderReader().feed(raw)
    source, destination = (CLIENT_ADDRESS, client_port), ("127.0.0.1", proxy.port)
    assert header == ProxyHeader(1, "TCP4", source, destination, leftover=raw[len(line) :])


def test_haproxy_send_proxy_v2_http_mode(
    haproxy_proxy: ProxyFactory, raw_upstream: UpstreamFactory
) -> None:
    upstream = raw_upstream()
    proxy = haproxy_proxy(upstream.address, send_proxy="v2", mode="http")
    sock = client_connect(proxy.port)
    with sock:
        client_port = sock.getsockname()[1]
        sock.sendall(SPOOFING_REQUEST)
        assert read_all(sock).startswith(b"HTTP/1.1 200 OK")
    raw = upstream.next_request()
    assert raw.startswith(V2_SIGNATURE)
    header = ProxyHeaderReader().feed(raw)
    assert isinstance(header, ProxyHeader)
    assert header.family == "TCP4"
    assert header.source == (CLIENT_ADDRESS, client_port)
    assert header.destination == ("127.0.0.1", proxy.port)
    assert header.leftover.startswith(b"GET /some/path?q=1 HTTP/1.1\r\n")
    # option forwardfor adds a header line of its own; the client's Forwarded is dropped.
    assert header_values(raw, b"x-forwarded-for") == [b"6.6.6.6", CLIENT_ADDRESS.encode()]
    assert header_values(raw, b"forwarded") == []
    assert one(raw, b"x-forwarded-proto") == b"http"
    assert resolved(raw)[:2] == ((CLIENT_ADDRESS, None), "http")


def test_haproxy_tls_to_a_unix_socket(
    haproxy_proxy: ProxyFactory,
    raw_upstream: UpstreamFactory,
    tls_certs: Certs,
    tmp_path: Path,
) -> None:
    upstream = raw_upstream(tmp_path / "app.sock")
    proxy = haproxy_proxy(upstream.address, send_proxy="v2", mode="http", tls=tls_certs)
    response = send(proxy.port, SPOOFING_REQUEST, tls=tls_certs)
    assert response.startswith(b"HTTP/1.1 200 OK"), response
    raw = upstream.next_request()
    header = ProxyHeaderReader().feed(raw)
    assert isinstance(header, ProxyHeader)
    assert header.source is not None
    assert header.source[0] == CLIENT_ADDRESS
    assert one(raw, b"x-forwarded-proto") == b"https"


def test_certs_make_a_working_tls_pair(tls_certs: Certs) -> None:
    """The trustme fixture: the server certificate verifies for 127.0.0.1 with the CA, and the
    client certificate verifies against the same CA."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tls_certs.server_cert_file, tls_certs.server_key_file)
    server_context.load_verify_locations(tls_certs.ca_file)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = tls_certs.client_context(with_client_cert=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        client = socket.create_connection(listener.getsockname(), timeout=10)
        accepted, _ = listener.accept()
        accepted.settimeout(10)
        server_side = server_context.wrap_socket(
            accepted, server_side=True, do_handshake_on_connect=False
        )
        client_side = client_context.wrap_socket(
            client, server_hostname="127.0.0.1", do_handshake_on_connect=False
        )
        client_side.setblocking(False)
        server_side.setblocking(False)
        done = {"client": False, "server": False}
        for _ in range(1000):
            for name, side in (("client", client_side), ("server", server_side)):
                if not done[name]:
                    try:
                        side.do_handshake()
                        done[name] = True
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
            if all(done.values()):
                break
        assert all(done.values())
        peer = server_side.getpeercert()
        assert peer is not None
        assert ("commonName", "dualgate-test-client") in [rdn[0] for rdn in peer["subject"]]
        client_side.close()
        server_side.close()
