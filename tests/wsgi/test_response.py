"""PEP 3333 conformance, the response side: start_response, write(), the body, close().

One tiny application per rule; what is checked is what a client sees on the wire plus what the
application itself observed (exceptions raised into it, close() calls).
"""

from __future__ import annotations

import io
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.validate import validator

import httpx
import pytest

from tests.wsgi_feeders import RawConnection, WSGIUrl, client, fetch

WAIT = 5.0  # bound on every wait for something the server does in its own time
TEXT = [("Content-Type", "text/plain")]


def _hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class Closing:
    """An iterable recording its close() calls; `fail_at` makes iteration raise there."""

    def __init__(
        self, chunks: Iterable[bytes], fail_at: int | None = None, delay: float = 0.0
    ) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.delay = delay
        self.close_calls = 0
        self.closed = threading.Event()
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("application failed mid-iteration")
            if self.delay:
                time.sleep(self.delay)
            self.produced += 1
            yield chunk
        if self.fail_at is not None and self.fail_at >= 0:
            raise RuntimeError("application failed at the end")

    def close(self) -> None:
        self.close_calls += 1
        self.closed.set()


def _endless() -> Iterator[bytes]:
    while True:
        yield b"x" * 1024


# -- start_response and when the head goes out ------------------------------------------


def test_head_goes_out_with_the_first_non_empty_chunk(wsgi_url: WSGIUrl) -> None:
    release = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b""
        yield b"first;"
        if not release.wait(WAIT * 2):
            raise RuntimeError("never released")
        yield b"second"

    url = wsgi_url(validator(app))
    try:
        with RawConnection(url) as connection:
            connection.request("GET", "/")
            # The head and the first chunk arrive while the app is still blocked.
            early = connection.read_until(b"first;")
            assert early.startswith(b"HTTP/1.1 200 ")
            release.set()
            connection.buffer = early + connection.buffer
            response = connection.read_response()
    finally:
        release.set()
    assert response.status == 200
    assert response.body == b"first;second"
    assert response.complete


def test_empty_chunk_then_error_is_a_clean_500(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [*TEXT, ("X-Never", "never-sent-marker")])
        yield b""
        raise RuntimeError("failed before any body")

    url = wsgi_url(validator(app))
    response = fetch(url, "GET", "/")
    assert response.status == 500
    assert response.complete
    assert b"never-sent-marker" not in response.head
    assert len(response.body) < 200
    assert b"Traceback" not in response.body
    assert fetch(url, "GET", "/").status == 500  # and the server still answers


def test_second_start_response_without_exc_info_is_an_error(wsgi_url: WSGIUrl) -> None:
    errors: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        try:
            start_response("201 Created", TEXT)
        except Exception as exc:
            errors.append(exc)
            raise
        return [b"should not be sent"]

    with client(wsgi_url(app)) as http:
        response = http.get("/")
    assert response.status_code == 500
    assert b"should not be sent" not in response.content
    assert len(errors) == 1


def test_exc_info_replaces_the_head_when_nothing_was_sent(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("X-First", "first")])
        try:
            raise ValueError("handled by the app")
        except ValueError:
            start_response("503 Service Unavailable", [*TEXT, ("X-Second", "2")], sys.exc_info())
        return [b"error page"]

    with client(wsgi_url(validator(app))) as http:
        response = http.get("/")
    assert response.status_code == 503
    assert response.headers["x-second"] == "2"
    assert "x-first" not in response.headers
    assert response.content == b"error page"


def test_exc_info_after_the_head_went_out_reraises(wsgi_url: WSGIUrl) -> None:
    raised: list[BaseException] = []
    original: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b"partial;"
        try:
            raise ValueError("late failure")
        except ValueError as exc:
            original.append(exc)
            try:
                start_response("500 Internal Server Error", TEXT, sys.exc_info())
            except BaseException as reraised:
                raised.append(reraised)
                raise
        yield b"never-sent-marker"

    url = wsgi_url(validator(app))
    with RawConnection(url) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
        rest = connection.read_until_closed()  # the connection is closed, not kept alive
    assert response.status == 200
    assert response.body == b"partial;"
    assert not response.complete, "an aborted response must not look complete"
    assert b"never-sent-marker" not in rest
    assert raised and raised[0] is original[0]
    with client(url) as http, pytest.raises(httpx.RemoteProtocolError):
        http.get("/")


