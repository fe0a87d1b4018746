"""The request reader: bytes and EOF in, request events out. No I/O, no clock, no asyncio.

Rules of this file:
- It owns h11 and every workaround around it, so an h11 upgrade is a review of this one file:
  the raw-head checks h11 does not make (checks.py), the 501 to 400 and 431 to 414 remaps, the
  header-field count checked on the raw bytes before h11 spends time on them (trailer fields
  too, by ChunkedFraming), chunked framing checked on the raw bytes, Content-Length bodies
  read past h11 (its buffer copies every byte three times), and the bytes after a request
  carried over to the next one.
- One request at a time. Once a request is complete (`END`, or a head without a body), bytes
  that follow are only kept (`PAUSED`) until `start_next()`; nothing after a request is parsed
  before its response is done, so a refused or last ("Connection: close") request is never
  followed by another, and h11's MUST_CLOSE never sees those bytes.
- A fresh h11.Connection per request: h11 only ever parses here (framing.py writes responses),
  and a new Connection costs less than keeping its server-side state machine in step.

`next_event()` returns one of: a `Request` (the head, checked), `bytes` (body data), `END` (the
body is complete), a `Refusal` (answer it and close), `NEED_DATA`, `PAUSED` (a complete request
with bytes waiting behind it), or `CLOSED` (the client sent EOF; mid-body, it went away).
"""

from __future__ import annotations

import enum

import h11

from dualgate.http.checks import (
    MAX_CHUNK_LINE,
    ChunkedFraming,
    Framing,
    Refusal,
    check_request,
    final_coding_is_chunked,
    origin_form,
    oversized_head,
)
from dualgate.http.grammar import Headers

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
    """One request head, checked; read-only once made."""

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


class ReaderState(enum.Enum):
    """Where the reader is in the request it reads.

    Theory of operation. The reader is always in exactly one state; it moves only as
    `READER_MOVES` allows:

        HEAD ──head, chunked or with a Content-Length──> BODY ──h11 buffer spent──> DIRECT
          │                                                │                          │
          └──head without a body──> DONE <──chunked end────┘     <──length reached────┘
                                     │
          HEAD <──start_next()───────┘              any state ──refusal, take_leftover──> FAILED

    - HEAD: bytes go to h11 and to the raw window the head checks read; `next_event` parses.
    - BODY: body events come from h11: a chunked body (ChunkedFraming checks its framing on
      the raw bytes as they arrive), or what h11 had buffered of a Content-Length body.
    - DIRECT: the rest of a Content-Length body, sliced from the raw bytes past h11.
    - DONE: the request is complete; bytes behind it are only kept until `start_next()`.
    - FAILED: refused, or handed to another protocol (`take_leftover`); nothing more is read.

    The states are compared by identity (`is`), as cheap as an int compare. The moves made
    where the state before is known by construction (in `_on_head`, the state is HEAD) are
    plain assignments on the per-request path; the others go through `_move`, which checks
    the table (an assert: free under -O). tests/test_unit_reader.py checks both against it.
    """

    HEAD = "head"
    BODY = "body"
    DIRECT = "direct"
    DONE = "done"
    FAILED = "failed"


_HEAD, _BODY, _DIRECT, _DONE, _FAILED = ReaderState

# Where each state may go next.
READER_MOVES: dict[ReaderState, frozenset[ReaderState]] = {
    _HEAD: frozenset({_BODY, _DONE, _FAILED}),
    _BODY: frozenset({_DIRECT, _DONE, _FAILED}),
    _DIRECT: frozenset({_DONE, _FAILED}),
    _DONE: frozenset({_HEAD, _FAILED}),
    _FAILED: frozenset({_FAILED}),
}


