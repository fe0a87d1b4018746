"""--proxy-protocol on a running server: PROXY v1 and v2 headers from a test client and from a
real HAProxy, what is closed with nothing passed on, the head deadline, and TLS after the
header (dualgate/edge/tls_bio.py), with the header and the ClientHello apart or in one segment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
import pytest

from dualgate.edge.proxy_protocol import V2_SIGNATURE
from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    Receive,
    Scope,
    Send,
    ServeFactory,
    asgi_app,
    connect,
)
from tests.edge.test_forwarding import WSGI_KEYS
from tests.proxies import (
    CLIENT_ADDRESS,
    Certs,
    ProxyFactory,
    client_connect,
    client_hello,
    read_all,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
CLIENT = ("198.51.100.7", 4711)
DESTINATION = ("203.0.113.1", 443)


class Recorder:
    """A WSGI app answering with the environ's edge keys, counting the requests it saw."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        self.calls += 1
        body = json.dumps({key: environ.get(key) for key in WSGI_KEYS}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]


def v1(source: tuple[str, int], destination: tuple[str, int] = DESTINATION) -> bytes:
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def v2(
    source: tuple[str, int] | str | None, destination: tuple[str, int] | str = DESTINATION
) -> bytes:
    """A v2 PROXY header: TCP4/TCP6 for addresses, UNIX for paths, LOCAL for None."""
    if source is None:
        return V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
    if isinstance(source, str):
        assert isinstance(destination, str)
        block = source.encode().ljust(108, b"\0") + destination.encode().ljust(108, b"\0")
        family = 0x31
    else:
        assert isinstance(destination, tuple)
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        family = 0x11 if src.version == 4 else 0x21
        block = src.packed + dst.packed
        block += source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    return V2_SIGNATURE + bytes([0x21, family]) + len(block).to_bytes(2, "big") + block


