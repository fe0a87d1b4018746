"""The request reader: bytes and EOF in, request events out. No I/O, no clock, no asyncio.

Rules of this file:
- Every rule on raw bytes lives here or in checks.py, whichever parser reads the heads: where a
  head ends, the size and header-field limits on the raw bytes before any parser spends time on
  them, the raw-head checks (checks.py), chunked bodies decoded and checked on the raw bytes
  (`ChunkedFraming`), Content-Length bodies sliced from them, and the bytes after a request
  carried over to the next one. The one step that is not shared, a whole head into its parts,
  is a `HeadParser` (heads.py: h11; heads_llhttp.py: llhttp), chosen by `--http`.
- One request at a time. Once a request is complete (`END`, or a head without a body), bytes
  that follow are only kept (`PAUSED`) until `start_next()`; nothing after a request is parsed
  before its response is done, so a refused or last ("Connection: close") request is never
  followed by another.

`next_event()` returns one of: a `Request` (the head, checked), `bytes` (body data), `END` (the
body is complete), a `Refusal` (answer it and close), `NEED_DATA`, `PAUSED` (a complete request
with bytes waiting behind it), or `CLOSED` (the client sent EOF; mid-body, it went away).
"""

from __future__ import annotations

import enum
import functools
from typing import TYPE_CHECKING

from dualgate.http.checks import (
    ChunkedFraming,
    Framing,
    Refusal,
    check_request,
    origin_form,
    oversized_head,
)
from dualgate.http.grammar import Headers
from dualgate.http.heads import Head, HeadParser, httptools_installed, parse_head_h11

if TYPE_CHECKING:
    from dualgate.config import Config

__all__ = [
    "CLOSED",
    "END",
    "NEED_DATA",
    "PAUSED",
    "READER_MOVES",
    "ReaderEvent",
    "ReaderState",
    "Request",
    "RequestReader",
    "head_parser",
    "reader_for",
]


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Signal("NEED_DATA")
PAUSED = _Signal("PAUSED")
END = _Signal("END")
CLOSED = _Signal("CLOSED")


