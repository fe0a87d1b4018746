"""The test suite's response parser (tests/http_client.py), in memory.

The other tests rely on it to tell a valid, complete response from a broken or malformed one,
so it gets tests of its own: each framing, interim and pipelined responses, what it leaves in
the stream, and that it refuses what is not HTTP/1.1.
"""

from __future__ import annotations

import h11
import pytest

from tests.http_client import read_response


class Chunks:
    """A ByteStream over fixed pieces of bytes, as if they arrived one recv() at a time."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.buffer = b""

    def fill(self) -> bool:
        if not self.pieces:
            return False
        self.buffer += self.pieces.pop(0)
        return True


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_content_length_body_and_the_raw_head() -> None:
    response = read_response(Chunks(OK))
    assert response.status == 200
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.headers == [(b"content-length", b"5")]
    assert (response.body, response.complete) == (b"hello", True)
    assert response.head == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def test_every_byte_split_gives_the_same_response() -> None:
    wire = b"HTTP/1.1 201 Made\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    whole = read_response(Chunks(wire))
    for split in range(1, len(wire)):
        assert read_response(Chunks(wire[:split], wire[split:])) == whole
    single = read_response(Chunks(*(wire[index : index + 1] for index in range(len(wire)))))
    assert single == whole
    assert (whole.status, whole.body, whole.complete) == (201, b"abc", True)


def test_chunked_body_with_extensions_and_trailers() -> None:
    stream = Chunks(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    response = read_response(stream)
    assert (response.body, response.complete) == (b"hello!", True)


def test_close_delimited_body() -> None:
    response = read_response(Chunks(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ", b"eof"))
    assert (response.body, response.complete) == (b"until eof", True)


def test_head_response_has_no_body_and_the_next_response_follows() -> None:
    stream = Chunks(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + OK)
    head = read_response(stream, b"HEAD")
    assert (head.status, head.body, head.complete) == (200, b"", True)
    assert stream.buffer == OK
    assert read_response(stream).body == b"hello"


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_bodiless_statuses(status: bytes) -> None:
    stream = Chunks(b"HTTP/1.1 " + status + b"\r\nContent-Length: 99\r\n\r\n" + OK)
    response = read_response(stream)
    assert (response.body, response.complete) == (b"", True)
    assert read_response(stream).body == b"hello"


def test_interim_response_then_the_final_one() -> None:
    stream = Chunks(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    interim = read_response(stream)
    assert (interim.status, interim.status_line, interim.body) == (
        100,
        b"HTTP/1.1 100 Continue",
        b"",
    )
    assert read_response(stream).body == b"hello"


def test_pipelined_responses_leave_the_rest_in_the_stream() -> None:
    stream = Chunks(OK + OK + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert [read_response(stream).status for _ in range(3)] == [200, 200, 404]
    assert stream.buffer == b""


def test_head_only_leaves_the_raw_body() -> None:
    stream = Chunks(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    response = read_response(stream, head_only=True)
    assert (response.status, response.body, response.complete) == (200, b"", False)
    assert stream.buffer == b"3\r\nabc\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
    ],
    ids=["short-content-length", "no-last-chunk", "mid-chunk", "no-trailer-end"],
)
def test_broken_off_body_is_incomplete(wire: bytes) -> None:
    response = read_response(Chunks(wire))
    assert response.status == 200
    assert not response.complete
    assert b"hello".startswith(response.body)


@pytest.mark.parametrize("wire", [b"", b"HTTP/1.1 200 OK\r\nContent-Le"])
def test_closed_before_a_whole_head(wire: bytes) -> None:
    with pytest.raises(ConnectionError):
        read_response(Chunks(wire))


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"SPAM 200 OK\r\n\r\n",
    ],
    ids=[
        "space-in-name",
        "nul-in-value",
        "four-digit-status",
        "two-lengths",
        "bad-chunk-size",
        "not-chunked",
        "not-http",
    ],
)
def test_invalid_responses_are_refused(wire: bytes) -> None:
    with pytest.raises(h11.RemoteProtocolError):
        read_response(Chunks(wire, b"more bytes so the end is not the reason"))
