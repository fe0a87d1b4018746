"""The PEP 3333 bridge in memory: `wsgi.run_wsgi` into a recording ResponseSink, no sockets.

The socket tests (test_wsgi_response.py) check what a client sees through both feeders; these
check the calls the bridge makes on its sink, in order, and what the application observes,
for each rule of PEP 3333's response side.
"""

from __future__ import annotations

import io
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import pytest

from dualgate.wsgi.bridge import (
    BytesSource,
    ClientDisconnected,
    FileWrapper,
    build_environ,
    run_wsgi,
)

Event = tuple[Any, ...]
TEXT = [("Content-Type", "text/plain")]


class RecordingSink:
    """A ResponseSink that records every call; `gone_after` writes, the client is gone."""

    def __init__(self, *, gone_after: int | None = None, can_sendfile: bool = False) -> None:
        self.events: list[Event] = []
        self.gone_after = gone_after
        self.can_sendfile = can_sendfile

    def start(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("start", status, reason, list(headers)))

    def write(self, data: bytes) -> None:
        writes = sum(1 for event in self.events if event[0] == "write")
        if self.gone_after is not None and writes >= self.gone_after:
            raise ClientDisconnected("the client went away")
        self.events.append(("write", data))

    def sendfile(self, file: Any, offset: int, count: int) -> bool:
        if not self.can_sendfile:
            return False
        file.seek(offset)
        self.events.append(("sendfile", file.read(count)))
        return True

    def end(self, data: bytes) -> None:
        self.events.append(("end", data))

    def abort(self) -> None:
        self.events.append(("abort",))

    @property
    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]

    @property
    def head(self) -> Event:
        [start] = [event for event in self.events if event[0] == "start"]
        return start

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.head[3] if key.lower() == name]
        assert len(values) <= 1, values
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        return b"".join(event[1] for event in self.events if event[0] in ("write", "end"))


def environ_for(method: str = "GET", body: bytes = b"") -> WSGIEnvironment:
    return build_environ(
        method=method,
        script_name="",
        path_info="/",
        query_string="",
        headers=[(b"host", b"test")],
        http_version="1.1",
        scheme="http",
        client=("127.0.0.1", 5000),
        server=("test", 80),
        body=BytesSource(body),
    )


def run(app: WSGIApplication, method: str = "GET", **sink_options: Any) -> RecordingSink:
    sink = RecordingSink(**sink_options)
    run_wsgi(app, environ_for(method), sink)
    return sink


class Closing:
    """An iterable over `chunks` that counts what it produced and its close() calls."""

    def __init__(self, chunks: Iterable[bytes], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.produced = 0
        self.close_calls = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("failed mid-iteration")
            self.produced += 1
            yield chunk

    def close(self) -> None:
        self.close_calls += 1


def returning(
    iterable: Iterable[bytes], status: str = "200 OK", headers: list[tuple[str, str]] | None = None
) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, TEXT if headers is None else headers)
        return iterable

    return app


# -- start_response and exc_info -----------------------------------------------------------


def test_second_start_response_without_exc_info_raises_into_the_app() -> None:
    raised: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        try:
            start_response("201 Created", TEXT)
        except AssertionError as exc:
            raised.append(exc)
            raise
        return [b"never"]

    sink = run(app)
    assert len(raised) == 1
    assert sink.kinds == ["start", "end"]
    assert sink.head[1] == 500
    assert b"never" not in sink.body


