"""Response heads (dualgate/http/framing.py) built in memory and read back by h11 as a client.

Parsing every head with `h11.Connection(h11.CLIENT)`, after sending it a matching request,
proves the output is valid HTTP/1.1 and frames its body as `build_head` says it does.
"""

from __future__ import annotations

import h11
import pytest

from dualgate.http.framing import (
    CHUNKED,
    CLOSE,
    EMPTY,
    LENGTH,
    ResponseHead,
    build_head,
    refusal_response,
)
from dualgate.http.grammar import Headers

DATE = b"Thu, 01 Jan 2026 00:00:00 GMT"
DEFAULTS: Headers = [(b"date", DATE), (b"server", b"dualgate")]
DEFAULT_HEAD = b"date: " + DATE + b"\r\nserver: dualgate\r\n"


def build(
    status: int = 200,
    headers: Headers | None = None,
    *,
    reason: bytes = b"OK",
    head_request: bool = False,
    http11: bool = True,
    keep_alive: bool = True,
    whole_body: int | None = None,
) -> ResponseHead:
    return build_head(
        status,
        reason,
        headers or [],
        head_request=head_request,
        http11=http11,
        keep_alive=keep_alive,
        whole_body=whole_body,
        extra=DEFAULTS,
        extra_head=DEFAULT_HEAD,
    )


class Parsed:
    def __init__(self, response: h11.Response, body: bytes, keeps: bool) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = [(bytes(n), bytes(v)) for n, v in response.headers]
        self.body = body
        self.keeps = keeps  # h11 would send another request on this connection

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