def test_app_raising_before_start_response_gets_500_and_server_keeps_serving(
    wsgi_url: WSGIUrl,
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("secret-detail-marker")
        return _hello(environ, start_response)

    url = wsgi_url(app)
    with RawConnection(url) as connection:
        connection.request("GET", "/boom")
        response = connection.read_response()
        assert response.status == 500
        assert 0 < len(response.body) < 200
        assert b"secret-detail-marker" not in response.body
        connection.request("GET", "/ok")  # the same connection still works
        assert connection.read_response().body == b"hello"
    with client(url) as http:
        assert http.get("/").text == "hello"


def test_app_returning_without_start_response_is_a_500(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return [b"no-head-marker"]

    response = fetch(wsgi_url(app), "GET", "/")
    assert response.status == 500
    assert b"no-head-marker" not in response.body


def test_non_bytes_body_chunk_is_a_500(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        start_response("200 OK", TEXT)
        return ["a str, not bytes"]

    response = fetch(wsgi_url(app), "GET", "/")
    assert response.status == 500
    assert b"a str" not in response.body


# -- write() ----------------------------------------------------------------------------


def test_write_callable_alone(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"a")
        write(b"")
        write(b"bc" * 100_000)
        return []

    with client(wsgi_url(validator(app))) as http:
        response = http.get("/")
    assert response.status_code == 200
    assert response.content == b"a" + b"bc" * 100_000


def test_write_callable_then_iterable(wsgi_url: WSGIUrl) -> None:
    closing = Closing([b"x", b"", b"y"])

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"head-")
        return closing

    with client(wsgi_url(validator(app))) as http:
        response = http.get("/")
    assert response.content == b"head-xy"
    assert closing.closed.wait(WAIT)
    assert closing.close_calls == 1


def test_write_with_content_length(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [*TEXT, ("Content-Length", "6")])
        write(b"abc")
        return [b"def"]

    response = fetch(wsgi_url(validator(app)), "GET", "/")
    assert response.headers["content-length"] == "6"
    assert response.body == b"abcdef"
    assert response.complete


# -- status and header validation: 500, and the bad value never on the wire --------------

_BAD_HEADS: list[tuple[str, Any, Any]] = [
    ("cr-lf-in-value", "200 OK", [("X-Bad", "a\r\nX-Injected: marker-crlf")]),
    ("lf-in-value", "200 OK", [("X-Bad", "a\nX-Injected: marker-lf")]),
    ("cr-in-value", "200 OK", [("X-Bad", "a\rmarker-cr")]),
    ("nul-in-value", "200 OK", [("X-Bad", "a\x00marker-nul")]),
    ("non-latin1-value", "200 OK", [("X-Bad", "marker-euro \u20ac")]),
    ("non-latin1-name", "200 OK", [("X-B\u20ac", "marker-name")]),
    ("space-in-name", "200 OK", [("Bad Name", "marker-space")]),
    ("colon-in-name", "200 OK", [("X-Bad:Colon", "marker-colon")]),
    ("empty-name", "200 OK", [("", "marker-empty")]),
    ("hop-connection", "200 OK", [("Connection", "keep-alive, marker-connection")]),
    ("hop-transfer-encoding", "200 OK", [("Transfer-Encoding", "marker-te, chunked")]),
    ("hop-keep-alive", "200 OK", [("Keep-Alive", "timeout=marker-keepalive")]),
    ("hop-upgrade", "200 OK", [("Upgrade", "marker-upgrade")]),
    ("non-str-value", "200 OK", [("X-Int", 12345)]),
    ("bytes-value", "200 OK", [("X-Bytes", b"marker-bytes")]),
    ("non-tuple-header", "200 OK", [["X-List", "marker-list"]]),
    ("bad-content-length", "200 OK", [("Content-Length", "marker-cl")]),
    ("negative-content-length", "200 OK", [("Content-Length", "-5")]),
    ("conflicting-content-length", "200 OK", [("Content-Length", "5"), ("Content-Length", "7")]),
    ("bytes-status", b"299 marker-bytes-status", []),
    ("two-digit-status", "29 marker-short", []),
    ("letters-status", "2x9 marker-letters", []),
    ("no-space-status", "299marker-nospace", []),
    ("informational-status", "101 marker-switching", []),
    ("crlf-in-status", "299 OK\r\nX-Injected: marker-status", []),
    ("non-latin1-status", "299 marker-\u20ac", []),
]


@pytest.mark.parametrize(
    ("status", "headers"),
    [case[1:] for case in _BAD_HEADS],
    ids=[case[0] for case in _BAD_HEADS],
)
def test_invalid_status_or_headers_give_500(wsgi_url: WSGIUrl, status: Any, headers: Any) -> None:
    raised: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            start_response(status, [*TEXT, *headers])
        except Exception as exc:
            raised.append(exc)
            raise
        return [b"body-marker"]

    url = wsgi_url(app)
    with RawConnection(url) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
        wire = response.head + response.body
        assert response.status == 500, wire
        assert b"marker" not in wire
        assert b"299" not in response.head.split(b"\r\n")[0]
        for value in (b"12345", b"X-Injected", b"\xe2\x82\xac", b"Content-Length: 7"):
            assert value not in wire
        # The 500 is a clean response: the connection is still usable.
        connection.request("GET", "/")
        assert connection.read_response().status == 500
    # PEP 3333: start_response should raise at once rather than later.
    assert raised, "start_response accepted an invalid status or header"


def test_valid_unusual_heads_pass_through(wsgi_url: WSGIUrl, wsgi_feeder: str) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(
            "299 Custom Reason\xe9",
            [
                ("Content-Type", "text/plain"),
                ("X-Tab", "a\tb"),
                ("X-Latin1", "caf\xe9"),
                ("X-Empty", ""),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ],
        )
        return [b"ok"]

    # Not under wsgiref's validator: it refuses the tab that RFC 9110 allows in a value.
    with RawConnection(wsgi_url(app)) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
    assert response.status == 299
    if wsgi_feeder == "server":  # an ASGI hop carries no reason phrase
        assert response.head.startswith(b"HTTP/1.1 299 Custom Reason\xe9\r\n")
    head = response.head.lower()  # nor header-name case
    assert b"\r\nx-tab: a\tb\r\n" in head
    assert b"\r\nx-latin1: caf\xe9\r\n" in head
    assert b"\r\nx-empty: \r\n" in head
    assert head.count(b"\r\nset-cookie: ") == 2
    assert response.body == b"ok"


# -- Content-Length and framing --------------------------------------------------------


@pytest.mark.parametrize("shape", ["list", "generator", "write"])
def test_extra_bytes_beyond_content_length_are_dropped(wsgi_url: WSGIUrl, shape: str) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [*TEXT, ("Content-Length", "5")])
        if shape == "list":
            return [b"hello world"]
        if shape == "write":
            write(b"hel")
            write(b"lo world")
            return []
        return iter([b"hel", b"lo wo", b"rld"])

    with RawConnection(wsgi_url(app)) as connection:
        for _ in range(2):  # the connection stays in sync: nothing extra was sent
            connection.request("GET", "/")
            response = connection.read_response()
            assert response.status == 200
            assert response.headers["content-length"] == "5"
            assert response.body == b"hello"


@pytest.mark.parametrize("chunk", [b"ab", b"abc"], ids=["ends-on-the-length", "overruns-it"])
def test_endless_iterable_stops_at_content_length(wsgi_url: WSGIUrl, chunk: bytes) -> None:
    # PEP 3333, "Handling the Content-Length Header": the server should stop iterating once
    # Content-Length bytes are sent. The response then completes, close() runs, and the one
    # worker thread is free again for the next request.
    iterables: list[Closing] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "4")])
        if environ["PATH_INFO"] == "/next":
            return [b"next"]
        iterable = Closing(itertools.repeat(chunk))
        iterables.append(iterable)
        return iterable

    with RawConnection(wsgi_url(app, threads=1)) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
        assert (response.status, response.complete) == (200, True)
        assert response.body == (chunk * 2)[:4]
        assert iterables[0].closed.wait(WAIT), "close() was not called"
        assert iterables[0].close_calls == 1
        assert iterables[0].produced == 2, "iterated past the Content-Length"
        connection.request("GET", "/next")
        assert connection.read_response().body == b"next"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_endless_iterable_after_a_bodiless_status_ends_with_the_head(
    wsgi_url: WSGIUrl, status: str
) -> None:
    # No body may follow a 204 or 304 head (RFC 9110 6.4.1): there is nothing to iterate for.
    iterables: list[Closing] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/next":
            return _hello(environ, start_response)
        start_response(status, [])
        iterable = Closing(_endless())
        iterables.append(iterable)
        return iterable

    with RawConnection(wsgi_url(app, threads=1)) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
        assert (response.status, response.body, response.complete) == (int(status[:3]), b"", True)
        assert iterables[0].closed.wait(WAIT), "close() was not called"
        assert iterables[0].produced == 1
        connection.request("GET", "/next")
        assert connection.read_response().body == b"hello"