def test_exc_info_before_the_head_went_out_replaces_it() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("X-First", "1")])
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("503 Try Later", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    sink = run(app)
    assert sink.kinds == ["start", "end"]
    assert sink.head[1:3] == (503, b"Try Later")
    assert sink.header(b"x-first") is None
    assert sink.header(b"x-second") == b"2"
    assert sink.body == b"sorry"


def test_exc_info_after_the_head_went_out_reraises_it() -> None:
    reraised: list[BaseException] = []
    failure = ValueError("after the head")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b"partial"
        try:
            raise failure
        except ValueError:
            try:
                start_response("500 Oops", TEXT, sys.exc_info())
            except ValueError as exc:
                reraised.append(exc)
                raise

    sink = run(app)
    assert reraised == [failure]
    # The head is out: the client can only see the response broken off.
    assert sink.kinds == ["start", "write", "abort"]
    assert sink.head[1] == 200


@pytest.mark.parametrize(
    "status", ["20 OK", "2000 Long", "099 Low", "20x OK", "200 OK\r\nX: y", b"200 OK"]
)
def test_invalid_status_raises_from_start_response(status: Any) -> None:
    raised: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            start_response(status, TEXT)
        except (TypeError, ValueError) as exc:
            raised.append(exc)
            raise
        return [b"body"]

    sink = run(app)
    assert len(raised) == 1
    assert sink.head[1] == 500


def test_returning_without_start_response_is_a_500() -> None:
    sink = run(lambda environ, start_response: [b"no head"])
    assert sink.kinds == ["start", "end"]
    assert sink.head[1] == 500
    assert b"no head" not in sink.body


def test_write_before_start_response_is_a_500() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)(b"fine")  # the returned write() works ...
        return []

    assert run(app).body == b"fine"

    writes: list[Callable[[bytes], object]] = []

    def first(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        writes.append(start_response("200 OK", TEXT))
        return []

    run(first)

    def second(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        writes[0](b"too early")  # ... but not that of another request, before start_response
        return []

    sink = run(second)
    assert sink.head[1] == 500


# -- the head goes out with the first non-empty chunk ----------------------------------------


def test_head_waits_for_the_first_non_empty_chunk() -> None:
    sink = RecordingSink()
    seen_at_resume: list[list[str]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b""
        seen_at_resume.append(list(sink.kinds))
        yield b""
        seen_at_resume.append(list(sink.kinds))
        yield b"first"
        seen_at_resume.append(list(sink.kinds))
        yield b"second"

    run_wsgi(app, environ_for(), sink)
    assert seen_at_resume == [[], [], ["start", "write"]]
    assert sink.events[1:] == [("write", b"first"), ("write", b"second"), ("end", b"")]
    assert sink.header(b"content-length") is None  # streamed: the length was never known


def test_all_empty_chunks_send_the_head_at_the_end_with_a_zero_length() -> None:
    sink = run(returning(Closing([b"", b"", b""])))
    assert sink.kinds == ["start", "end"]
    assert sink.header(b"content-length") == b"0"
    assert sink.body == b""


def test_whole_list_body_goes_out_with_the_head_and_its_length() -> None:
    sink = run(returning([b"hello ", b"world"]))
    assert sink.kinds == ["start", "end"]
    assert sink.header(b"content-length") == b"11"
    assert sink.events[-1] == ("end", b"hello world")


# -- Content-Length --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "sent"),
    [
        ([b"hello world"], [b"hello"]),
        ([b"hel", b"lo world", b"never"], [b"hel", b"lo"]),
        ([b"hello", b"never"], [b"hello"]),
    ],
)
def test_body_is_cut_at_the_content_length_and_iteration_stops(
    chunks: list[bytes], sent: list[bytes]
) -> None:
    iterable = Closing(chunks)
    sink = run(returning(iterable, headers=[*TEXT, ("Content-Length", "5")]))
    assert sink.body == b"hello"
    assert [event[1] for event in sink.events if event[0] == "write"] == sent
    assert sink.kinds[-1] == "end"
    assert iterable.produced == len(sent), "iterated past the Content-Length"
    assert iterable.close_calls == 1


def test_endless_iterable_ends_at_the_content_length() -> None:
    iterable = Closing(itertools.repeat(b"xyz"))
    sink = run(returning(iterable, headers=[*TEXT, ("Content-Length", "4")]))
    assert sink.body == b"xyzx"
    assert sink.kinds == ["start", "write", "write", "end"]
    assert (iterable.produced, iterable.close_calls) == (2, 1)


def test_zero_content_length_ends_with_the_first_non_empty_chunk() -> None:
    iterable = Closing(itertools.repeat(b"x"))
    sink = run(returning(iterable, headers=[*TEXT, ("Content-Length", "0")]))
    assert sink.kinds == ["start", "end"]
    assert (iterable.produced, iterable.close_calls) == (1, 1)


def test_write_past_the_content_length_is_dropped() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [*TEXT, ("Content-Length", "4")])
        write(b"abc")
        write(b"def")
        write(b"ghi")
        return []

    sink = run(app)
    assert sink.events[1:] == [("write", b"abc"), ("write", b"d"), ("end", b"")]


@pytest.mark.parametrize("body", [[b"abc"], Closing([b"a", b"bc"])], ids=["list", "iterable"])
def test_fewer_bytes_than_the_content_length_abort(body: Iterable[bytes]) -> None:
    sink = run(returning(body, headers=[*TEXT, ("Content-Length", "10")]))
    assert sink.kinds[0] == "start"
    assert sink.kinds[-1] == "abort"
    assert "end" not in sink.kinds
    assert sink.body == b"abc"


# -- HEAD, 204 and 304 -----------------------------------------------------------------------


def test_head_request_sends_the_head_only() -> None:
    sink = run(returning([b"hello world"]), method="HEAD")
    assert sink.kinds == ["start", "end"]
    assert sink.events[-1] == ("end", b"")
    assert sink.header(b"content-length") == b"11"  # the length a GET would get


def test_head_request_stops_an_endless_iterable_at_its_head() -> None:
    iterable = Closing(itertools.repeat(b"x"))
    sink = run(returning(iterable), method="HEAD")
    assert sink.kinds == ["start", "end"]
    assert (iterable.produced, iterable.close_calls) == (1, 1)


def test_head_request_with_no_body_declares_no_length() -> None:
    sink = run(returning([]), method="HEAD")
    assert sink.header(b"content-length") is None  # says nothing about the GET body


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
@pytest.mark.parametrize("shape", ["list", "endless"])
def test_bodiless_status_sends_no_body(status: str, shape: str) -> None:
    iterable = Closing([b"body"] if shape == "list" else itertools.repeat(b"body"))
    sink = run(returning(iterable, status=status, headers=[]))
    assert sink.kinds == ["start", "end"]
    assert sink.body == b""
    assert sink.header(b"content-length") is None
    assert iterable.close_calls == 1
    assert iterable.produced == 1


def test_304_keeps_the_content_length_of_the_get() -> None:
    # RFC 9110 8.6: a 304 may carry the Content-Length the 200 would have had.
    sink = run(returning([], status="304 Not Modified", headers=[("Content-Length", "1234")]))
    assert sink.kinds == ["start", "end"]
    assert sink.header(b"content-length") == b"1234"


def test_bodiless_status_with_a_file_wrapper_sends_no_file() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("304 Not Modified", [])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](io.BytesIO(b"file body"))
        return wrapper

    sink = run(app, can_sendfile=True)
    assert sink.kinds == ["start", "end"]
    assert sink.body == b""