def parse(wire: bytes, *, method: bytes = b"GET", eof: bool = False) -> Parsed:
    """Read one response with h11 as the client that sent `method`."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "unit")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    if eof:
        client.receive_data(b"")
    response = client.next_event()
    assert type(response) is h11.Response, response
    body = b""
    for _ in range(100):
        event = client.next_event()
        if type(event) is h11.Data:
            body += event.data
        elif type(event) is h11.EndOfMessage:
            return Parsed(response, body, client.their_state is h11.DONE)
        else:
            raise AssertionError(f"unexpected {event!r}")
    raise AssertionError("no end of message")


def names(head: ResponseHead) -> list[bytes]:
    lines = head.data.split(b"\r\n")[1:-2]
    return [line.partition(b":")[0].lower() for line in lines]


# -- body framing ---------------------------------------------------------------------------


def test_content_length_from_the_application_frames_the_body() -> None:
    head = build(headers=[(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")])
    assert (head.framing, head.length, head.keep_alive) == (LENGTH, 5, True)
    parsed = parse(head.data + b"hello")
    assert parsed.body == b"hello" and parsed.keeps
    assert parsed.values(b"content-length") == [b"5"]
    assert parsed.values(b"content-type") == [b"text/plain"]
    assert head.data.startswith(b"HTTP/1.1 200 OK\r\n") and head.data.endswith(b"\r\n\r\n")


def test_a_repeated_equal_content_length_is_sent_once() -> None:
    head = build(headers=[(b"Content-Length", b"3"), (b"content-length", b"3")])
    assert names(head).count(b"content-length") == 1
    assert parse(head.data + b"abc").body == b"abc"


def test_a_whole_body_gets_its_length() -> None:
    head = build(whole_body=11)
    assert (head.framing, head.length) == (LENGTH, 11)
    assert parse(head.data + b"hello world").body == b"hello world"
    # The application's own Content-Length wins over the length it happened to send.
    head = build(headers=[(b"content-length", b"4")], whole_body=11)
    assert head.length == 4 and parse(head.data + b"four").values(b"content-length") == [b"4"]
    # An empty body is a length of 0, not chunked.
    head = build(whole_body=0)
    assert (head.framing, head.length) == (LENGTH, 0)
    assert parse(head.data).body == b""


def test_an_unknown_length_is_chunked_for_http11() -> None:
    head = build()
    assert (head.framing, head.keep_alive) == (CHUNKED, True)
    parsed = parse(head.data + b"5\r\nhello\r\n0\r\n\r\n")
    assert parsed.body == b"hello" and parsed.keeps
    assert parsed.values(b"transfer-encoding") == [b"chunked"]
    # The application may ask for chunked itself; it is sent once, and a length beside it
    # is dropped (RFC 9112 section 6.2: never both).
    head = build(headers=[(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")])
    assert head.framing == CHUNKED
    assert names(head).count(b"transfer-encoding") == 1 and b"content-length" not in names(head)
    assert parse(head.data + b"5\r\nhello\r\n0\r\n\r\n").body == b"hello"


def test_an_unknown_length_is_ended_by_closing_for_http10() -> None:
    head = build(http11=False)
    assert (head.framing, head.keep_alive) == (CLOSE, False)
    assert b"transfer-encoding" not in names(head)
    parsed = parse(head.data + b"until the end", eof=True)
    assert parsed.body == b"until the end" and not parsed.keeps
    assert parsed.values(b"connection") == [b"close"]
    # Chunked asked for by the application is not for an HTTP/1.0 client either.
    head = build(headers=[(b"transfer-encoding", b"chunked")], http11=False)
    assert head.framing == CLOSE and b"transfer-encoding" not in names(head)


def test_http10_keep_alive_is_announced_when_kept() -> None:
    head = build(http11=False, whole_body=2)
    assert (head.framing, head.keep_alive) == (LENGTH, True)
    assert parse(head.data + b"ok").values(b"connection") == [b"keep-alive"]
    head = build(http11=False, whole_body=2, keep_alive=False)
    assert not head.keep_alive
    assert parse(head.data + b"ok").values(b"connection") == [b"close"]


def test_connection_close() -> None:
    head = build(whole_body=2, keep_alive=False)
    assert not head.keep_alive
    parsed = parse(head.data + b"ok")
    assert parsed.values(b"connection") == [b"close"] and not parsed.keeps
    # The application's own "Connection: close" closes, and is sent once, as the server's.
    head = build(headers=[(b"Connection", b"Close")], whole_body=2)
    assert not head.keep_alive
    assert names(head).count(b"connection") == 1
    assert not parse(head.data + b"ok").keeps
    # Its "Connection: keep-alive" is dropped: keeping the connection is the server's call.
    head = build(headers=[(b"Connection", b"keep-alive")], whole_body=2)
    assert head.keep_alive and b"connection" not in names(head)
    assert parse(head.data + b"ok").keeps


# -- responses without a body -----------------------------------------------------------------


def test_head_keeps_the_framing_a_get_would_have() -> None:
    head = build(headers=[(b"Content-Length", b"1234")], head_request=True)
    assert (head.framing, head.length) == (EMPTY, 1234)
    parsed = parse(head.data, method=b"HEAD")
    assert parsed.values(b"content-length") == [b"1234"] and parsed.body == b"" and parsed.keeps
    head = build(headers=[(b"Transfer-Encoding", b"chunked")], head_request=True)
    assert head.framing == EMPTY
    assert parse(head.data, method=b"HEAD").values(b"transfer-encoding") == [b"chunked"]
    # Nothing known: nothing claimed (RFC 9110 section 9.3.2 lets a HEAD response omit it).
    head = build(head_request=True, whole_body=10)
    assert head.framing == EMPTY
    assert b"content-length" not in names(head) and b"transfer-encoding" not in names(head)
    assert parse(head.data, method=b"HEAD").keeps


def test_304_keeps_the_length_and_204_has_none() -> None:
    head = build(304, [(b"Content-Length", b"99"), (b"ETag", b'"x"')], reason=b"Not Modified")
    assert head.framing == EMPTY
    parsed = parse(head.data)
    assert parsed.status == 304 and parsed.body == b"" and parsed.keeps
    assert parsed.values(b"content-length") == [b"99"]
    # RFC 9110 section 8.6: a 204 carries no Content-Length, and no chunked either.
    for framing in ([(b"Content-Length", b"5")], [(b"Transfer-Encoding", b"chunked")], []):
        head = build(204, framing, reason=b"No Content", whole_body=5)
        assert head.framing == EMPTY
        assert b"content-length" not in names(head) and b"transfer-encoding" not in names(head)
        parsed = parse(head.data)
        assert parsed.status == 204 and parsed.body == b"" and parsed.keeps


# -- Date and Server ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("own", "date", "server"),
    [
        ([], DATE, b"dualgate"),
        (
            [(b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT")],
            b"Mon, 01 Jan 2024 00:00:00 GMT",
            b"dualgate",
        ),
        ([(b"SERVER", b"app/1")], DATE, b"app/1"),
        ([(b"date", b"d"), (b"server", b"s")], b"d", b"s"),
    ],
)
def test_date_and_server_are_added_once(own: Headers, date: bytes, server: bytes) -> None:
    head = build(headers=own, whole_body=0)
    parsed = parse(head.data)
    assert parsed.values(b"date") == [date]
    assert parsed.values(b"server") == [server]


def test_without_defaults_none_are_added() -> None:
    head = build_head(
        200, b"OK", [], head_request=False, http11=True, keep_alive=True, whole_body=0,
        extra=[], extra_head=b"",
    )  # fmt: skip
    assert head.data == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def test_header_order_and_case_are_the_applications() -> None:
    own = [(b"X-B", b"2"), (b"x-a", b"1"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    head = build(headers=own, whole_body=0)
    lines = head.data.split(b"\r\n")
    assert lines[1:5] == [b"X-B: 2", b"x-a: 1", b"Set-Cookie: a=1", b"Set-Cookie: b=2"]
    assert parse(head.data).values(b"set-cookie") == [b"a=1", b"b=2"]


def test_reason_phrases() -> None:
    assert parse(build(404, reason=b"Not Found", whole_body=0).data).response.reason == b"Not Found"
    # An empty reason is valid (RFC 9112 section 4).
    head = build(299, reason=b"", whole_body=0)
    assert head.data.startswith(b"HTTP/1.1 299 \r\n")
    assert parse(head.data).status == 299


# -- what may not be sent -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "headers"),
    [
        (199, b"Informational", []),
        (100, b"Continue", []),
        (1000, b"Too Big", []),
        (99, b"Small", []),
        (200, b"O\r\nK", []),
        (200, b"O\nK", []),
        (200, b"OK", [(b"", b"x")]),
        (200, b"OK", [(b"Bad Name", b"x")]),
        (200, b"OK", [(b"Bad:Name", b"x")]),
        (200, b"OK", [(b"Bad\r\nName", b"x")]),
        (200, b"OK", [(b"X", b"a\r\nInjected: yes")]),
        (200, b"OK", [(b"X", b"a\nb")]),
        (200, b"OK", [(b"X", b"a\rb")]),
        (200, b"OK", [(b"X", b"a\x00b")]),
        (200, b"OK", [(b"X", b"a\x7fb")]),
        (200, b"OK", [(b"Content-Length", b"abc")]),
        (200, b"OK", [(b"Content-Length", b"-1")]),
        (200, b"OK", [(b"Content-Length", b"1.0")]),
        (200, b"OK", [(b"Content-Length", b" 5")]),
        (200, b"OK", [(b"Content-Length", b"")]),
        (200, b"OK", [(b"Content-Length", b"5"), (b"Content-Length", b"6")]),
        (200, b"OK", [(b"Transfer-Encoding", b"gzip")]),
        (200, b"OK", [(b"Transfer-Encoding", b"gzip, chunked")]),
    ],
)
def test_invalid_responses_are_refused(status: int, reason: bytes, headers: Headers) -> None:
    with pytest.raises(ValueError):
        build(status, headers, reason=reason)


def test_values_h11_would_take_are_taken() -> None:
    head = build(headers=[(b"X-Tab", b"a\tb"), (b"X-Bytes", b"caf\xc3\xa9"), (b"X-Empty", b"")])
    parsed = parse(head.data + b"0\r\n\r\n")
    assert parsed.values(b"x-tab") == [b"a\tb"]
    assert parsed.values(b"x-bytes") == [b"caf\xc3\xa9"]
    assert parsed.values(b"x-empty") == [b""]
    # A valid name is remembered; an invalid one is still refused every time.
    for _ in range(2):
        with pytest.raises(ValueError):
            build(headers=[(b"Bad Name", b"x")])
        assert parse(build(headers=[(b"X-Ok", b"1")], whole_body=0).data).values(b"x-ok") == [b"1"]


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, b"Bad Request"),
        (408, b"Request Timeout"),
        (413, b"Content Too Large"),
        (414, b"URI Too Long"),
        (431, b"Request Header Fields Too Large"),
        (501, b"Not Implemented"),
        (503, b"Service Unavailable"),
        (505, b"HTTP Version Not Supported"),
    ],
)
def test_refusal_response(status: int, reason: bytes) -> None:
    wire = refusal_response(
        status, "Why: ünicode", head_request=False, retry_after=status == 503,
        extra=DEFAULTS, extra_head=DEFAULT_HEAD,
    )  # fmt: skip
    parsed = parse(wire)
    assert (parsed.status, parsed.response.reason) == (status, reason)
    assert parsed.body == "Why: ünicode\n".encode()
    assert parsed.values(b"content-type") == [b"text/plain; charset=utf-8"]
    assert parsed.values(b"content-length") == [str(len(parsed.body)).encode()]
    # A refusal always closes.
    assert parsed.values(b"connection") == [b"close"] and not parsed.keeps
    assert parsed.values(b"retry-after") == ([b"1"] if status == 503 else [])
    assert parsed.values(b"date") == [DATE] and parsed.values(b"server") == [b"dualgate"]


def test_refusal_of_a_head_request_has_no_body() -> None:
    wire = refusal_response(
        503, "Busy", head_request=True, retry_after=True, extra=DEFAULTS, extra_head=DEFAULT_HEAD
    )
    assert wire.endswith(b"\r\n\r\n") and b"Busy" not in wire
    parsed = parse(wire, method=b"HEAD")
    assert parsed.status == 503 and parsed.body == b"" and not parsed.keeps
    assert parsed.values(b"retry-after") == [b"1"]


@pytest.mark.parametrize(("status", "head_request"), [(200, True), (304, False)])
def test_no_transfer_encoding_to_an_http10_client_even_without_a_body(
    status: int, head_request: bool
) -> None:
    # RFC 9112 section 6.1: a server MUST NOT send Transfer-Encoding unless the request was
    # HTTP/1.1. A GET from an HTTP/1.0 client is answered with a body ended by closing, so the
    # HEAD or 304 that stands for it claims no chunked framing either.
    head = build(
        status, [(b"Transfer-Encoding", b"chunked")], head_request=head_request, http11=False
    )
    assert head.framing == EMPTY
    assert b"transfer-encoding" not in names(head)
    # For an HTTP/1.1 client it still says what the GET would have carried.
    head = build(status, [(b"Transfer-Encoding", b"chunked")], head_request=head_request)
    assert names(head).count(b"transfer-encoding") == 1


def test_fields_and_status_lines_seen_are_remembered_and_give_the_same_head() -> None:
    from dualgate.http import framing

    framing._field_lines.clear()
    framing._status_lines.clear()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2"), (b"x-a", b"1")]
    first = build(headers=headers)
    # Only the plain fields are remembered as lines; a Content-Length with its value, which
    # frames each response anew.
    assert set(framing._field_lines) == {(b"content-type", b"text/plain"), (b"x-a", b"1")}
    assert framing._length_fields[(b"content-length", b"2")] == 2
    with pytest.raises(ValueError, match="invalid Content-Length"):
        build(headers=[*headers, (b"Content-Length", b"3")])  # remembered, and still compared
    assert set(framing._status_lines) == {(200, b"OK")}
    again = build(headers=list(headers))
    assert again.data == first.data
    assert (again.framing, again.length, again.keep_alive) == (LENGTH, 2, True)


def test_a_bad_field_or_status_line_is_never_remembered() -> None:
    from dualgate.http import framing

    framing._field_lines.clear()
    framing._status_lines.clear()
    framing._length_fields.clear()
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid value"):
            build(headers=[(b"x-a", b"one\r\ntwo")])
        with pytest.raises(ValueError, match="invalid reason"):
            build(reason=b"O\nK")
        with pytest.raises(ValueError, match="invalid final status"):
            build(status=100)
        with pytest.raises(ValueError, match="invalid Content-Length"):
            build(headers=[(b"content-length", b"-1")])
    assert framing._field_lines == {}
    assert framing._length_fields == {}
    assert set(framing._status_lines) == {(200, b"OK")}  # the good one, from the bad field's


def test_remembered_fields_are_bounded() -> None:
    from dualgate.http import framing

    framing._field_lines.clear()
    for i in range(framing._CACHE_LIMIT + 50):
        head = build(headers=[(b"x-request-id", b"%d" % i)])
        assert b"x-request-id: %d\r\n" % i in head.data
    assert len(framing._field_lines) == framing._CACHE_LIMIT
    framing._field_lines.clear()
