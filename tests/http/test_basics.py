"""HTTP/1.1 message handling over raw sockets, checked against RFC 9112 and RFC 9110.

Each test runs a tiny WSGI app on a real dualgate server and speaks bytes to it on 127.0.0.1.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from dualgate.http.heads import parse_head_h11
from dualgate.http.heads_llhttp import parse_head_llhttp
from dualgate.http.reader import head_parser
from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    ServeFactory,
    connect,
    read_until_closed,
)

# Every server here runs once with each request head parser (h11, httptools).
pytestmark = pytest.mark.usefixtures("both_parsers")


def echo_target(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """Answers with what it saw of the request line and body."""
    body = environ["wsgi.input"].read()
    text = (
        f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']} "
        f"port={environ['REMOTE_PORT']} body={body.decode('latin-1')}"
    ).encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text]


def echo_body(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """Reads wsgi.input to the end and answers `<length>:<bytes>`."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [str(len(body)).encode() + b":" + body]


def test_each_run_of_this_module_reads_with_its_parser(
    serve: ServeFactory, both_parsers: str
) -> None:
    # The parametrization reaches the server: its connections read heads with that parser.
    server = serve(echo_target)
    assert server.config.http == both_parsers
    expected = parse_head_h11 if both_parsers == "h11" else parse_head_llhttp
    assert head_parser(server.config.http) is expected
    with connect(server.port) as sock:
        sock.sendall(b"GET /p?q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 OK")


# -- persistent connections (RFC 9112 section 9.3) ----------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(serve: ServeFactory) -> None:
    server = serve(echo_target)
    with connect(server.port) as sock:
        reader = Reader(sock)
        ports = set()
        for index in range(4):
            sock.sendall(b"GET /n/%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
            status, headers, body = reader.read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert body.startswith(b"GET /n/%d? " % index), body
            assert headers.get(b"connection", b"").lower() != b"close"
            ports.add(body.split(b"port=")[1].split(b" ")[0])
        assert len(ports) == 1, "all requests should arrive on the same connection"


def test_pipelined_requests_are_answered_in_order(serve: ServeFactory) -> None:
    server = serve(echo_target)
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /third?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        reader = Reader(sock)
        bodies = [reader.read_response()[2] for _ in range(3)]
    assert bodies[0].startswith(b"GET /first? ")
    assert bodies[1].startswith(b"POST /second? ") and bodies[1].endswith(b"body=hello")
    assert bodies[2].startswith(b"GET /third?x=1 ")


def test_http10_client_gets_response_then_close(serve: ServeFactory) -> None:
    server = serve(echo_target)
    with connect(server.port) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        # No half-close from us: the server must close on its own (RFC 9112 section 9.3).
        data = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") or head.startswith(b"HTTP/1.0 200 "), head
    assert body.startswith(b"GET /old? "), body
    assert b"transfer-encoding" not in head.lower(), "chunked is not for HTTP/1.0 clients"


def test_connection_close_request_is_answered_though_more_bytes_follow(
    serve: ServeFactory,
) -> None:
    # RFC 9112 9.6: answer the request that carried "close", then close; never process
    # what follows it.
    paths: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        paths.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"answered"]

    server = serve(app)
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /ignored HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        reader = Reader(sock)
        status, headers, body = reader.read_response()
        after = reader.read_until_closed()
    assert status == b"HTTP/1.1 200 OK", status
    assert headers[b"connection"].lower() == b"close"
    assert body == b"answered"
    assert after == b""
    assert paths == ["/last"]


def test_http10_request_followed_by_stray_crlf_is_answered(serve: ServeFactory) -> None:
    # Some old clients send CRLF after a POST body (RFC 9112 2.2 forbids it, but a server
    # must not turn the valid request before it into an error).
    server = serve(echo_body)
    with connect(server.port) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello\r\n")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert data.endswith(b"\r\n\r\n5:hello"), data


