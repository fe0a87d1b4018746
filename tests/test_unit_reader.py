"""The request reader (dualgate/http/reader.py) in memory: bytes and EOF in, events out, no sockets.

Modelled on h11's own tests. A TCP stream may be cut anywhere, so every request here is fed
whole, split at every byte, byte by byte and at random points, and must yield the same events
each way. `Driver` plays the connection's part (tests/test_http_*.py test the real one over
sockets): it pumps events until the reader asks for data, and once a request is complete it
finishes the response (`start_next()`) either at once or later, while more bytes arrive.
"""

from __future__ import annotations

import functools
import itertools
import string
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualgate.http.checks import Refusal
from dualgate.http.reader import (
    CLOSED,
    END,
    NEED_DATA,
    PAUSED,
    READER_MOVES,
    ReaderEvent,
    ReaderState,
    Request,
    RequestReader,
)

MAX_HEAD = 65536
MAX_FIELDS = 100

# One event as the tests compare it: ("request", fields), ("body", all bytes up to the next
# non-body event), ("end",), ("closed",) or ("refusal", status, message, kind).
Seen = tuple[object, ...]


def fields(request: Request) -> Seen:
    return (
        request.method,
        request.target,
        tuple(request.headers),
        request.http_version,
        request.content_length,
        request.chunked,
        request.keep_alive,
        request.upgrade,
        request.expects_continue,
    )


def new_reader(
    max_head: int = MAX_HEAD, max_fields: int = MAX_FIELDS, max_body: int | None = None
) -> RequestReader:
    return RequestReader(max_head, max_fields, max_body)


def pump(reader: RequestReader) -> list[ReaderEvent]:
    """The raw events up to the first that asks the caller to wait (or ends the connection)."""
    events: list[ReaderEvent] = []
    for _ in range(10_000):
        event = reader.next_event()
        events.append(event)
        if event is NEED_DATA or event is PAUSED or event is CLOSED or type(event) is Refusal:
            return events
    raise AssertionError(f"no wait after {len(events)} events")


class Driver:
    """The connection's side of the reader: pumps events and answers each complete request."""

    def __init__(self, reader: RequestReader | None = None) -> None:
        self.reader = reader or new_reader()
        self.seen: list[Seen] = []
        self.in_body = False  # a request whose body is still arriving
        self.waiting = False  # a complete request whose response is not done yet
        self.refused = False
        self.pauses = 0

    def _add(self, item: Seen) -> None:
        last = self.seen[-1] if self.seen else None
        if item[0] == "body" and last is not None and last[0] == "body":
            self.seen[-1] = ("body", cast(bytes, last[1]) + cast(bytes, item[1]))
        elif not (item == ("closed",) and last == item):
            self.seen.append(item)

    def pump(self) -> None:
        for event in pump(self.reader):
            if type(event) is Request:
                assert not (self.in_body or self.waiting), "a request before the last one ended"
                self._add(("request", fields(event)))
                self.in_body, self.waiting = event.has_body, not event.has_body
            elif type(event) is bytes:
                assert self.in_body and event, "body bytes outside a body"
                self._add(("body", event))
            elif event is END:
                assert self.in_body, "END outside a body"
                self.in_body, self.waiting = False, True
                self._add(("end",))
            elif event is PAUSED:
                # Bytes wait only behind a request that is complete.
                assert self.waiting and not self.in_body
                self.pauses += 1
            elif event is CLOSED:
                self._add(("closed",))
            elif type(event) is Refusal:
                self._add(("refusal", *event))
                self.refused = True
                # A refusal closes the connection: the reader says nothing more.
                assert self.reader.next_event() is NEED_DATA
            else:
                assert event is NEED_DATA

    def respond(self) -> None:
        """The response to the complete request is done; read on."""
        if self.waiting and not self.refused:
            self.waiting = False
            self.reader.start_next()
            self.pump()

    def feed(self, data: bytes, respond: bool = True) -> None:
        if not self.refused:
            self.reader.feed(data)
            self.pump()
            if respond:
                self.respond()

    def finish(self, eof: bool = False) -> list[Seen]:
        for _ in range(1000):
            if not self.waiting or self.refused:
                break
            self.respond()
        if eof and not self.refused:
            self.reader.feed_eof()
            self.pump()
            for _ in range(1000):
                if not self.waiting or self.refused:
                    break
                self.respond()
        return self.seen