class RequestReader:
    __slots__ = (
        "_body_left",
        "_carry",
        "_chunked",
        "_conn",
        "_direct",
        "_eof",
        "_length",
        "_max_body",
        "_max_fields",
        "_max_head",
        "_received",
        "_refusal",
        "_state",
        "_window",
    )

    def __init__(self, max_head_size: int, max_header_fields: int, max_body_size: int | None):
        self._max_head = max_head_size
        # Header fields a head (or a chunked body's trailer section) may hold.
        self._max_fields = max_header_fields
        self._max_body = max_body_size
        self._conn = self._parser()
        self._state = _HEAD
        # The raw bytes of the head so far, for the checks h11 does not make.
        self._window: bytes | bytearray = b""
        self._refusal: Refusal | None = None
        self._chunked: ChunkedFraming | None = None
        self._received = 0
        self._length = 0
        self._body_left = 0
        self._direct = b""
        self._carry = b""
        self._eof = False

    def _parser(self) -> h11.Connection:
        # h11's own limit is a backstop: oversized heads are refused here first, by one rule,
        # and so are chunk lines and trailer sections (ChunkedFraming). It must sit above every
        # one of those limits, or it would answer first, for some ways the bytes arrive only.
        backstop = max(self._max_head, MAX_CHUNK_LINE) + 1024
        return h11.Connection(h11.SERVER, max_incomplete_event_size=backstop)

    @property
    def head_started(self) -> bool:
        """Bytes of a request head have arrived (the head deadline applies, not keep-alive)."""
        return self._state is _HEAD and bool(self._window)

    # -- input --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            return  # h11 takes empty bytes for EOF; only feed_eof() means that
        state = self._state
        if state is _HEAD:
            window = self._window
            if not window:
                if data[:1] in (b"\r", b"\n"):
                    # RFC 9112 section 2.2: empty lines before a request line are ignored (h11
                    # would answer 400).
                    data = data.lstrip(b"\r\n")
                    if not data:
                        return
                self._window = data
            elif isinstance(window, bytearray):
                window += data
            else:
                self._window = bytearray(window) + data
            self._conn.receive_data(data)
        elif state is _DIRECT:
            self._direct = self._direct + data if self._direct else data
        elif state is _BODY:
            if self._chunked is not None and self._refusal is None:
                self._refusal = self._chunked.feed(data)
            self._conn.receive_data(data)
        elif state is _DONE:
            self._carry += data

    def feed_eof(self) -> None:
        self._eof = True
        state = self._state
        if state is _HEAD or state is _BODY:
            self._conn.receive_data(b"")

    # -- events -------------------------------------------------------------------------

    def next_event(self) -> ReaderEvent:
        state = self._state
        if state is _HEAD:
            return self._next_head()
        if state is _DIRECT:
            return self._next_direct()
        if state is _BODY:
            return self._next_body()
        if state is _DONE:
            if self._carry:
                return PAUSED
            return CLOSED if self._eof else NEED_DATA
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
            # Refused before the limits below, as h11 refuses it on its first byte while the
            # head is incomplete: so the answer does not depend on how the head arrives.
            # (Empty lines before a request line were dropped in feed().)
            return self._fail(Refusal(400, "Malformed request: illegal request line", "malformed"))
        # The head ends where h11 ends it, at its first blank line (LF, optional CR, LF), so the
        # limits below count the same bytes however the head arrives (a bare LF there is then
        # refused by the checks). Two finds: cheaper than a regular expression.
        end = window.find(b"\n\r\n")
        bare = window.find(b"\n\n", 0, end + 1 if end >= 0 else len(window))
        end = bare + 2 if bare >= 0 else end + 3 if end >= 0 else -1
        # Checked on the raw bytes before h11 parses them: a head of thousands of tiny fields
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
        too_big = oversized_head(window[:end] if end >= 0 else window, limit)
        if too_big is not None:
            return self._fail(too_big)
        conn = self._conn
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return self._fail(self._remap(exc, window[:end] if end >= 0 else window))
        if event is h11.NEED_DATA:
            return NEED_DATA
        if type(event) is h11.Request:
            return self._on_head(event, window, end)
        # ConnectionClosed: EOF between requests.
        return CLOSED

    def _remap(self, exc: h11.RemoteProtocolError, head: bytes | bytearray = b"") -> Refusal:
        """h11's error as our refusal; `head` is the request head h11 refused, when whole."""
        status = exc.error_status_hint
        if status == 501 and not final_coding_is_chunked(head):
            # h11 answers every Transfer-Encoding but a lone "chunked" with 501; RFC 9112
            # section 6.3 item 4 makes a request whose final coding is not chunked a MUST-400
            # ("chunked, gzip", "gzip"). 501 stays for "gzip, chunked".
            return Refusal(400, f"Malformed request: {exc}", "smuggling")
        if status == 431:
            return oversized_head(self._window, self._max_head) or Refusal(
                431, "Request head too large", "too_large"
            )
        if self._eof:
            return Refusal(status, "Request head incomplete at end of stream", "malformed")
        return Refusal(status, f"Malformed request: {exc}", "malformed")

    def _on_head(self, event: h11.Request, window: bytes | bytearray, end: int) -> ReaderEvent:
        # h11 and _next_head find the same blank line, so `end` is known here.
        head = bytes(window[:end]) if end >= 0 else bytes(window)
        self._window = b""
        version = event.http_version
        # RFC 9110 section 2.5: a higher minor version is handled as the highest one we know.
        if version != b"1.1" and version != b"1.0" and version[:2] == b"1.":
            version = b"1.1"
        headers = list(event.headers)
        target = event.target
        framing = check_request(event.method, target, headers, version, head, self._max_body)
        if type(framing) is Refusal:
            return self._fail(framing)
        assert type(framing) is Framing
        if target[:1] not in (b"/", b"*"):
            target, headers = origin_form(target, headers)
        conn = self._conn
        request = Request(
            event.method,
            target,
            headers,
            version,
            framing,
            conn.client_is_waiting_for_100_continue,
        )
        if framing.chunked:
            # Framing checked on the raw bytes, starting with those h11 already holds.
            self._chunked = ChunkedFraming(self._max_fields, self._max_head)
            self._refusal = self._chunked.feed(conn.trailing_data[0])
            self._state = _BODY
        elif framing.content_length:
            self._length = framing.content_length
            self._state = _BODY
        else:
            # No body: what h11 holds past the head belongs to the next request.
            self._carry = bytes(conn.trailing_data[0])
            self._state = _DONE
        return request

    def _next_body(self) -> ReaderEvent:
        if self._refusal is not None:
            return self._fail(self._refusal)
        conn = self._conn
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if self._eof:
                return CLOSED  # the client went away mid-body
            return self._fail(self._remap(exc))
        event_type = type(event)
        if event_type is h11.Data:
            # h11 hands out bytearray slices of its buffer; applications get bytes.
            return self._body_bytes(bytes(event.data))  # type: ignore[union-attr]
        if event_type is h11.EndOfMessage:
            self._carry = bytes(conn.trailing_data[0])
            self._state = _DONE
            return END
        if self._chunked is None:
            # h11 has handed out all it buffered of a Content-Length body; the rest is sliced
            # from the raw bytes directly.
            self._state = _DIRECT
            self._body_left = self._length - self._received
        return NEED_DATA

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
            return CLOSED if self._eof else NEED_DATA
        left = self._body_left
        if len(data) > left:
            self._carry += data[left:]
            data = data[:left]
        self._direct = b""
        self._body_left = left - len(data)
        return self._body_bytes(data)

    # -- between requests ---------------------------------------------------------------

    def start_next(self) -> None:
        """The response is done: parse what followed the request as the next request."""
        carry = self._carry.lstrip(b"\r\n")  # empty lines before a request line are ignored
        self._conn = conn = self._parser()
        self._move(_HEAD)
        self._window = carry
        self._refusal = None
        self._chunked = None
        self._received = 0
        self._body_left = 0
        self._direct = b""
        self._carry = b""
        if carry:
            conn.receive_data(carry)
        if self._eof:
            conn.receive_data(b"")

    def take_leftover(self) -> bytes:
        """For a protocol upgrade: every byte read past the request head."""
        leftover = self._carry
        self._carry = b""
        self._move(_FAILED)
        return leftover

    @property
    def eof(self) -> bool:
        return self._eof