def test_http10_expect_100_continue_is_ignored(serve: ServeFactory) -> None:
    # RFC 9110 10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
    server = serve(echo_body)
    with connect(server.port) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert select.select([sock], [], [], 0.2)[0] == [], "nothing before the body arrives"
        sock.sendall(b"hello")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert b" 100 " not in data
    assert data.endswith(b"5:hello")


# -- HEAD (RFC 9110 section 9.3.2) -------------------------------------------------------


def test_head_sends_get_headers_without_body_and_keeps_connection(serve: ServeFactory) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"eleven byte"]

    server = serve(app)
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, get_headers, get_body = reader.read_response()
        assert get_body == b"eleven byte"
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers = reader.read_head()
        assert status == b"HTTP/1.1 200 OK"
        assert headers[b"content-length"] == get_headers[b"content-length"] == b"11"
        assert headers[b"content-type"] == b"text/plain"
        # No body follows: the next bytes on the connection are the next response's.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = reader.read_response()
        assert status == b"HTTP/1.1 200 OK", status
        assert body == b"eleven byte"


def test_head_of_streamed_response_sends_no_body(serve: ServeFactory) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        yield b"abc"
        yield b"def"

    server = serve(app)
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers = reader.read_head()
        assert status == b"HTTP/1.1 200 OK"
        assert headers[b"content-length"] == b"6"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = reader.read_response()
        assert status == b"HTTP/1.1 200 OK", status
        assert body == b"abcdef"


# -- chunked transfer coding (RFC 9112 section 7.1) ---------------------------------------


def test_chunked_request_body_is_decoded(serve: ServeFactory) -> None:
    server = serve(echo_body)
    with connect(server.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"5\r\nhello\r\n")
        sock.sendall(b"6\r\n world\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"11:hello world"


def test_chunked_request_with_extensions_and_trailers(serve: ServeFactory) -> None:
    # Unknown chunk extensions are ignored (7.1.1); a trailer section may follow (7.1.2).
    server = serve(echo_body)
    with connect(server.port) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;name=value\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Checksum: 1\r\n\r\n"
        )
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"13:abc0123456789"


def streaming_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one,"
    yield b"two,"
    yield b"three"


def test_streamed_response_without_length_is_chunked_for_http11(serve: ServeFactory) -> None:
    server = serve(streaming_app)
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = reader.read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert headers[b"transfer-encoding"].lower() == b"chunked"
        assert b"content-length" not in headers
        assert body == b"one,two,three"
        # Chunked framing ends the message, so the connection stays usable.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.read_response()[2] == b"one,two,three"


def test_streamed_response_without_length_is_close_delimited_for_http10(
    serve: ServeFactory,
) -> None:
    server = serve(streaming_app)
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length" not in head.lower()
    assert body == b"one,two,three"


# -- Expect: 100-continue (RFC 9110 section 10.1.1) ---------------------------------------


def test_100_continue_is_sent_when_app_reads_body(serve: ServeFactory) -> None:
    entered = threading.Event()
    may_read = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        entered.set()
        may_read.wait(SOCKET_TIMEOUT)
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"got " + body]

    server = serve(app)
    try:
        with connect(server.port) as sock:
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
            )
            assert entered.wait(SOCKET_TIMEOUT), "app not called while the client waits"
            # The app has not read yet, so nothing may have been sent.
            assert select.select([sock], [], [], 0.2)[0] == []
            may_read.set()
            reader = Reader(sock)
            status, _ = reader.read_head()
            assert status == b"HTTP/1.1 100 Continue"
            sock.sendall(b"hello")
            status, _, body = reader.read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert body == b"got hello"
    finally:
        may_read.set()


def test_no_100_continue_when_app_never_reads_body(serve: ServeFactory) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("417 Expectation Failed", [("Content-Type", "text/plain")])
        return [b"not wanted"]

    server = serve(app)
    with connect(server.port) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 417 Expectation Failed"
    assert body == b"not wanted"


# -- Date, Server (RFC 9110 sections 6.6.1, 10.2.4) ---------------------------------------

_IMF_FIXDATE = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    rb"\d{4} \d\d:\d\d:\d\d GMT"
)