def run(
    chunks: Sequence[bytes],
    responds: Sequence[bool] = (),
    eof: bool = False,
    reader: RequestReader | None = None,
) -> list[Seen]:
    """Feed `chunks` in turn; after chunk i the pending response is done when responds[i]
    (default: at once)."""
    driver = Driver(reader)
    for i, chunk in enumerate(chunks):
        driver.feed(chunk, responds[i] if i < len(responds) else True)
    return driver.finish(eof)


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(set(p for p in points if 0 < p < len(data))), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def splits(data: bytes) -> Iterator[list[bytes]]:
    """Every way to cut `data` in two, then byte by byte."""
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    yield [data[i : i + 1] for i in range(len(data))]


# -- requests and the events they must yield ----------------------------------------------

GET = b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com\r\nUser-Agent: unit\r\nAccept: */*\r\n\r\n"
GET_SEEN: Seen = (
    "request",
    (
        b"GET",
        b"/a/b?c=d&e",
        ((b"host", b"example.com"), (b"user-agent", b"unit"), (b"accept", b"*/*")),
        b"1.1",
        0,
        False,
        True,
        b"",
        False,
    ),
)
HEAD = b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n"
HEAD_SEEN: Seen = (
    "request",
    (b"HEAD", b"/h", ((b"host", b"h"),), b"1.1", 0, False, True, b"", False),
)
POST = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\n"
POST += b"hello world"
POST_SEEN: list[Seen] = [
    (
        "request",
        (
            b"POST",
            b"/form",
            ((b"host", b"h"), (b"content-length", b"11"), (b"content-type", b"text/plain")),
            b"1.1",
            11,
            False,
            True,
            b"",
            False,
        ),
    ),
    ("body", b"hello world"),
    ("end",),
]
CHUNKED = (
    b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n"
    b'9;q="a \\"b\\"";flag\r\n, \r\n\r\nwor\r\n'
    b"000\r\n"
    b"X-Checksum: 1\r\nX-Other: two words\r\n\r\n"
)
CHUNKED_SEEN: list[Seen] = [
    (
        "request",
        (
            b"POST",
            b"/up",
            ((b"host", b"h"), (b"transfer-encoding", b"chunked")),
            b"1.1",
            0,
            True,
            True,
            b"",
            False,
        ),
    ),
    ("body", b"hello, \r\n\r\nwor"),
    ("end",),
]
ABSOLUTE = b"GET http://Example.com:8080/p?q=1 HTTP/1.1\r\nHost: other\r\nX: y\r\n\r\n"
ABSOLUTE_SEEN: Seen = (
    "request",
    (
        b"GET",
        b"/p?q=1",
        ((b"x", b"y"), (b"host", b"Example.com:8080")),
        b"1.1",
        0,
        False,
        True,
        b"",
        False,
    ),
)
HTTP10 = b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
HTTP10_SEEN: Seen = (
    "request",
    (b"GET", b"/old", ((b"connection", b"keep-alive"),), b"1.0", 0, False, True, b"", False),
)
CONTINUE = b"PUT /c HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndata"
CONTINUE_SEEN: list[Seen] = [
    (
        "request",
        (
            b"PUT",
            b"/c",
            ((b"host", b"h"), (b"expect", b"100-continue"), (b"content-length", b"4")),
            b"1.1",
            4,
            False,
            True,
            b"",
            True,
        ),
    ),
    ("body", b"data"),
    ("end",),
]

CASES: dict[str, tuple[bytes, list[Seen]]] = {
    "get": (GET, [GET_SEEN]),
    "head": (HEAD, [HEAD_SEEN]),
    "post-content-length": (POST, POST_SEEN),
    "chunked-extensions-trailers": (CHUNKED, CHUNKED_SEEN),
    "absolute-form": (ABSOLUTE, [ABSOLUTE_SEEN]),
    "leading-empty-lines": (b"\r\n\r\n" + GET, [GET_SEEN]),
    "http10-keep-alive": (HTTP10 + HTTP10, [HTTP10_SEEN, HTTP10_SEEN]),
    "expect-continue": (CONTINUE, CONTINUE_SEEN),
    "pipelined": (
        GET + POST + b"\r\n" + CHUNKED + HEAD + CONTINUE + ABSOLUTE,
        [GET_SEEN, *POST_SEEN, *CHUNKED_SEEN, HEAD_SEEN, *CONTINUE_SEEN, ABSOLUTE_SEEN],
    ),
}