def ask(port: int, data: bytes, *, pieces: int = 1) -> tuple[bytes, Any]:
    """Send `data` from 127.0.0.1 in `pieces` writes; (status line, JSON body)."""
    with connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        size = -(-len(data) // pieces)
        for start in range(0, len(data), size):
            sock.sendall(data[start : start + size])
            if pieces > 1:
                time.sleep(0.001)
        status, _, body = Reader(sock).read_response()
    return status, json.loads(body)


def closed_silently(sock: socket.socket | ssl.SSLSocket) -> None:
    """The server closes without a byte of answer (EOF or a reset), within the timeout."""
    started = time.monotonic()
    assert read_all(sock) == b""
    assert time.monotonic() - started < SOCKET_TIMEOUT - 1


# -- from a test client ---------------------------------------------------------------------

HEADERS = {
    "v1 TCP4": (v1(CLIENT), CLIENT[0], str(CLIENT[1])),
    "v1 TCP6": (v1(("2001:db8::7", 4711), ("2001:db8::1", 443)), "2001:db8::7", "4711"),
    "v1 UNKNOWN keeps the peer": (b"PROXY UNKNOWN\r\n", "127.0.0.1", None),
    "v2 TCP4": (v2(CLIENT), CLIENT[0], str(CLIENT[1])),
    "v2 TCP6": (v2(("2001:db8::7", 4711), ("2001:db8::1", 443)), "2001:db8::7", "4711"),
    "v2 UNIX": (v2("/run/client.sock", "/run/haproxy.sock"), "", ""),
    "v2 LOCAL keeps the peer": (v2(None), "127.0.0.1", None),
}


@pytest.mark.parametrize("name", list(HEADERS))
@pytest.mark.parametrize("pieces", [1, 3, 60], ids=["one write", "three writes", "byte-ish"])
def test_header_gives_the_client(serve: ServeFactory, name: str, pieces: int) -> None:
    header, address, port = HEADERS[name]
    app = Recorder()
    # uvloop for the one-write case: its transports change protocol mid-callback too.
    server = serve(app, proxy_protocol=True, loop="uvloop" if pieces == 1 else "asyncio")
    status, environ = ask(server.port, header + REQUEST, pieces=pieces)
    assert status == b"HTTP/1.1 200 OK"
    assert environ["REMOTE_ADDR"] == address
    if port is not None:
        assert environ["REMOTE_PORT"] == port
    else:  # the real peer: our own socket's port
        assert environ["REMOTE_PORT"].isdigit()
    assert environ["wsgi.url_scheme"] == "http"
    assert app.calls == 1


def test_asgi_scope_gets_the_carried_client(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps({"client": scope["client"], "scheme": scope["scheme"]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    server = serve(asgi_app(handler), proxy_protocol=True)
    _, scope = ask(server.port, v2(CLIENT) + REQUEST)
    assert scope == {"client": list(CLIENT), "scheme": "http"}


def test_keep_alive_requests_all_get_the_carried_client(serve: ServeFactory) -> None:
    server = serve(Recorder(), proxy_protocol=True)
    with connect(server.port) as sock:
        sock.sendall(v1(CLIENT) + REQUEST + REQUEST)  # pipelined behind the header
        reader = Reader(sock)
        for _ in range(3):
            _, _, body = reader.read_response()
            assert json.loads(body)["REMOTE_ADDR"] == CLIENT[0]
            sock.sendall(REQUEST)


def test_forwarding_headers_after_the_header_need_a_trusted_carried_address(
    serve: ServeFactory,
) -> None:
    """In TCP mode the HTTP headers are the client's own bytes: they count only when the
    address the PROXY header carries is itself trusted."""
    server = serve(Recorder(), proxy_protocol=True, forwarded_allow_ips="127.0.0.1,10.0.0.0/8")
    forged = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n"
    forged += b"X-Forwarded-Proto: https\r\n\r\n"
    _, environ = ask(server.port, v1(CLIENT) + forged)
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == (CLIENT[0], "http")
    _, environ = ask(server.port, v1(("10.1.1.1", 5000)) + forged)
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == ("6.6.6.6", "https")


def test_untrusted_peer_is_closed_at_once(serve: ServeFactory) -> None:
    app = Recorder()
    server = serve(app, proxy_protocol=True)  # trusts 127.0.0.1; the client is 127.0.0.2
    with client_connect(server.port) as sock:
        # Closed before the write is just as good.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(v1(CLIENT) + REQUEST)
        closed_silently(sock)
    assert app.calls == 0


@pytest.mark.parametrize(
    "data",
    [
        REQUEST,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + REQUEST,
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n" + REQUEST,
        b"PROXY TCP4 1.2.3.4 " + b"9" * 200 + b"\r\n",
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12) + REQUEST,  # version 3
        V2_SIGNATURE + b"\x21\x11\xff\xff" + bytes(64),  # longer than 4 KiB
    ],
    ids=["no header", "bare LF", "unknown family", "overlong v1", "v2 version 3", "v2 too long"],
)
def test_bad_header_is_closed_with_nothing_passed(serve: ServeFactory, data: bytes) -> None:
    app = Recorder()
    server = serve(app, proxy_protocol=True)
    with connect(server.port) as sock:
        sock.sendall(data)
        closed_silently(sock)
    assert app.calls == 0


def test_slow_header_is_cut_off_by_the_head_deadline(serve: ServeFactory) -> None:
    app = Recorder()
    server = serve(app, proxy_protocol=True, timeout_request_head=0.3)
    for partial in (b"", b"PROXY TCP4 198.51.100.7 ", V2_SIGNATURE[:8]):
        with connect(server.port) as sock:
            started = time.monotonic()
            sock.sendall(partial)
            assert read_all(sock) == b""
            assert 0.25 < time.monotonic() - started < 3
    assert app.calls == 0


def test_over_a_unix_socket(serve: ServeFactory, tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    serve(Recorder(), proxy_protocol=True, uds=path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(SOCKET_TIMEOUT)
        sock.connect(path)
        sock.sendall(v2(CLIENT) + REQUEST)
        _, _, body = Reader(sock).read_response()
    assert json.loads(body)["REMOTE_ADDR"] == CLIENT[0]


# -- from HAProxy ---------------------------------------------------------------------------


@pytest.mark.parametrize("send_proxy", ["v1", "v2"])
@pytest.mark.parametrize("mode", ["tcp", "http"])
def test_haproxy_in_front(
    serve: ServeFactory, haproxy_proxy: ProxyFactory, send_proxy: str, mode: str
) -> None:
    server = serve(Recorder(), proxy_protocol=True)
    proxy = haproxy_proxy(("127.0.0.1", server.port), send_proxy=send_proxy, mode=mode)
    with client_connect(proxy.port) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    environ = json.loads(body)
    assert environ["REMOTE_ADDR"] == CLIENT_ADDRESS  # from the header, not the forged list
    assert environ["REMOTE_PORT"] == str(client_port)


# -- TLS after the header (tls_bio.py) ------------------------------------------------------


def tls_options(certs: Certs, **options: Any) -> dict[str, Any]:
    return certs.server_options(proxy_protocol=True, **options)


class BIOClient:
    """A TLS client over memory BIOs, so the PROXY header and the ClientHello can go out in
    one segment, as a proxy that read both before connecting sends them."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")

    def handshake(self, prefix: bytes) -> None:
        first = True
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.tls.do_handshake()
                self.sock.sendall(self.outgoing.read())
                return
            except ssl.SSLWantReadError:
                data = self.outgoing.read()
                self.sock.sendall(prefix + data if first else data)
                first = False
                self.receive()
        raise TimeoutError("handshake")

    def receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.incoming.write(data)

    def request(self, data: bytes) -> bytes:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())
        response = b""
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                try:
                    self.receive()
                except ConnectionError:
                    return response
                continue
            except ssl.SSLZeroReturnError:
                return response
            if not chunk:
                return response
            response += chunk
        raise TimeoutError("response")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("together", [True, False], ids=["one segment", "apart"])
def test_tls_after_the_header(
    serve: ServeFactory, tls_certs: Certs, together: bool, loop: str
) -> None:
    server = serve(Recorder(), loop=loop, **tls_options(tls_certs))
    with connect(server.port) as sock:
        client = BIOClient(sock, tls_certs.client_context())
        if together:
            client.handshake(v2(CLIENT))
        else:
            sock.sendall(v2(CLIENT))
            time.sleep(0.05)
            client.handshake(b"")
        response = client.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), response
    environ = json.loads(body)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == (CLIENT[0], str(CLIENT[1]))
    assert (environ["wsgi.url_scheme"], environ["HTTPS"]) == ("https", "on")


def test_tls_after_the_header_with_a_required_client_certificate(
    serve: ServeFactory, tls_certs: Certs
) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        tls = scope["extensions"]["tls"]
        body = json.dumps({"name": tls["client_cert_name"], "client": scope["client"]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    options = tls_options(tls_certs, ssl_ca_certs=str(tls_certs.ca_file), ssl_cert_reqs="required")
    server = serve(asgi_app(handler), **options)
    with connect(server.port) as sock:
        sock.sendall(v1(CLIENT))
        context = tls_certs.client_context(with_client_cert=True)
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(REQUEST)
            _, _, body = Reader(tls).read_response()
    answer = json.loads(body)
    assert answer["name"].startswith("CN=dualgate-test-client,OU=Testing cert")
    assert answer["client"] == list(CLIENT)
    with connect(server.port) as sock:
        sock.sendall(v1(CLIENT))
        no_cert = tls_certs.client_context()
        with (
            pytest.raises((ssl.SSLError, ConnectionError)),
            no_cert.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(REQUEST)
            if not tls.recv(1):  # TLS 1.3: the refusal comes after the client's handshake
                raise ConnectionError("closed")


def test_stalled_handshake_after_the_header_is_cut_off(
    serve: ServeFactory, tls_certs: Certs
) -> None:
    server = serve(Recorder(), **tls_options(tls_certs, timeout_request_head=0.3))
    hello = client_hello(tls_certs)
    for sent in (v1(CLIENT), v1(CLIENT) + hello[:20], v1(CLIENT) + hello):
        with connect(server.port) as sock:
            started = time.monotonic()
            sock.sendall(sent)
            read_all(sock)  # the ServerHello when the whole ClientHello went, then the close
            assert 0.25 < time.monotonic() - started < 3


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_upload_and_pipelining_over_tls_after_the_header(
    serve: ServeFactory, tls_certs: Certs, loop: str
) -> None:
    """A body larger than the buffer pauses reading (the memory BIOs keep what is decrypted
    until reading resumes), and pipelined requests wait their turn."""
    body = os.urandom(3_000_000)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        size, crc = 0, 0
        while chunk := stream.read(65536):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
            time.sleep(0.0005)  # slower than the client: the buffer fills
        answer = json.dumps([size, crc, environ["REMOTE_ADDR"], environ["HTTPS"]]).encode()
        start_response("200 OK", [("Content-Length", str(len(answer)))])
        return [answer]

    server = serve(app, loop=loop, body_buffer_size=65536, **tls_options(tls_certs))
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with connect(server.port) as sock:
        sock.sendall(v2(CLIENT))
        context = tls_certs.client_context()
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(head + body + head + body)
            reader = Reader(tls)
            for _ in range(2):
                status, _, answer = reader.read_response()
                assert status == b"HTTP/1.1 200 OK"
                assert json.loads(answer) == [len(body), zlib.crc32(body), CLIENT[0], "on"]


def test_large_download_over_tls_after_the_header(
    serve: ServeFactory, tls_certs: Certs, tmp_path: Path
) -> None:
    """Many records each way and a client slower than the server: flow control through the
    memory BIOs, and wsgi.file_wrapper going out by ordinary writes."""
    data = os.urandom(4_000_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](path.open("rb"))

    server = serve(app, **tls_options(tls_certs, body_buffer_size=65536))
    with connect(server.port) as sock:
        sock.sendall(v2(CLIENT))
        context = tls_certs.client_context()
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(REQUEST)
            reader = Reader(tls)
            status, _ = reader.read_head()
            received = b""
            while len(received) < len(data):
                received += reader.read_exact(min(65536, len(data) - len(received)))
                time.sleep(0.0005)
    assert status == b"HTTP/1.1 200 OK"
    assert received == data


def test_haproxy_passes_tls_through_with_a_proxy_header(
    serve: ServeFactory, haproxy_proxy: ProxyFactory, tls_certs: Certs
) -> None:
    """HAProxy in TCP mode, TLS ending at dualgate: send-proxy-v2, then the client's own
    handshake; httpx and curl both see the certificate and the answer."""
    server = serve(Recorder(), **tls_options(tls_certs))
    proxy = haproxy_proxy(("127.0.0.1", server.port), send_proxy="v2", mode="tcp")
    context = tls_certs.client_context()
    transport = httpx.HTTPTransport(verify=context, local_address=CLIENT_ADDRESS)
    with httpx.Client(transport=transport, timeout=SOCKET_TIMEOUT) as client:
        environ = client.get(f"https://127.0.0.1:{proxy.port}/").json()
    assert (environ["REMOTE_ADDR"], environ["HTTPS"]) == (CLIENT_ADDRESS, "on")
    done = subprocess.run(
        [
            *("curl", "-sS", "--cacert", str(tls_certs.ca_file)),
            *("--interface", CLIENT_ADDRESS, f"https://127.0.0.1:{proxy.port}/"),
        ],
        capture_output=True,
        timeout=SOCKET_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["REMOTE_ADDR"] == CLIENT_ADDRESS