@pytest.mark.parametrize("shape", ["list", "generator"])
def test_fewer_bytes_than_content_length_breaks_the_connection(
    wsgi_url: WSGIUrl, shape: str
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "10")])
        return [b"abc"] if shape == "list" else iter([b"a", b"bc"])

    with RawConnection(wsgi_url(app)) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
        assert connection.read_until_closed() == b""
        assert connection.closed_by_peer
    assert response.status == 200
    assert response.headers["content-length"] == "10"
    assert response.body == b"abc"
    assert not response.complete


def test_several_chunks_without_content_length_are_chunked(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return (chunk for chunk in [b"one;", b"two;", b"three"])

    url = wsgi_url(validator(app))
    with RawConnection(url) as connection:
        for _ in range(2):
            connection.request("GET", "/")
            response = connection.read_response()
            assert response.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in response.headers
            assert response.body == b"one;two;three"
            assert response.complete


def test_http_1_0_streamed_body_is_close_delimited(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return (chunk for chunk in [b"one;", b"two;", b"three"])

    with RawConnection(wsgi_url(validator(app))) as connection:
        connection.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        head = connection.read_until(b"\r\n\r\n")
        body = connection.read_until_closed()
    assert b"chunked" not in head.lower()
    assert body == b"one;two;three"


@pytest.mark.parametrize("body", [b"just one", b""])
def test_single_item_list_gets_a_content_length(wsgi_url: WSGIUrl, body: bytes) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return [body]

    response = fetch(wsgi_url(app), "GET", "/")
    assert response.headers.get("content-length") == str(len(body))
    assert "transfer-encoding" not in response.headers
    assert response.body == body


# -- close() ----------------------------------------------------------------------------


def test_close_is_called_after_a_normal_response(wsgi_url: WSGIUrl) -> None:
    closing = Closing([b"a", b"b"])

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return closing

    with client(wsgi_url(validator(app))) as http:
        assert http.get("/").content == b"ab"
    assert closing.closed.wait(WAIT)
    assert closing.close_calls == 1


@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_close_is_called_when_iteration_fails(wsgi_url: WSGIUrl, fail_at: int) -> None:
    # fail_at 0: before any body (500); 1: mid-body; 2: after the last chunk (both broken off).
    closing = Closing([b"a", b"b"], fail_at=fail_at)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return closing

    with RawConnection(wsgi_url(app)) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
    if fail_at == 0:
        assert response.status == 500
    else:
        assert response.status == 200
        assert not response.complete
        assert response.body == b"ab"[:fail_at]
    assert closing.closed.wait(WAIT)
    assert closing.close_calls == 1


def test_close_is_called_when_the_client_goes_away_mid_stream(wsgi_url: WSGIUrl) -> None:
    closing = Closing(_endless(), delay=0.002)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return closing

    with RawConnection(wsgi_url(validator(app))) as connection:
        connection.request("GET", "/")
        assert b"x" * 1024 in connection.read_at_least(16384)
    started = time.monotonic()
    assert closing.closed.wait(WAIT), "close() not called after the client went away"
    assert closing.close_calls == 1
    assert time.monotonic() - started < WAIT
    produced = closing.produced
    time.sleep(0.2)  # and the application is no longer being iterated
    assert closing.produced == produced


def test_write_fails_when_the_client_goes_away(wsgi_url: WSGIUrl) -> None:
    failure: list[BaseException] = []
    done = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        deadline = time.monotonic() + WAIT * 2
        try:
            while time.monotonic() < deadline:
                write(b"y" * 1024)
                time.sleep(0.002)
        except Exception as exc:
            failure.append(exc)
            raise
        finally:
            done.set()
        return []

    with RawConnection(wsgi_url(app)) as connection:
        connection.request("GET", "/")
        assert b"y" * 1024 in connection.read_at_least(16384)
    assert done.wait(WAIT * 2)
    assert failure, "write() kept succeeding after the client went away"
    assert isinstance(failure[0], OSError)


# -- wsgi.file_wrapper ------------------------------------------------------------------


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(300_000) + b"the end"
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


def _file_app(
    path: Path, opened: list[Any], headers: list[tuple[str, str]] | None = None, seek: int = 0
) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        file = path.open("rb")
        opened.append(file)
        file.seek(seek)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *(headers or [])])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](file, 8192)
        return wrapper

    return app