@pytest.mark.parametrize(("data", "expected"), CASES.values(), ids=CASES.keys())
def test_whole_request_yields_its_events(data: bytes, expected: list[Seen]) -> None:
    assert run([data]) == expected
    # An EOF after a complete exchange ends the stream quietly.
    assert run([data], eof=True) == [*expected, ("closed",)]


@pytest.mark.parametrize(("data", "expected"), CASES.values(), ids=CASES.keys())
def test_every_split_yields_the_same_events(data: bytes, expected: list[Seen]) -> None:
    for chunks in splits(data):
        # Responses done as soon as possible, and only once every byte is in (pipelined bytes
        # pile up behind the first request).
        assert run(chunks) == expected, chunks
        assert run(chunks, [False] * len(chunks)) == expected, chunks


def test_pipelined_requests_pause_until_start_next() -> None:
    reader = new_reader()
    reader.feed(GET + POST + HEAD)
    first = pump(reader)
    assert [type(e) for e in first] == [Request, type(PAUSED)] and first[1] is PAUSED
    # Nothing after a complete request is parsed before its response is done.
    assert reader.next_event() is PAUSED
    assert not reader.head_started
    reader.start_next()
    second = pump(reader)
    assert type(second[0]) is Request and second[1:] == [b"hello world", END, PAUSED]
    reader.start_next()
    third = pump(reader)
    assert type(third[0]) is Request and third[1:] == [NEED_DATA]
    assert fields(third[0]) == HEAD_SEEN[1]
    reader.start_next()
    assert pump(reader) == [NEED_DATA]


def test_bytes_after_a_connection_close_request_are_never_parsed() -> None:
    close = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    garbage = b"NOT HTTP AT ALL\r\n\r\n\x00\x01"
    reader = new_reader()
    reader.feed(close + garbage)
    events = pump(reader)
    assert type(events[0]) is Request and events[0].keep_alive is False
    assert events[1:] == [PAUSED]
    # The connection closes after the response and never calls start_next(): however much
    # more arrives, the reader holds it without a refusal.
    reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert [reader.next_event() for _ in range(3)] == [PAUSED] * 3
    # h11 alone would have answered those bytes with an error (its MUST_CLOSE state).
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(close + garbage)
    assert type(conn.next_event()) is h11.Request
    assert type(conn.next_event()) is h11.EndOfMessage
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()


def test_head_started_is_about_head_bytes_only() -> None:
    reader = new_reader()
    assert not reader.head_started
    reader.feed(b"\r\n")  # empty lines before a request line do not start a head
    assert not reader.head_started
    reader.feed(b"G")
    pump(reader)
    assert reader.head_started
    reader.feed(GET[1:])
    pump(reader)
    assert not reader.head_started


def test_a_higher_minor_version_is_served_as_1_1() -> None:
    seen = run([b"GET / HTTP/1.7\r\nHost: h\r\n\r\n"])
    assert seen == [
        ("request", (b"GET", b"/", ((b"host", b"h"),), b"1.1", 0, False, True, b"", False))
    ]


# -- random splits and bodies --------------------------------------------------------------

PIPELINE = CASES["pipelined"]


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(st.integers(1, len(PIPELINE[0]) - 1), max_size=12),
    responds=st.lists(st.booleans(), max_size=13),
)
def test_random_splits_of_a_pipeline(points: list[int], responds: list[bool]) -> None:
    data, expected = PIPELINE
    assert run(cut(data, points), responds) == expected
    assert run(cut(data, points), responds, eof=True) == [*expected, ("closed",)]


TOKEN_ALPHABET = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=8).map(str.encode)
# qdtext and quoted-pair (RFC 9110 section 5.6.4), printable ASCII only.
quoted = st.lists(
    st.one_of(
        st.sampled_from([c for c in string.printable[:95] if c not in '"\\']),
        st.sampled_from(['\\"', "\\\\", "\\a"]),
    ),
    max_size=6,
).map(lambda parts: b'"' + "".join(parts).encode() + b'"')
extensions = st.lists(
    st.tuples(tokens, st.one_of(st.none(), tokens, quoted)).map(
        lambda ext: b";" + ext[0] + (b"" if ext[1] is None else b"=" + ext[1])
    ),
    max_size=3,
).map(b"".join)
chunks = st.lists(
    st.tuples(st.binary(min_size=1, max_size=40), extensions, st.integers(0, 3), st.booleans()),
    max_size=6,
)
trailers = st.lists(
    st.tuples(tokens, st.text(string.ascii_letters + string.digits + "-_.", max_size=10)),
    max_size=3,
)


