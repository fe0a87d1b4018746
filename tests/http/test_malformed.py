"""Malformed and ambiguous requests (request smuggling shapes), per RFC 9112 and RFC 9110.

Each bad request is followed, in the same send, by a valid pipelined request. The server must
answer the bad one with an error, close the connection, and never let either request reach the
application; a fresh connection must still be served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from tests.conftest import Reader, ServeFactory, assert_serves, connect

# Every server here runs once with each request head parser (h11, httptools).
pytestmark = pytest.mark.usefixtures("both_parsers")

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


class CountingApp:
    """Records the path of every request that reaches it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paths: list[str] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        with self.lock:
            self.paths.append(environ["PATH_INFO"])
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


@pytest.fixture
def logged_errors() -> Iterator[list[str]]:
    """Every ERROR the server or asyncio logs meanwhile (dualgate.error does not propagate)."""
    found: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: found.append(record.getMessage())  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in ("dualgate.error", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    yield found
    for logger in loggers:
        logger.removeHandler(handler)


# (id, request bytes, expected status). The request ends where SMUGGLED begins.
CASES: list[tuple[str, bytes, int]] = [
    (
        # RFC 9112 6.1: both may be a smuggling attempt; a server MAY reject, and must close.
        "content-length-and-transfer-encoding",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n",
        400,
    ),
    (
        "transfer-encoding-and-content-length",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
        b"\r\n0\r\n\r\n",
        400,
    ),
    (
        # RFC 9112 6.3 item 5: differing Content-Length values are unrecoverable.
        "two-different-content-lengths",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    (
        "content-length-list",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    ),
    (
        "bad-chunk-size",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9112 7.1: chunk = chunk-size [ chunk-ext ] CRLF. h11 reads chunk lines up to CRLF, so
    # these framing shapes, on which proxies disagree, are checked on the raw bytes.
    (
        "chunk-size-trailing-space",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "bare-lf-in-chunk-extension",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;a\nxx\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-over-64-bits",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "bare-lf-in-trailer",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: 1\n\r\n",
        400,
    ),
    (
        # RFC 9112 5.2: a server MUST reject obs-fold (or replace it), outside message/http.
        "obs-fold",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        400,
    ),
    (
        "obs-fold-with-tab",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n",
        400,
    ),
    (
        "whitespace-before-first-header",
        b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
        400,
    ),
    (
        # RFC 9112 2.2: a recipient MAY accept bare LF; dualgate documents that it refuses it
        # (as a smuggling shape where a front end and back end disagree on line ends).
        "bare-lf",
        b"GET / HTTP/1.1\nHost: x\n\n",
        400,
    ),
    (
        # RFC 9112 2.2: a bare CR MUST be rejected or replaced by SP.
        "bare-cr-in-header-value",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        400,
    ),
    ("nul-in-header-name", b"GET / HTTP/1.1\r\nHost: x\r\nX-A\x00b: c\r\n\r\n", 400),
    ("non-ascii-in-header-name", b"GET / HTTP/1.1\r\nHost: x\r\nX-\xe9: c\r\n\r\n", 400),
    (
        # RFC 9112 5.1: whitespace between field name and colon MUST get a 400.
        "space-before-colon",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A : c\r\n\r\n",
        400,
    ),
    (
        # RFC 9112 3.2: a 1.1 request without Host, or with more than one, MUST get a 400.
        "missing-host",
        b"GET / HTTP/1.1\r\nX-A: c\r\n\r\n",
        400,
    ),
    # RFC 9112 3.2: a Host with an invalid value (not uri-host [":" port]) MUST get a 400.
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-with-userinfo", b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", 400),
    ("host-with-path", b"GET / HTTP/1.1\r\nHost: a.test/evil\r\n\r\n", 400),
    ("host-with-bad-port", b"GET / HTTP/1.1\r\nHost: a.test:80x\r\n\r\n", 400),
    (
        # RFC 9110 4.2.4: userinfo in an http(s) URI is to be treated as an error.
        "absolute-target-with-userinfo",
        b"GET http://user@example.com/path HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
    ),
    (
        # RFC 9110 4.2.1: an http URI with an empty host MUST be rejected.
        "absolute-target-with-empty-host",
        b"GET http:///path HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
    (
        # RFC 9112 6.1: an unknown transfer coding SHOULD get a 501, then close.
        "transfer-encoding-gzip-chunked",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        # RFC 9112 6.3 item 4: chunked not last in a request is a 400 and close.
        "transfer-encoding-chunked-gzip",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        # RFC 9112 7: chunked MUST NOT be applied twice; malformed, not unknown (so not 501).
        "transfer-encoding-chunked-twice",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "transfer-encoding-gzip-only",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        # RFC 9112 6.3 item 5: an invalid Content-Length is unrecoverable.
        "content-length-plus",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    ("content-length-negative", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("content-length-alpha", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (
        # RFC 9112 3.2.4: asterisk-form is only for OPTIONS.
        "asterisk-target-with-get",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    ("relative-target", b"GET path HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (
        # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
        "http10-transfer-encoding",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        # RFC 9112 3.2: a fragment is not part of any request-target form.
        "fragment-in-target",
        b"GET /page#frag HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    (
        # RFC 9110 15.6.6: 505 for a major version the server does not support.
        "http-2-request-line",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        505,
    ),
    (
        # RFC 9110 9.3.6 / 15.6.2: CONNECT is for proxies; an origin server that does not
        # implement a method answers 501 (uvicorn instead passes it to the app).
        "connect",
        b"CONNECT host.test:443 HTTP/1.1\r\nHost: host.test:443\r\n\r\n",
        501,
    ),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("request_bytes", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_request_is_refused_and_closes(
    serve: ServeFactory, request_bytes: bytes, status: int, logged_errors: list[str]
) -> None:
    app = CountingApp()
    server = serve(app)
    with connect(server.port) as sock:
        sock.sendall(request_bytes + SMUGGLED)
        reader = Reader(sock)
        status_line, headers, _ = reader.read_response()
        # No half-close from us: the server must close by itself, after exactly one response.
        after = reader.read_until_closed()
    assert status_line.startswith(b"HTTP/1.1 %d " % status), status_line
    assert headers.get(b"connection", b"").lower() == b"close"
    assert after == b"", f"bytes after the error response: {after!r}"
    assert app.paths == [], "a refused request, or one after it, reached the application"
    assert_serves(server.port)
    assert app.paths == ["/"]
    assert logged_errors == [], "a client's mistake is answered, not logged as an error"


def test_valid_pipelined_request_after_good_one_still_served(serve: ServeFactory) -> None:
    # The control case for the above: the same SMUGGLED bytes after a good request are served.
    app = CountingApp()
    server = serve(app)
    with connect(server.port) as sock:
        sock.sendall(
            b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + SMUGGLED
        )
        reader = Reader(sock)
        assert reader.read_response()[0] == b"HTTP/1.1 200 OK"
        assert reader.read_response()[0] == b"HTTP/1.1 200 OK"
    assert app.paths == ["/first", "/smuggled"]


@pytest.mark.parametrize(
    "host",
    [b"example.com", b"example.com:8080", b"127.0.0.1:1", b"[::1]:8080", b"a_b.test", b""],
)
def test_valid_host_values_are_served(serve: ServeFactory, host: bytes) -> None:
    # The control case for the Host refusals above (an empty Host is allowed by RFC 9112 3.2).
    app = CountingApp()
    server = serve(app)
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        status, _, _ = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert app.paths == ["/"]