def _assert_all_closed(opened: list[Any]) -> None:
    deadline = time.monotonic() + WAIT
    while not all(file.closed for file in opened) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert opened and all(file.closed for file in opened), "the file was not closed"


def test_file_wrapper_sends_the_whole_file(
    wsgi_url: WSGIUrl, data_file: tuple[Path, bytes]
) -> None:
    path, data = data_file
    opened: list[Any] = []
    with client(wsgi_url(_file_app(path, opened))) as http:
        for _ in range(2):
            response = http.get("/")
            assert response.status_code == 200
            assert response.content == data
    _assert_all_closed(opened)


def test_file_wrapper_starts_at_the_current_position(
    wsgi_url: WSGIUrl, data_file: tuple[Path, bytes]
) -> None:
    path, data = data_file
    opened: list[Any] = []
    with client(wsgi_url(_file_app(path, opened, seek=1000))) as http:
        assert http.get("/").content == data[1000:]
    _assert_all_closed(opened)


def test_file_wrapper_truncated_to_content_length(
    wsgi_url: WSGIUrl, data_file: tuple[Path, bytes]
) -> None:
    path, data = data_file
    opened: list[Any] = []
    app = _file_app(path, opened, [("Content-Length", "1000")])
    with RawConnection(wsgi_url(app)) as connection:
        for _ in range(2):  # nothing beyond the 1000 bytes: the connection stays in sync
            connection.request("GET", "/")
            response = connection.read_response()
            assert response.headers["content-length"] == "1000"
            assert response.body == data[:1000]
    _assert_all_closed(opened)