class Request:
    """One request head, checked; read-only once made. `expects_continue`: the client waits for
    a 100 Continue before it sends its body (so never true of a request without one)."""

    __slots__ = (
        "chunked",
        "content_length",
        "expects_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        http_version: bytes,
        framing: Framing,
        expects_continue: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.content_length = framing.content_length
        self.chunked = framing.chunked
        self.keep_alive = framing.keep_alive
        self.upgrade = framing.upgrade
        self.expects_continue = expects_continue

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    def with_target(self, target: bytes) -> Request:
        """The same request under another target (a router restoring a stripped prefix)."""
        copy = self._copy()
        copy.target = target
        return copy

    def with_host(self, host: bytes) -> Request:
        """The same request with another Host (forwarded by a trusted proxy)."""
        copy = self._copy()
        headers = [(name, host if name == b"host" else value) for name, value in self.headers]
        if not any(name == b"host" for name, _ in headers):
            headers.append((b"host", host))  # an HTTP/1.0 request may have come without one
        copy.headers = headers
        return copy

    def _copy(self) -> Request:
        copy = Request.__new__(Request)
        for name in Request.__slots__:
            setattr(copy, name, getattr(self, name))
        return copy


ReaderEvent = Request | bytes | Refusal | _Signal

# Where the reader is in the request it reads.
#
# Theory of operation. The reader is always in exactly one state; it moves only as
# `READER_MOVES` allows:
#
#     HEAD ──chunked head──> CHUNKED ──last chunk and trailers──> DONE ──start_next()──> HEAD
#       │                                                        ^  ^
#       ├──head with a Content-Length──> DIRECT ──length reached─┘  │
#       └──head without a body───────────────────────────────────────┘
#
#     any state ──refusal, or take_leftover() for an upgrade──> FAILED
#
# - HEAD: bytes gather in the raw window until the head ends; the size and field limits are
#   checked on it first, then the head parser (h11 or llhttp) and the raw-head checks.
# - CHUNKED: a chunked body, decoded and checked on the raw bytes (ChunkedFraming).
# - DIRECT: a Content-Length body, sliced from the raw bytes.
# - DONE: the request is complete; bytes behind it are only kept until `start_next()`.
# - FAILED: refused, or handed to another protocol (`take_leftover`); nothing more is read.
#
# The states are compared by identity (`is`), as cheap as an int compare. The moves made
# where the state before is known by construction (in `_on_head`, the state is HEAD) are
# plain assignments on the per-request path; the others go through `_move`, which checks
# the table (an assert: free under -O). tests/http/test_reader.py checks both against it.
ReaderState = enum.Enum("ReaderState", "HEAD CHUNKED DIRECT DONE FAILED")
_HEAD, _CHUNKED, _DIRECT, _DONE, _FAILED = ReaderState

# Where each state may go next.
READER_MOVES: dict[ReaderState, frozenset[ReaderState]] = {
    _HEAD: frozenset({_CHUNKED, _DIRECT, _DONE, _FAILED}),
    _CHUNKED: frozenset({_DONE, _FAILED}),
    _DIRECT: frozenset({_DONE, _FAILED}),
    _DONE: frozenset({_HEAD, _FAILED}),
    _FAILED: frozenset({_FAILED}),
}


class RequestReader:
    __slots__ = (
        "_body_left",
        "_carry",
        "_chunked",
        "_direct",
        "_max_body",
        "_max_fields",
        "_max_head",
        "_parse_head",
        "_received",
        "_refusal",
        "_state",
        "_window",
        "eof",
    )

    def __init__(
        self,
        max_head_size: int,
        max_header_fields: int,
        max_body_size: int | None,
        parse_head: HeadParser = parse_head_h11,
    ) -> None:
        self._max_head = max_head_size
        # Header fields a head (or a chunked body's trailer section) may hold.
        self._max_fields = max_header_fields
        self._max_body = max_body_size
        self._parse_head = parse_head
        self._state = _HEAD
        # The raw bytes of the head so far.
        self._window: bytes | bytearray = b""
        self._refusal: Refusal | None = None
        self._chunked: ChunkedFraming | None = None
        self._received = 0
        self._body_left = 0
        self._direct = b""
        self._carry = b""
        # The client sent EOF (feed_eof); read as an attribute, once per request.
        self.eof = False

    @property
    def head_started(self) -> bool:
        """Bytes of a request head have arrived (the head deadline applies, not keep-alive)."""
        return self._state is _HEAD and bool(self._window)

    # -- input --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            return  # only feed_eof() means EOF
        state = self._state
        if state is _HEAD:
            window = self._window
            if not window:
                if data[:1] in (b"\r", b"\n"):
                    # RFC 9112 section 2.2: empty lines before a request line are ignored.
                    data = data.lstrip(b"\r\n")
                    if not data:
                        return
                self._window = data
            elif isinstance(window, bytearray):
                window += data
            else:
                self._window = bytearray(window) + data
        elif state is _DIRECT:
            self._direct = self._direct + data if self._direct else data
        elif state is _CHUNKED:
            if self._refusal is None:
                self._decode(data)
        elif state is _DONE:
            self._carry += data

    def feed_eof(self) -> None:
        self.eof = True

    # -- events -------------------------------------------------------------------------

    def next_event(self) -> ReaderEvent:
        state = self._state
        if state is _HEAD:
            return self._next_head()
        if state is _DIRECT:
            return self._next_direct()
        if state is _CHUNKED:
            return self._next_chunked()
        if state is _DONE:
            if self._carry:
                return PAUSED
            return CLOSED if self.eof else NEED_DATA
        return NEED_DATA  # _FAILED

    def _move(self, state: ReaderState) -> None:
        assert state in READER_MOVES[self._state], f"{self._state} -> {state}"
        self._state = state

    @property
    def state(self) -> ReaderState:
        return self._state

    def _fail(self, refusal: Refusal) -> Refusal:
        self._move(_FAILED)
        return refusal

    def _next_head(self) -> ReaderEvent:
        window = self._window
        if window and window[0] < 0x21:
            # Refused before the limits below, on the first byte, so the answer does not depend
            # on how the head arrives. (Empty lines before a request line were dropped in feed().)
            return self._fail(Refusal(400, "Malformed request: illegal request line", "malformed"))
        # The head ends at its first blank line (LF, optional CR, LF), as h11 ends it, so the
        # limits below count the same bytes however the head arrives (a bare LF there is then
        # refused by the checks). Two finds: cheaper than a regular expression.
        end = window.find(b"\n\r\n")
        bare = window.find(b"\n\n", 0, end + 1 if end >= 0 else len(window))
        end = bare + 2 if bare >= 0 else end + 3 if end >= 0 else -1
        # Checked on the raw bytes before a parser sees them: a head of thousands of tiny fields
        # costs h11 milliseconds of loop time per request. The first limit the bytes cross
        # decides, however they arrive: fields are counted in the head when it is whole within
        # the size limit, else in its first limit + 1 bytes (where the size limit is crossed).
        # Not counted: the request line's and the blank line's line breaks, and, in an
        # incomplete head, the request line's (the last field may lack its line break yet).
        limit = self._max_head
        if 0 <= end <= limit:
            lines = window.count(b"\n", 0, end) - 2
        else:
            lines = window.count(b"\n", 0, limit + 1) - 1
        if lines > self._max_fields:
            return self._fail(Refusal(431, "Too many header fields", "too_large"))
        if (end if end >= 0 else len(window)) > limit:
            too_big = oversized_head(window[:end] if end >= 0 else window, limit)
            assert too_big is not None
            return self._fail(too_big)
        if end < 0:
            if not self.eof:
                return NEED_DATA
            if window:
                return self._fail(
                    Refusal(400, "Request head incomplete at end of stream", "malformed")
                )
            return CLOSED  # EOF between requests
        # A head that came in one read is the window whole: no copy.
        head = window if end == len(window) and type(window) is bytes else bytes(window[:end])
        parsed = self._parse_head(head)
        if type(parsed) is Refusal:
            return self._fail(parsed)
        # A Head: mypy does not narrow a NamedTuple union by `type() is` (no cast: a call).
        return self._on_head(parsed, head, window[end:])  # type: ignore[arg-type]

    def _on_head(self, parsed: Head, head: bytes, rest: bytes | bytearray) -> ReaderEvent:
        self._window = b""
        method, target, version, headers = parsed
        raw_version = version
        # RFC 9110 section 2.5: a higher minor version is handled as the highest one we know.
        if version != b"1.1" and version != b"1.0" and version[:2] == b"1.":
            version = b"1.1"
        framing = check_request(method, target, headers, version, head, self._max_body)
        if type(framing) is Refusal:
            return self._fail(framing)
        assert type(framing) is Framing
        if target[:1] not in (b"/", b"*"):
            target, headers = origin_form(target, headers)
        # Asked only of a request with a body: without one, nothing waits for a 100 Continue.
        request = Request(
            method,
            target,
            headers,
            version,
            framing,
            (framing.chunked or framing.content_length > 0)
            and _expects_continue(raw_version, headers),
        )
        if framing.chunked:
            self._chunked = ChunkedFraming(self._max_fields, self._max_head)
            self._state = _CHUNKED
            if rest:
                self._decode(bytes(rest))
        elif framing.content_length:
            self._body_left = framing.content_length
            self._direct = bytes(rest)
            self._state = _DIRECT
        else:
            # No body: what followed the head belongs to the next request.
            if rest:
                self._carry = bytes(rest)
            self._state = _DONE
        return request

    def _decode(self, data: bytes) -> None:
        chunked = self._chunked
        assert chunked is not None
        self._refusal = chunked.feed(data)
        if chunked.done and self._refusal is None:
            self._carry += bytes(chunked.rest)
            chunked.rest = b""

    def _next_chunked(self) -> ReaderEvent:
        if self._refusal is not None:
            return self._fail(self._refusal)
        chunked = self._chunked
        assert chunked is not None
        data = chunked.take()
        if data:
            return self._body_bytes(data)
        if chunked.done:
            self._state = _DONE
            return END
        return CLOSED if self.eof else NEED_DATA  # at EOF mid-body, the client went away

    def _body_bytes(self, data: bytes) -> ReaderEvent:
        self._received += len(data)
        if self._max_body is not None and self._received > self._max_body:
            return self._fail(Refusal(413, "Request body too large", "too_large"))
        return data

    def _next_direct(self) -> ReaderEvent:
        data = self._direct
        if not data:
            if not self._body_left:
                self._state = _DONE
                return END
            return CLOSED if self.eof else NEED_DATA
        left = self._body_left
        if len(data) > left:
            self._carry += data[left:]
            data = data[:left]
        self._direct = b""
        self._body_left = left - len(data)
        return self._body_bytes(data)

    # -- between requests ---------------------------------------------------------------

    def start_next(self) -> bool:
        """The response is done: parse what followed the request as the next request.

        Returns whether bytes of that request are here already (`head_started`)."""
        # DONE is the only state the table lets move to HEAD: an identity test, not a lookup.
        assert self._state is _DONE, f"{self._state} -> {_HEAD}"
        self._state = _HEAD
        carry = self._carry
        if carry:
            self._window = carry = carry.lstrip(b"\r\n")  # empty lines before a request line
            self._carry = b""
        self._refusal = None
        self._chunked = None
        self._received = 0
        self._body_left = 0
        self._direct = b""
        return bool(carry)

    def take_leftover(self) -> bytes:
        """For a protocol upgrade: every byte read past the request head."""
        leftover = self._carry
        self._carry = b""
        self._move(_FAILED)
        return leftover


def reader_for(config: Config) -> RequestReader:
    """A connection's reader: the limits and the head parser (`--http`) of its server."""
    return RequestReader(
        config.max_head_size,
        config.max_header_fields,
        config.max_body_size,
        head_parser(config.http),
    )


def _expects_continue(http_version: bytes, headers: Headers) -> bool:
    """Expect: 100-continue, in a request of HTTP/1.1 or later (RFC 9110 section 10.1.1: a
    server MUST ignore it in an HTTP/1.0 request), read as h11 reads it."""
    if http_version < b"1.1":
        return False
    for name, value in headers:
        if name == b"expect" and b"100-continue" in (v.strip() for v in value.lower().split(b",")):
            return True
    return False


# Asked once: a connection's reader is made per connection, and find_spec walks sys.path.
_HTTPTOOLS = httptools_installed()


@functools.cache  # asked per connection; the import below is a lookup each time otherwise
def head_parser(name: str) -> HeadParser:
    """The head parser `--http` names: httptools (llhttp) when installed under "auto"."""
    if name == "h11" or (name == "auto" and not _HTTPTOOLS):
        return parse_head_h11
    from dualgate.http.heads_llhttp import parse_head_llhttp  # httptools is an optional extra

    return parse_head_llhttp