def chunk_line(size: int, zeros: int, upper: bool, ext: bytes) -> bytes:
    digits = b"%x" % size
    return b"0" * zeros + (digits.upper() if upper else digits) + ext + b"\r\n"


@settings(max_examples=200, deadline=None)
@given(body=chunks, last_ext=extensions, trailer=trailers, data=st.data())
def test_random_chunked_bodies_round_trip(
    body: list[tuple[bytes, bytes, int, bool]],
    last_ext: bytes,
    trailer: list[tuple[bytes, str]],
    data: st.DataObject,
) -> None:
    wire = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    for payload, ext, zeros, upper in body:
        wire += chunk_line(len(payload), zeros, upper, ext) + payload + b"\r\n"
    wire += b"0" + last_ext + b"\r\n"
    wire += b"".join(name + b": " + value.encode() + b"\r\n" for name, value in trailer)
    wire += b"\r\n" + GET
    points = data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=10))
    responds = data.draw(st.lists(st.booleans(), max_size=11))
    seen = run(cut(wire, points), responds)
    content = b"".join(payload for payload, _, _, _ in body)
    assert seen[0][0] == "request" and seen[0][1][5] is True  # type: ignore[index]
    assert seen[1:] == ([("body", content)] if content else []) + [("end",), GET_SEEN]


@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=300), data=st.data())
def test_random_content_length_bodies_round_trip(content: bytes, data: st.DataObject) -> None:
    wire = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(content)
    wire += content + GET
    points = data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=10))
    responds = data.draw(st.lists(st.booleans(), max_size=11))
    seen = run(cut(wire, points), responds)
    assert seen[0][1][4] == len(content)  # type: ignore[index]
    # Without a body (Content-Length: 0) the head alone is the whole request: no END.
    assert seen[1:] == ([("body", content), ("end",)] if content else []) + [GET_SEEN]


# -- what the reader owns beyond h11 ------------------------------------------------------


def refusal_of(seen: list[Seen]) -> Seen:
    assert seen and seen[-1][0] == "refusal", seen
    return seen[-1]


def assert_refused_every_way(
    data: bytes, expected: Seen, reader_args: dict[str, int | None] | None = None
) -> None:
    """`data` gets the `expected` refusal whole and however it is split; nothing follows it."""
    args = reader_args or {}
    for chunks in [[data], *splits(data)]:
        seen = run(chunks, reader=new_reader(**args))  # type: ignore[arg-type]
        assert refusal_of(seen) == expected, chunks
        assert [item[0] for item in seen].count("refusal") == 1


@pytest.mark.parametrize(
    ("coding", "status"),
    [
        (b"chunked, gzip", 400),
        (b"gzip", 400),
        (b"chunked, chunked", 400),
        (b"identity", 400),
        (b"gzip, chunked", 501),  # chunked last: a coding we do not decode, h11's 501 stays
    ],
)
def test_a_non_chunked_final_coding_is_400_not_h11s_501(coding: bytes, status: int) -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
    seen = run([data])
    assert len(seen) == 1
    refusal = refusal_of(seen)
    assert refusal[1] == status
    assert refusal[3] == ("smuggling" if status == 400 else "malformed")
    for chunks in splits(data):
        assert refusal_of(run(chunks))[1] == status


SMALL_HEAD = 1024


def test_a_too_long_target_is_414_and_too_many_header_bytes_431() -> None:
    long_target = b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: h\r\n" + b"X: " + b"b" * 500
    long_target += b"\r\n\r\n"
    assert_refused_every_way(
        long_target, ("refusal", 414, "Request target too long", "too_large"),
        {"max_head": SMALL_HEAD},
    )  # fmt: skip
    # A target longer than the whole limit: no line end has arrived yet.
    endless = b"GET /" + b"a" * (SMALL_HEAD + 10)
    seen = run([endless], reader=new_reader(max_head=SMALL_HEAD))
    assert refusal_of(seen) == ("refusal", 414, "Request target too long", "too_large")
    big_fields = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"b" * SMALL_HEAD + b"\r\n\r\n"
    assert_refused_every_way(
        big_fields, ("refusal", 431, "Request head too large", "too_large"),
        {"max_head": SMALL_HEAD},
    )  # fmt: skip


def test_the_head_limit_counts_the_head_only() -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n"
    data = head + b"x" * 2000
    reader = new_reader(max_head=len(head))
    seen = run([data], reader=reader)
    assert seen[1:] == [("body", b"x" * 2000), ("end",)]
    # One byte less and the same head is refused, however it arrives.
    assert_refused_every_way(
        head, ("refusal", 431, "Request head too large", "too_large"), {"max_head": len(head) - 1}
    )