def test_file_wrapper_shorter_than_content_length_breaks_the_connection(
    wsgi_url: WSGIUrl, data_file: tuple[Path, bytes]
) -> None:
    path, data = data_file
    opened: list[Any] = []
    app = _file_app(path, opened, [("Content-Length", str(len(data) + 10))])
    with RawConnection(wsgi_url(app)) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
    assert response.body == data
    assert not response.complete
    _assert_all_closed(opened)


def test_file_wrapper_over_a_non_file(wsgi_url: WSGIUrl) -> None:
    data = b"in memory " * 10_000
    buffers: list[io.BytesIO] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        buffer = io.BytesIO(data)
        buffers.append(buffer)
        start_response("200 OK", TEXT)
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](buffer, 4096)
        return wrapper

    with client(wsgi_url(validator(app))) as http:
        assert http.get("/").content == data
    _assert_all_closed(buffers)


def test_file_wrapper_head_request(wsgi_url: WSGIUrl, data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    opened: list[Any] = []
    with RawConnection(wsgi_url(_file_app(path, opened))) as connection:
        connection.request("HEAD", "/")
        head = connection.read_response(head_request=True)
        connection.request("GET", "/")
        response = connection.read_response()
    assert head.status == 200
    assert head.headers.get("content-length") in (None, str(len(data)))
    assert response.body == data
    _assert_all_closed(opened)


# -- HEAD and bodiless statuses --------------------------------------------------------


@pytest.mark.parametrize("shape", ["list", "generator", "write", "content-length"])
def test_head_request_gets_no_body(wsgi_url: WSGIUrl, shape: str) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        headers = [*TEXT, ("Content-Length", "11")] if shape == "content-length" else TEXT
        write = start_response("200 OK", headers)
        if shape == "write":
            write(b"hello ")
            return [b"world"]
        if shape == "generator":
            return iter([b"hello ", b"world"])
        return [b"hello world"]

    url = wsgi_url(validator(app))
    with RawConnection(url) as connection:
        connection.request("HEAD", "/")
        head = connection.read_response(head_request=True)
        # Any body bytes sent after the HEAD response would corrupt this next response.
        connection.request("GET", "/")
        response = connection.read_response()
    assert head.status == 200
    assert head.headers.get("content-length") in (None, "11")
    assert response.status == 200
    assert response.body == b"hello world"
    with client(url) as http:
        assert http.head("/").content == b""


def test_304_with_content_length_has_no_body_and_keeps_the_connection(wsgi_url: WSGIUrl) -> None:
    # RFC 9110 8.6: a 304 may carry the Content-Length the 200 would have had.
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/cached":
            start_response("304 Not Modified", [("ETag", '"v1"'), ("Content-Length", "1234")])
            return []
        return _hello(environ, start_response)

    with RawConnection(wsgi_url(validator(app))) as connection:
        connection.request("GET", "/cached")
        response = connection.read_response()
        assert response.status == 304
        assert response.headers["etag"] == '"v1"'
        connection.request("GET", "/")
        assert connection.read_response().body == b"hello"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_bodiless_status_sends_no_body(wsgi_url: WSGIUrl, status: str) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/empty":
            start_response(status, [])
            return [b"body-of-a-bodiless-status"]
        return _hello(environ, start_response)

    with RawConnection(wsgi_url(app)) as connection:
        connection.request("GET", "/empty")
        response = connection.read_response()
        assert response.status == int(status[:3])
        assert "content-length" not in response.headers or status.startswith("304")
        # Whatever the app returned, nothing may follow a 204/304 head on the wire.
        connection.request("GET", "/")
        assert connection.read_response().body == b"hello"


# -- more body shapes --------------------------------------------------------------------


def test_big_single_item_list_gets_a_content_length(wsgi_url: WSGIUrl) -> None:
    body = os.urandom(3 * 1024 * 1024)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]

    response = fetch(wsgi_url(app), "GET", "/")
    assert response.headers.get("content-length") == str(len(body))
    assert response.body == body


