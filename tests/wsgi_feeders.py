"""Feeders: the ways a WSGI application under test is put behind a real HTTP socket.

Every WSGI conformance test gets its application served through the one `wsgi_url` fixture,
parametrized over `FEEDERS`, and checks only what a client sees over HTTP plus what the
application itself observed. Today the only feeder is "server" (dualgate serving the WSGI app
directly); another feeder (e.g. dualgate.WSGIMiddleware under an ASGI server) is one more entry
in `FEEDERS` and one more branch in `_start`.

The fixtures are re-exported by tests/conftest.py, so test modules just ask for `wsgi_url`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest

from dualgate import WSGIMiddleware
from tests.conftest import SOCKET_TIMEOUT, read_until_closed, running_server
from tests.http_client import read_response

__all__ = [
    "FEEDERS",
    "RawConnection",
    "Response",
    "WSGIUrl",
    "client",
    "fetch",
    "raw_request",
    "url_port",
    "wsgi_feeder",
    "wsgi_url",
]

# "server": dualgate serves the WSGI app itself. "middleware": dualgate serves
# dualgate.WSGIMiddleware(app) as an ASGI app, so the same PEP 3333 rules are checked through
# the ASGI feeder of the bridge.
FEEDERS = ["server", "middleware"]

# wsgi_url(app, **config) -> "http://127.0.0.1:PORT" (no trailing slash). `config` holds
# dualgate Config fields every feeder must honour; the conformance tests use only root_path.
# The one feeder-aware check: test_valid_unusual_heads_pass_through asks `wsgi_feeder` whether
# a reason phrase can survive (an ASGI hop carries none).
WSGIUrl = Callable[..., str]


@pytest.fixture(params=FEEDERS)
def wsgi_feeder(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wsgi_url(wsgi_feeder: str) -> Iterator[WSGIUrl]:
    """wsgi_url(app, **config) serves the WSGI `app` for this test; returns its base URL."""
    with ExitStack() as stack:

        def start(app: Any, **config: Any) -> str:
            return _start(stack, wsgi_feeder, app, config)

        yield start


def _start(stack: ExitStack, feeder: str, app: Any, config: dict[str, Any]) -> str:
    if feeder == "server":
        server = stack.enter_context(running_server(app, **config))
        return f"http://127.0.0.1:{server.port}"
    if feeder == "middleware":
        # The middleware's defaults are Config's; only a value the test gives is passed on.
        options = {"threads": config.pop("threads")} if "threads" in config else {}
        middleware = WSGIMiddleware(app, **options)
        stack.callback(middleware.close)
        server = stack.enter_context(
            running_server(middleware, interface="asgi", lifespan="off", **config)
        )
        return f"http://127.0.0.1:{server.port}"
    raise AssertionError(f"unknown feeder {feeder!r}")


def url_port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def client(url: str, timeout: float = SOCKET_TIMEOUT) -> httpx.Client:
    """An httpx client for `url`; use it as a context manager so it is always closed."""
    return httpx.Client(base_url=url, timeout=timeout)


def raw_request(url: str, data: bytes, timeout: float = SOCKET_TIMEOUT) -> bytes:
    """Send raw request bytes to the server at `url`; everything received until it closes.

    The write side stays open (some feeders treat a half-close as a disconnect): requests
    sent this way should carry `Connection: close`.
    """
    with socket.create_connection(("127.0.0.1", url_port(url)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(data)
        return read_until_closed(sock)


class Response(NamedTuple):
    """One response as it came off the wire."""

    status: int
    headers: dict[str, str]  # lower-cased names; repeated ones joined with ", "
    body: bytes  # de-chunked
    complete: bool  # the framing said the body ended (not just the connection)
    head: bytes  # the raw head, for "never on the wire" checks


class RawConnection:
    """A raw keep-alive connection to the server at `url`, reading responses one by one."""

    def __init__(self, url: str, timeout: float = SOCKET_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", url_port(url)), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.closed_by_peer = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, headers: str = "", body: bytes = b"") -> None:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{length}{headers}\r\n"
        self.send(head.encode("latin-1") + body)

    def fill(self) -> bool:
        try:
            chunk = self.sock.recv(262144)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed_by_peer = True
            return False
        self.buffer += chunk
        return True

    def read_until(self, marker: bytes) -> bytes:
        """Everything up to and including `marker` (the socket timeout bounds the wait)."""
        while marker not in self.buffer:
            if not self.fill():
                raise ConnectionError(f"closed before {marker!r}: {self.buffer[-200:]!r}")
        data, _, self.buffer = self.buffer.partition(marker)
        return data + marker

    def read_at_least(self, size: int) -> bytes:
        """At least `size` bytes, whatever they are (the socket timeout bounds the wait)."""
        while len(self.buffer) < size:
            if not self.fill():
                raise ConnectionError(f"closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer, b""
        return data

    def read_until_closed(self) -> bytes:
        while self.fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def read_response(self, *, head_request: bool = False) -> Response:
        """One response (parsed by h11); a broken-off body comes back with complete=False."""
        parsed = read_response(self, b"HEAD" if head_request else b"GET")
        headers: dict[str, str] = {}
        for raw_name, raw_value in parsed.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return Response(parsed.status, headers, parsed.body, parsed.complete, parsed.head)


def fetch(url: str, method: str, path: str, headers: str = "", body: bytes = b"") -> Response:
    """One request on a fresh raw connection (closed afterwards)."""
    with RawConnection(url) as connection:
        connection.request(method, path, headers, body)
        return connection.read_response(head_request=method == "HEAD")