def head_with_fields(count: int) -> bytes:
    lines = [b"Host: h"] + [b"X-%d: %d" % (i, i) for i in range(count - 1)]
    return b"GET / HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"


def test_the_header_field_count_is_checked_on_the_raw_bytes() -> None:
    accepted = head_with_fields(MAX_FIELDS)
    for chunks in [[accepted], *splits(accepted)]:
        seen = run(chunks)
        assert len(seen) == 1 and seen[0][0] == "request"
        assert len(seen[0][1][2]) == MAX_FIELDS  # type: ignore[index]
    refused = head_with_fields(MAX_FIELDS + 1)
    assert_refused_every_way(refused, ("refusal", 431, "Too many header fields", "too_large"))
    # Refused before the head is complete: no need to wait for the rest of a flood.
    reader = new_reader()
    reader.feed(refused[: refused.index(b"\r\n\r\n") + 2])
    assert type(pump(reader)[-1]) is Refusal


def test_the_field_limit_is_a_setting() -> None:
    assert run([head_with_fields(3)], reader=new_reader(max_fields=3))[0][0] == "request"
    seen = run([head_with_fields(4)], reader=new_reader(max_fields=3))
    assert refusal_of(seen) == ("refusal", 431, "Too many header fields", "too_large")


@pytest.mark.parametrize("first", [b" ", b"\t", b"\x00", b"\x10"])
def test_a_request_line_starting_with_a_control_or_space_is_400_however_it_arrives(
    first: bytes,
) -> None:
    # h11 refuses such a line as soon as its first byte arrives, but only while the head is
    # incomplete; a head that arrived whole over the field or size limit used to get 431 or
    # 414 from the raw-byte checks instead (found by fuzzing).
    expected = ("refusal", 400, "Malformed request: illegal request line", "malformed")
    assert_refused_every_way(first + head_with_fields(4), expected, {"max_fields": 3})
    assert_refused_every_way(first + b"GET /" + b"a" * 300, expected, {"max_head": 256})


@pytest.mark.parametrize("blank", [b"\n\r\n", b"\n\n", b"\r\n\n"])
def test_the_limits_count_the_head_where_h11_ends_it(blank: bytes) -> None:
    # h11 ends a head at the first blank line, LF optional-CR LF. The raw-byte limits used to
    # look for CRLF CRLF only, so a head ending in a bare LF arriving with its body counted the
    # body's lines as header fields (431), where the head alone gets the bare LF's 400 (found
    # by fuzzing).
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX: y" + blank
    body = b"1\r\na\r\n" * 10 + b"0\r\n\r\n"
    for chunks in ([head + body], [head, body], [head + body[:7], body[7:]]):
        refusal = refusal_of(run(chunks, reader=new_reader(max_fields=8, max_head=len(head) + 8)))
        assert refusal[1] == 400, (chunks, refusal)


def test_the_final_coding_is_read_from_the_head_where_h11_ends_it() -> None:
    # A head ending in a bare LF, followed by a request whose final coding is chunked: the 501
    # to 400 remap used to read codings up to the next CRLF CRLF, into the second request, and
    # kept h11's 501 when both arrived together (found by fuzzing). gzip last is a 400.
    first = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\n\r\n"
    data = first + b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    for points in ([], [len(first)], [len(first) - 1], [10, len(first) + 5]):
        assert refusal_of(run(cut(data, points)))[1] == 400, points


def test_the_field_count_and_the_size_limit_give_one_answer_however_the_head_arrives() -> None:
    # The first limit the bytes cross decides. The field count used to look past the size
    # limit when the head arrived whole (431) where, arriving in pieces, the size limit was
    # crossed first (414 here: the request line is over half the limit; found by fuzzing).
    data = b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n"
    data += b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"X-Long: " + b"b" * 200 + b"\r\n"
    data += b"".join(b"Y-%d: v\r\n" % i for i in range(10)) + b"\r\n"
    expected = ("refusal", 414, "Request target too long", "too_large")
    assert_refused_every_way(data, expected, {"max_head": 512, "max_fields": 8})
    # Within the size limit, the field count answers, whole or in pieces.
    few = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(12)) + b"\r\n"
    expected = ("refusal", 431, "Too many header fields", "too_large")
    assert_refused_every_way(few, expected, {"max_head": 512, "max_fields": 8})


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