# -- close() ---------------------------------------------------------------------------------


def test_close_is_called_once_after_a_normal_response() -> None:
    iterable = Closing([b"a", b"b"])
    assert run(returning(iterable)).body == b"ab"
    assert iterable.close_calls == 1


def test_close_is_called_once_when_iteration_fails() -> None:
    iterable = Closing([b"a", b"b", b"c"], fail_at=1)
    sink = run(returning(iterable))
    assert sink.kinds == ["start", "write", "abort"]
    assert iterable.close_calls == 1


def test_close_is_called_once_when_the_first_chunk_fails() -> None:
    iterable = Closing([b"a"], fail_at=0)
    sink = run(returning(iterable))
    assert sink.head[1] == 500  # nothing went out yet: a clean 500
    assert iterable.close_calls == 1


def test_close_is_called_once_when_the_client_goes_away() -> None:
    iterable = Closing(itertools.repeat(b"x"))
    sink = run(returning(iterable), gone_after=3)
    assert sink.kinds == ["start", "write", "write", "write"]
    assert iterable.close_calls == 1
    assert iterable.produced == 4


def test_close_raising_after_a_complete_body_keeps_the_response() -> None:
    class FailingClose(Closing):
        def close(self) -> None:
            super().close()
            raise RuntimeError("close failed")

    iterable = FailingClose([b"a", b"b"])
    sink = run(returning(iterable))
    assert sink.kinds == ["start", "write", "write", "end"]
    assert iterable.close_calls == 1


def test_file_wrapper_is_sent_whole_and_closed_once() -> None:
    file = io.BytesIO(b"0123456789")
    closed: list[bool] = []
    file_close = file.close

    def close() -> None:
        closed.append(True)
        file_close()

    file.close = close  # type: ignore[method-assign]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "6")])
        wrapper: Iterable[bytes] = FileWrapper(file, block_size=4)
        return wrapper

    sink = run(app)
    assert sink.body == b"012345"
    assert sink.kinds == ["start", "write", "write", "end"]
    assert closed == [True]


# -- write() -----------------------------------------------------------------------------------


def test_write_then_iterable_keeps_the_order() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"one ")
        write(b"")
        write(b"two ")
        return iter([b"three"])

    sink = run(app)
    assert sink.events[1:] == [
        ("write", b"one "),
        ("write", b"two "),
        ("write", b"three"),
        ("end", b""),
    ]
    assert sink.header(b"content-length") is None


def test_write_of_a_non_bytes_chunk_raises_into_the_app() -> None:
    raised: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        try:
            write("text")  # type: ignore[arg-type]
        except TypeError as exc:
            raised.append(exc)
            raise
        return []

    sink = run(app)
    assert len(raised) == 1
    assert sink.head[1] == 500


def test_write_raises_client_disconnected_into_the_app() -> None:
    outcome: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"first")
        try:
            write(b"second")
        except OSError as exc:  # PEP 3333 leaves the type open; ours is an OSError
            outcome.append(exc)
            raise
        return []

    sink = run(app, gone_after=1)
    assert len(outcome) == 1 and isinstance(outcome[0], ClientDisconnected)
    assert sink.kinds == ["start", "write"]  # gone: nothing more to say to the client


# -- the environ's headers -----------------------------------------------------------------------


def test_repeated_headers_are_joined_in_order() -> None:
    environ = build_environ(
        method="GET",
        script_name="",
        path_info="/",
        query_string="",
        headers=[
            (b"host", b"test"),
            (b"accept", b"text/html"),
            (b"cookie", b"a=1"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"accept", b"text/plain"),
            (b"cookie", b"b=2"),
            (b"x_forwarded_for", b"10.6.6.6"),
            (b"accept", b"*/*"),
            (b"cookie", b"c=3"),
            (b"content-type", b"text/plain"),
            (b"x-single", b"only"),
        ],
        http_version="1.1",
        scheme="http",
        client=None,
        server=None,
        body=BytesSource(b""),
    )
    assert environ["HTTP_ACCEPT"] == "text/html, text/plain, */*"
    assert environ["HTTP_COOKIE"] == "a=1; b=2; c=3"
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"  # the underscored one is dropped
    assert environ["HTTP_X_SINGLE"] == "only"
    assert environ["HTTP_HOST"] == "test"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_CONTENT_TYPE" not in environ