@pytest.mark.parametrize("chunks", [[], [b""], [b"lazy ", b"head"]])
def test_start_response_called_lazily_inside_a_generator(
    wsgi_url: WSGIUrl, chunks: list[bytes]
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)  # runs only on the server's first next()
        yield from chunks

    with client(wsgi_url(validator(app))) as http:
        response = http.get("/")
    assert response.status_code == 200
    assert response.content == b"".join(chunks)


def test_generator_that_never_calls_start_response_is_a_500(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        yield from ()

    assert fetch(wsgi_url(app), "GET", "/").status == 500


def test_app_returning_none_is_a_500(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        start_response("200 OK", TEXT)
        return None

    assert fetch(wsgi_url(app), "GET", "/").status == 500


@pytest.mark.parametrize("shape", ["list", "generator"])
def test_close_raising_after_a_complete_body_keeps_the_response(
    wsgi_url: WSGIUrl, shape: str
) -> None:
    # The body was complete when close() failed: the error is the application's to log, the
    # client keeps its (complete) response (as gunicorn and waitress do).
    class FailingClose(Closing):
        def close(self) -> None:
            super().close()
            raise RuntimeError("close() failed")

    iterables: list[Closing] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        chunks = [b"complete body"] if shape == "list" else [b"complete ", b"body"]
        iterables.append(FailingClose(chunks))
        return iterables[-1]

    with RawConnection(wsgi_url(app)) as connection:
        connection.request("GET", "/")
        response = connection.read_response()
    assert response.status == 200
    assert response.body == b"complete body"
    assert response.complete
    assert iterables[0].close_calls == 1


def test_file_wrapper_closed_when_the_client_goes_away(wsgi_url: WSGIUrl, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with path.open("wb") as file:
        for _ in range(64):
            file.write(os.urandom(1 << 20))
    opened: list[Any] = []
    with RawConnection(wsgi_url(_file_app(path, opened))) as connection:
        connection.request("GET", "/")
        connection.read_at_least(256 * 1024)
    _assert_all_closed(opened)


def test_app_date_and_server_headers_are_not_doubled(wsgi_url: WSGIUrl) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(
            "200 OK",
            [*TEXT, ("Server", "app-server"), ("Date", "Thu, 01 Jan 1970 00:00:00 GMT")],
        )
        return [b"ok"]

    response = fetch(wsgi_url(validator(app)), "GET", "/")
    head = response.head.lower()
    assert head.count(b"\r\nserver: ") == 1
    assert head.count(b"\r\ndate: ") == 1
    assert response.headers["server"] == "app-server"
    assert response.headers["date"] == "Thu, 01 Jan 1970 00:00:00 GMT"