def test_date_and_server_headers(serve: ServeFactory) -> None:
    server = serve(echo_body)
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, headers, _ = Reader(sock).read_response()
    date = headers[b"date"]
    assert _IMF_FIXDATE.fullmatch(date), date
    assert abs(parsedate_to_datetime(date.decode()).timestamp() - time.time()) < 60
    assert headers[b"server"]


# -- request targets (RFC 9112 section 3.2) -----------------------------------------------


def test_absolute_form_target(serve: ServeFactory) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [
            "|".join(
                [environ["PATH_INFO"], environ["QUERY_STRING"], environ.get("HTTP_HOST", "")]
            ).encode("latin-1")
        ]

    server = serve(app)
    with connect(server.port) as sock:
        # 3.2.2: the target's authority wins over the Host header.
        sock.sendall(b"GET http://example.com/path?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"/path|q=1|example.com"


def test_options_asterisk_is_accepted(serve: ServeFactory) -> None:
    methods: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        methods.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [("Allow", "GET, HEAD, OPTIONS"), ("Content-Length", "0")])
        return []

    server = serve(app)
    with connect(server.port) as sock:
        sock.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"allow"] == b"GET, HEAD, OPTIONS"
    assert methods == ["OPTIONS"]


def test_empty_lines_before_request_line_are_ignored(serve: ServeFactory) -> None:
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request-line.
    server = serve(echo_target)
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.read_response()[2].startswith(b"GET /a? ")
        # Pipelined after a request, as old clients send a CRLF after a POST body.
        sock.sendall(
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\r\n"
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert reader.read_response()[2].startswith(b"POST /b? ")
        assert reader.read_response()[2].startswith(b"GET /c? ")


def test_higher_minor_version_is_served_as_http11(serve: ServeFactory) -> None:
    # RFC 9110 2.5: a recipient handles a higher minor version as the highest it implements.
    server = serve(echo_target)
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /minor HTTP/1.2\r\nHost: x\r\n\r\n")
        status, headers, body = reader.read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert body.startswith(b"GET /minor? ")
        assert headers.get(b"connection", b"").lower() != b"close"


def test_body_in_later_packets_then_pipelined_request(serve: ServeFactory) -> None:
    # Once h11 has handed out what it buffered, the rest of a Content-Length body is read
    # directly; the bytes after it must still reach the next request's parser.
    server = serve(echo_body)
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(b"hello")
        time.sleep(0.05)
        sock.sendall(b"world" + b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert reader.read_response()[2] == b"10:helloworld"
        assert reader.read_response()[2] == b"3:abc"


def test_half_close_after_a_body_in_later_packets_still_gets_the_answer(
    serve: ServeFactory,
) -> None:
    server = serve(echo_body)
    with connect(server.port) as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(b"data")
        sock.shutdown(socket.SHUT_WR)
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(b"4:data")


def test_http10_keep_alive_is_kept_when_asked_and_the_length_is_known(
    serve: ServeFactory,
) -> None:
    # RFC 9112 9.3 and appendix C.2.2: an HTTP/1.0 client that sends "Connection: keep-alive"
    # may keep the connection, and the server says so in its response.
    server = serve(echo_target)
    with connect(server.port) as sock:
        reader = Reader(sock)
        for index in range(2):
            sock.sendall(b"GET /ka/%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % index)
            status, headers, body = reader.read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert headers.get(b"connection", b"").lower() == b"keep-alive"
            assert body.startswith(b"GET /ka/%d? " % index)


def test_valid_chunked_body_split_at_every_byte_is_accepted(serve: ServeFactory) -> None:
    # The chunked framing check reads the raw bytes as they come; lines split anywhere must pass.
    server = serve(echo_body)
    body = (
        b'4;name="va lue"\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n'
    )
    with connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for index in range(len(body)):
            sock.sendall(body[index : index + 1])
            if index % 16 == 0:
                time.sleep(0.002)
        status, _, answer = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert answer == b"24:Wikipedia in \r\n\r\nchunks."