def trailer_section(count: int) -> bytes:
    return b"".join(b"T-%d: %d\r\n" % (i, i) for i in range(count)) + b"\r\n"


def test_the_field_limit_holds_for_trailers_too() -> None:
    # A trailer section is parsed by h11 as a head is: thousands of tiny trailer fields would
    # cost the loop the same milliseconds the header-field limit is there to spare it.
    accepted = CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n" + trailer_section(MAX_FIELDS)
    for chunks in [[accepted], *splits(accepted)]:
        assert run(chunks)[1:] == [("body", b"abc"), ("end",)], chunks
    refused = CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n" + trailer_section(MAX_FIELDS + 1)
    assert_refused_every_way(refused, ("refusal", 431, "Too many trailer fields", "too_large"))
    # The limit is the reader's setting.
    few = CHUNKED_HEAD + b"0\r\n" + trailer_section(4)
    assert refusal_of(run([few], reader=new_reader(max_fields=3)))[1] == 431
    assert run([few], reader=new_reader(max_fields=4))[1:] == [("end",)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"5\nhello\r\n0\r\n\r\n", "Bare CR or LF in chunked framing"),
        (b"5;a\nb\r\nhello\r\n0\r\n\r\n", "Bare CR or LF in chunked framing"),
        (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "Bare CR or LF in chunked framing"),
        (b"5 \r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
        (b"00000000000000005\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
        (b"5;=x\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
        (b"0\r\nX: y\n\r\n", "Bare CR or LF in chunked framing"),
        (b"0\r\nX: y\r\n\n", "Bare CR or LF in chunked framing"),
    ],
)
def test_chunked_framing_is_refused_on_the_raw_bytes(body: bytes, message: str) -> None:
    # Each of these h11 lets through, or may: a proxy in front could frame the body otherwise.
    assert_refused_every_way(CHUNKED_HEAD + body, ("refusal", 400, message, "smuggling"))


def test_a_long_chunk_line_is_refused_however_it_arrives() -> None:
    line = b"5;name=" + b"v" * 5000 + b"\r\n"
    data = CHUNKED_HEAD + line + b"hello\r\n0\r\n\r\n"
    start = len(CHUNKED_HEAD)
    expected = ("refusal", 400, "Chunked framing line too long", "smuggling")
    for cut in (0, start - 1, start, start + 3000, start + len(line) - 1, start + len(line)):
        chunks = [data] if cut == 0 else [data[:cut], data[cut:]]
        assert refusal_of(run(chunks)) == expected, cut


def test_a_long_chunk_line_is_400_however_it_arrives_under_a_small_head_limit() -> None:
    # h11 holds an unfinished event to its own buffer limit, a backstop set from the head
    # limit. Under a head limit below the framing line limit, that backstop used to see a long
    # chunk line in pieces first and answer 431 "Request head too large" (found by fuzzing).
    line = b"5;name=" + b"v" * 5000 + b"\r\n"
    data = CHUNKED_HEAD + line + b"hello\r\n0\r\n\r\n"
    start = len(CHUNKED_HEAD)
    expected = ("refusal", 400, "Chunked framing line too long", "smuggling")
    for points in ([], [start + 2000], [start + 100, start + 1700, start + 3500, start + 4090]):
        assert refusal_of(run(cut(data, points), reader=new_reader(max_head=512))) == expected


def test_a_trailer_section_is_held_to_the_head_limit_however_it_arrives() -> None:
    # The trailer section is a field section like the head (RFC 9110 section 5.4). h11's
    # backstop used to refuse a long one only when it arrived in pieces (431) and let it
    # through whole; the raw-byte framing check now holds it to the head limit either way.
    fields = b"".join(b"T-%d: %s\r\n" % (i, b"v" * 300) for i in range(8))
    body = b"3\r\nabc\r\n0\r\n" + fields + b"\r\n"
    data = CHUNKED_HEAD + body
    trailer_size = len(fields) + 2
    ways = [[], [len(data) - 5], [len(CHUNKED_HEAD) + 20, len(data) - 700, len(data) - 3]]
    for points in ways:
        seen = run(cut(data, points), reader=new_reader(max_head=trailer_size))
        assert seen[1:] == [("body", b"abc"), ("end",)], points
        refused = run(cut(data, points), reader=new_reader(max_head=trailer_size - 1))
        assert refusal_of(refused) == ("refusal", 431, "Trailer section too large", "too_large")


def test_chunk_data_not_followed_by_crlf_is_400_however_it_arrives() -> None:
    data = CHUNKED_HEAD + b"5\r\nhelloXY\r\n0\r\n\r\n"
    seen = run([data])
    assert refusal_of(seen) == ("refusal", 400, "Chunk data not followed by CRLF", "smuggling")
    # Cut after the "X", h11 refuses it before the line it starts is complete; the answer is
    # the same 400, only the message differs.
    for chunks in splits(data):
        assert refusal_of(run(chunks))[1] == 400


def test_content_length_bodies_are_read_past_h11() -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
    reader = new_reader()
    reader.feed(head)
    assert [type(e) for e in pump(reader)] == [Request, type(NEED_DATA)]
    first = b"01234"
    reader.feed(first)
    events = pump(reader)
    # The bytes as they arrived: not copied through h11's buffer.
    assert events[0] is first and events[1:] == [NEED_DATA]
    # The end of the body and the next request in one read: the body is cut at its length
    # and the rest waits for the next request.
    reader.feed(b"56789" + HEAD + b"GET")
    assert pump(reader) == [b"56789", END, PAUSED]
    reader.start_next()
    events = pump(reader)
    assert type(events[0]) is Request and fields(events[0]) == HEAD_SEEN[1]
    assert events[1:] == [PAUSED]
    reader.start_next()
    assert pump(reader) == [NEED_DATA]
    assert reader.head_started
    reader.feed(GET[3:])
    events = pump(reader)
    assert type(events[0]) is Request and fields(events[0]) == GET_SEEN[1]


def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    for head in (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n12345678",
        CHUNKED_HEAD + b"3\r\n123\r\n5\r\n45678\r\n0\r\n\r\n",
    ):
        for chunks in [[head], *splits(head)]:
            seen = run(chunks, reader=new_reader(max_body=8))
            assert seen[1:] == [("body", b"12345678"), ("end",)]


def test_max_body_size_refuses_413_for_both_framings() -> None:
    too_large = ("refusal", 413, "Request body too large", "too_large")
    declared = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n123456789"
    # A declared length is refused from the head alone, before any body byte.
    for chunks in [[declared], *splits(declared)]:
        seen = run(chunks, reader=new_reader(max_body=8))
        assert seen == [too_large], chunks
    chunked = CHUNKED_HEAD + b"3\r\n123\r\n6\r\n456789\r\n0\r\n\r\n"
    for chunks in [[chunked], *splits(chunked)]:
        seen = run(chunks, reader=new_reader(max_body=8))
        assert seen[0][0] == "request" and seen[-1] == too_large, chunks
        passed = b"".join(cast(bytes, item[1]) for item in seen if item[0] == "body")
        assert len(passed) <= 8 and b"123456789".startswith(passed)


# -- EOF ------------------------------------------------------------------------------------


def test_eof_mid_head_is_a_400() -> None:
    incomplete = ("refusal", 400, "Request head incomplete at end of stream", "malformed")
    partial = GET[:-3]
    for chunks in [[partial], *splits(partial)]:
        assert run(chunks, eof=True) == [incomplete]


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n",
        CHUNKED_HEAD + b"5\r\nhel",
        CHUNKED_HEAD + b"5\r\nhello\r\n",
        CHUNKED_HEAD + b"0\r\nX: y\r\n",
    ],
    ids=["length-mid-body", "length-no-body", "chunk-data", "chunk-line", "trailers"],
)
def test_eof_mid_body_means_the_client_went_away(data: bytes) -> None:
    for chunks in [[data], *splits(data)]:
        seen = run(chunks, eof=True)
        assert seen[0][0] == "request" and seen[-1] == ("closed",), chunks
        assert "end" not in [item[0] for item in seen]


