"""The test suite's one HTTP response parser: h11's client side.

Every response a test reads off a raw socket goes through `read_response`, so every response is
also checked to be valid HTTP/1.1 by a parser dualgate does not share its response code with: a
malformed status line or header, bad chunk framing, a body that overruns its framing or bytes
after a HEAD/204/304 head (which would then fail as the next response) make h11 raise
`h11.RemoteProtocolError`, and the test fails with it. (h11 takes a bare LF as a line end, as
RFC 9112 section 2.2 lets a recipient do; tests that care about CRLF check the raw bytes.)

A response that the server breaks off (the connection closes before the framing says the body
ended) is not an error here: it comes back with `complete=False`, because several tests expect
exactly that. A connection closed before a whole head raises ConnectionError.

Each response gets a fresh `h11.Connection`, told which request method it answers (a HEAD
response has no body), so that raw byte reads (`Reader.read_line`, ...) can be mixed with
parsed responses on one connection: the bytes h11 did not consume go back to the stream.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import h11

__all__ = ["ByteStream", "ParsedResponse", "read_response"]

# Larger than any head dualgate writes; h11's own default (16 KiB) is a server's limit.
_MAX_HEAD = 1 << 20


class ByteStream(Protocol):
    """A socket reader that keeps bytes received but not yet used in `buffer`."""

    buffer: bytes

    def fill(self) -> bool:
        """Append the next bytes received to `buffer`; False once the peer has closed."""
        ...


class ParsedResponse(NamedTuple):
    status: int
    status_line: bytes  # as on the wire, without its CRLF
    headers: list[tuple[bytes, bytes]]  # in order; names lower-cased by h11
    body: bytes  # de-chunked
    complete: bool  # the framing said the body ended (not only the connection)
    head: bytes  # the raw head up to and including its empty line


def read_response(
    stream: ByteStream, method: bytes = b"GET", *, head_only: bool = False
) -> ParsedResponse:
    """The next response on `stream`, answering a request with `method`.

    An interim (1xx) response is returned on its own; read again for the final one. With
    `head_only`, reading stops after a final response's head and leaves its body's raw bytes
    in the stream (`body` is then empty and `complete` False).
    """
    parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
    # The request went out as raw bytes; h11 only needs to know that one was sent, and its
    # method. The bytes it would have sent are thrown away. It proposes an upgrade, so that h11
    # accepts a 101 (WebSocket handshakes) as well as any other answer.
    parser.send(
        h11.Request(
            method=method,
            target="/",
            headers=[(b"host", b"test"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")],
        )
    )
    parser.send(h11.EndOfMessage())
    raw = bytearray()  # what was fed to h11, kept until the head is found

    def feed() -> None:
        data, stream.buffer = stream.buffer, b""
        if data:  # (to h11, empty data means end of stream)
            if head is None:
                raw.extend(data)
            parser.receive_data(data)

    head: bytes | None = None
    start: h11.Response | h11.InformationalResponse | None = None
    body: list[bytes] = []
    feed()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            # Data is only fed after h11 asked for more, and EOF only after that: an error
            # with the receive side closed is about the missing rest, never about bad bytes.
            if not parser.trailing_data[1]:
                raise
            if head is None:
                raise ConnectionError(f"closed before a whole head: {bytes(raw)!r}") from exc
            assert start is not None
            return _response(start, head, body, complete=False)
        if event is h11.NEED_DATA:
            if stream.fill():
                feed()
            else:
                parser.receive_data(b"")
        elif isinstance(event, h11.Response | h11.InformationalResponse):
            start = event
            head = bytes(raw[: len(raw) - len(parser.trailing_data[0])])
            raw.clear()
            if isinstance(event, h11.InformationalResponse) or head_only:
                stream.buffer = parser.trailing_data[0] + stream.buffer
                return _response(start, head, body, complete=not head_only)
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert start is not None and head is not None
            stream.buffer = parser.trailing_data[0] + stream.buffer
            return _response(start, head, body, complete=True)
        else:
            raise AssertionError(f"unexpected h11 event {event!r}")


def _response(
    start: h11.Response | h11.InformationalResponse,
    head: bytes,
    body: list[bytes],
    *,
    complete: bool,
) -> ParsedResponse:
    return ParsedResponse(
        status=start.status_code,
        status_line=head.partition(b"\r\n")[0],
        headers=list(start.headers),
        body=b"".join(body),
        complete=complete,
        head=head,
    )
