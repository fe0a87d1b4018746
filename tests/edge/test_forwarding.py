"""The proxy-header table (tests/edge/test_forwarded.py) over real sockets: every row sent
to a running dualgate from 127.0.0.2, its outcome read back from the WSGI environ and from the
ASGI scope. Each row runs twice: with the trust the row asks for, and from a peer that is not
trusted at all, where nothing may change whatever the headers say.

A row's peer is mapped onto the real one: a row whose peer is trusted gets 127.0.0.2 added to
its trust list, a row whose peer is not keeps a list that does not cover 127.0.0.2. An outcome
the row gives as "unchanged" (its own peer, its own server) is the real connection's.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from dualgate import Server
from dualgate.edge.forwarded import ProxyTrust
from tests.conftest import Reader, Receive, Scope, Send, asgi_app, running_server
from tests.edge.test_forwarded import CASES, SERVER, Case
from tests.proxies import CLIENT_ADDRESS, Certs, client_connect, make_certs

HOST = "app.internal"
UNTRUSTED = "192.0.2.1"  # a trust list that covers no loopback peer
WSGI_KEYS = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "HTTPS",
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
)


def wsgi_view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    body = json.dumps({key: environ.get(key) for key in WSGI_KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


async def _asgi_view(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps(
        {
            "client": scope["client"],
            "scheme": scope["scheme"],
            "server": scope["server"],
            "host": [
                value.decode("latin-1") for name, value in scope["headers"] if name == b"host"
            ],
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


asgi_view = asgi_app(_asgi_view)

ServerKey = tuple[str, str, int | None, bool]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def servers(certs: Certs) -> Iterator[Callable[[ServerKey], Server]]:
    """One server per (interface, trust list, hops, TLS), started on first use, kept for the
    module: the rows share a handful of settings."""
    running: dict[ServerKey, Server] = {}
    with ExitStack() as stack:

        def get(key: ServerKey) -> Server:
            if key not in running:
                interface, trust, hops, tls = key
                options: dict[str, Any] = {"forwarded_allow_ips": trust, "threads": 2}
                if hops is not None:
                    options["forwarded_trust_hops"] = hops
                if tls:
                    options["ssl_certfile"] = str(certs.server_cert_file)
                    options["ssl_keyfile"] = str(certs.server_key_file)
                app = wsgi_view if interface == "wsgi" else asgi_view
                running[key] = stack.enter_context(running_server(app, **options))
            return running[key]

        yield get


def send(port: int, headers: list[tuple[bytes, bytes]], tls: Certs | None) -> tuple[Any, int]:
    """The row's headers from 127.0.0.2; (the JSON answer, the client's own port)."""
    sock: socket.socket | ssl.SSLSocket = client_connect(port)
    client_port = sock.getsockname()[1]
    if tls is not None:
        sock = tls.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    request = b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n" + lines + b"\r\n"
    with sock:
        sock.sendall(request)
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK", (status, body)
    return json.loads(body), client_port


def expected(
    case: Case, trusted: bool, peer: tuple[str, int], server: tuple[str, int]
) -> tuple[tuple[str, int | None], str, str, tuple[str, int | None]]:
    """(client, scheme, Host, server) the application must see."""
    if not trusted:
        return peer, case.connection_scheme, HOST, server
    client = peer if case.client == case.peer else case.client
    assert client is not None
    host = case.host.decode("latin-1") if case.host is not None else HOST
    seen = server if case.server == SERVER else case.server
    assert seen is not None
    return client, case.scheme, host, seen


def real_trust(case: Case) -> str:
    """The row's trust list, with 127.0.0.2 in it exactly when the row's peer is trusted."""
    peer_trusted = ProxyTrust(case.trust).peer_is_trusted(case.peer[0] if case.peer else None)
    if peer_trusted:
        return case.trust if case.trust == "*" else f"{case.trust},{CLIENT_ADDRESS}"
    assert not ProxyTrust(case.trust).peer_is_trusted(CLIENT_ADDRESS), case.id
    return case.trust


VARIANTS = [
    pytest.param(case, trusted, id=f"{case.id} [{'as the row says' if trusted else 'untrusted'}]")
    for case in CASES
    for trusted in (True, False)
]


@pytest.mark.parametrize(("case", "trusted"), VARIANTS)
def test_wsgi_environ(
    servers: Callable[[ServerKey], Server], certs: Certs, case: Case, trusted: bool
) -> None:
    tls = case.connection_scheme == "https"
    trust = real_trust(case) if trusted else UNTRUSTED
    server = servers(("wsgi", trust, case.hops, tls))
    environ, client_port = send(server.port, case.headers, certs if tls else None)
    client, scheme, host, (server_name, server_port) = expected(
        case, trusted, (CLIENT_ADDRESS, client_port), ("127.0.0.1", server.port)
    )
    assert environ == {
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": "" if client[1] is None else str(client[1]),
        "wsgi.url_scheme": scheme,
        "HTTPS": "on" if scheme == "https" else None,
        "HTTP_HOST": host,
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
    }


@pytest.mark.parametrize(("case", "trusted"), VARIANTS)
def test_asgi_scope(
    servers: Callable[[ServerKey], Server], certs: Certs, case: Case, trusted: bool
) -> None:
    tls = case.connection_scheme == "https"
    trust = real_trust(case) if trusted else UNTRUSTED
    server = servers(("asgi", trust, case.hops, tls))
    scope, client_port = send(server.port, case.headers, certs if tls else None)
    client, scheme, host, server_address = expected(
        case, trusted, (CLIENT_ADDRESS, client_port), ("127.0.0.1", server.port)
    )
    assert scope == {
        "client": [client[0], client[1] or 0],
        "scheme": scheme,
        "server": list(server_address),
        "host": [host],
    }


# -- the same rules on the other listeners --------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_unix_socket_peer(tmp_path: Path, loop: str) -> None:
    """A unix-socket peer is believed with `unix:` (the default) and not without it."""
    path = str(tmp_path / "app.sock")
    forged = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n"
    forged += b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\n\r\n"
    for trust, believed in (("127.0.0.1,unix:", True), ("127.0.0.1", False)):
        with (
            running_server(wsgi_view, uds=path, forwarded_allow_ips=trust, loop=loop),
            socket.socket(socket.AF_UNIX) as sock,
        ):
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(forged)
            _, _, body = Reader(sock).read_response()
        environ = json.loads(body)
        if believed:
            assert environ["REMOTE_ADDR"] == "198.51.100.7"
            assert environ["wsgi.url_scheme"] == "https"
            assert (environ["HTTP_HOST"], environ["SERVER_NAME"]) == ("example.com", "example.com")
            assert environ["SERVER_PORT"] == "443"
        else:
            assert environ["REMOTE_ADDR"] == ""
            assert environ["wsgi.url_scheme"] == "http"
            assert (environ["HTTP_HOST"], environ["SERVER_NAME"]) == ("x", path)


def test_dual_stack_inherited_socket() -> None:
    """--fd with a dual-stack socket: an IPv4 peer arrives as ::ffff:127.0.0.2 and matches an
    IPv4 entry of the trust list."""
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"
    for trust, remote in ((CLIENT_ADDRESS, "198.51.100.7"), (UNTRUSTED, "::ffff:127.0.0.2")):
        duplicate = listener.dup()
        with (
            running_server(wsgi_view, fd=duplicate.detach(), forwarded_allow_ips=trust),
            client_connect(port) as sock,
        ):
            sock.sendall(request)
            _, _, body = Reader(sock).read_response()
        assert json.loads(body)["REMOTE_ADDR"] == remote
    listener.close()


def test_proxy_headers_off() -> None:
    """--no-proxy-headers: a trusted peer's headers are not read either."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n"
    request += b"Forwarded: for=198.51.100.8;proto=https\r\n\r\n"
    with (
        running_server(wsgi_view, forwarded_allow_ips="*", proxy_headers=False) as server,
        client_connect(server.port) as sock,
    ):
        sock.sendall(request)
        _, _, body = Reader(sock).read_response()
    environ = json.loads(body)
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == (CLIENT_ADDRESS, "http")