def test_eof_between_requests_is_a_quiet_close() -> None:
    assert run([], eof=True) == [("closed",)]
    assert run([b"\r\n"], eof=True) == [("closed",)]
    assert run([GET, b"\r\n"], eof=True) == [GET_SEEN, ("closed",)]


def test_eof_after_a_complete_request_keeps_it_and_what_was_pipelined() -> None:
    # A client may half-close once it has sent its requests: every complete one is served.
    reader = new_reader()
    reader.feed(GET + POST)
    reader.feed_eof()
    assert reader.eof
    events = pump(reader)
    assert type(events[0]) is Request and events[1:] == [PAUSED]
    reader.start_next()
    assert pump(reader)[1:] == [b"hello world", END, CLOSED]
    reader.start_next()
    assert pump(reader) == [CLOSED]
    # ... but a partial request after them is a malformed one.
    reader = new_reader()
    reader.feed(GET + POST[:20])
    reader.feed_eof()
    assert pump(reader)[1:] == [PAUSED]
    reader.start_next()
    assert pump(reader) == [Refusal(400, "Request head incomplete at end of stream", "malformed")]


# -- protocol upgrades ---------------------------------------------------------------------

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
FRAMES = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58" + b"GET / HTTP/1.1\r\n\r\n"


def test_take_leftover_hands_over_every_byte_after_an_upgrade_head() -> None:
    data = UPGRADE + FRAMES
    for i in range(len(UPGRADE), len(data) + 1):
        reader = new_reader()
        reader.feed(data[:i])
        events = pump(reader)
        assert type(events[0]) is Request and events[0].upgrade == b"websocket"
        assert events[1:] == ([PAUSED] if i > len(UPGRADE) else [NEED_DATA])
        # What has been read goes to the new protocol, then what the socket reads next.
        assert reader.take_leftover() + data[i:] == FRAMES
        # The reader is done: nothing it is given now is parsed.
        reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert reader.next_event() is NEED_DATA
    for chunks in splits(data):
        reader = new_reader()
        driver = Driver(reader)
        for chunk in chunks:
            driver.feed(chunk, respond=False)
        assert driver.seen[0][1][7] == b"websocket"  # type: ignore[index]
        assert reader.take_leftover() == FRAMES


# -- damaged input ---------------------------------------------------------------------------

ALL_CASES = b"".join(data for data, _ in CASES.values())


def outline(seen: list[Seen]) -> list[Seen]:
    """The events without body bytes (a refused body may stop at any byte), refusals by status
    (h11 or the raw-byte checks may be first to see a fault, with their own message)."""
    return [item[:2] if item[0] == "refusal" else item for item in seen if item[0] != "body"]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_requests_get_the_same_answer_however_they_arrive(data: st.DataObject) -> None:
    wire = bytearray(ALL_CASES[: data.draw(st.integers(1, len(ALL_CASES)), label="length")])
    for _ in range(data.draw(st.integers(0, 5), label="edits")):
        at = data.draw(st.integers(0, len(wire) - 1))
        byte = data.draw(st.sampled_from(b'\r\n :;0aA\x00\x7f\t,"=-'))
        edit = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        if edit == "replace":
            wire[at] = byte
        elif edit == "insert":
            wire.insert(at, byte)
        elif len(wire) > 1:
            del wire[at]
    damaged = bytes(wire)
    points = data.draw(st.lists(st.integers(1, max(1, len(damaged) - 1)), max_size=6))
    eof = data.draw(st.booleans(), label="eof")
    # Never an exception: whatever the bytes, the reader answers with events.
    whole = run([damaged], eof=eof)
    assert outline(run(cut(damaged, points), eof=eof)) == outline(whole)


# Streams that take the reader through every state: a head without a body, a Content-Length
# body past h11's buffer, a chunked body, a refusal, and EOF mid-body.
_STATE_WALKS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n",
]


@pytest.mark.parametrize("data", _STATE_WALKS)
def test_every_move_the_reader_makes_is_in_its_table(data: bytes) -> None:
    reader = new_reader()
    seen: set[tuple[ReaderState, ReaderState]] = set()

    def step(action: Callable[[], object]) -> object:
        before = reader.state
        result = action()
        if reader.state is not before:
            seen.add((before, reader.state))
        return result

    for i in range(len(data)):
        step(functools.partial(reader.feed, data[i : i + 1]))
        while True:
            event = step(reader.next_event)
            if reader.state is ReaderState.DONE:
                step(reader.start_next)  # each response is done at once
            if event is NEED_DATA or event is CLOSED or type(event) is Refusal:
                break
        if reader.state is ReaderState.FAILED:
            break
    step(reader.feed_eof)
    step(reader.next_event)
    assert seen, "the walk made no move"
    for before, after in seen:
        assert after in READER_MOVES[before], (before, after)


def test_the_reader_table_names_every_state_and_every_state_can_fail() -> None:
    assert set(READER_MOVES) == set(ReaderState)
    for state in ReaderState:
        assert ReaderState.FAILED in READER_MOVES[state], state
    assert READER_MOVES[ReaderState.FAILED] == {ReaderState.FAILED}


def test_a_move_outside_the_table_is_caught() -> None:
    reader = new_reader()
    # start_next() before the request is complete: HEAD -> HEAD is not a move.
    with pytest.raises(AssertionError, match="HEAD"):
        reader.start_next()
