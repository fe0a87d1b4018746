"""One fuzz input through dualgate's request reader, with its invariants checked at every event.

Pure: no atheris here (benchmarks/fuzz.py drives this under the fuzzer, and
tests/test_fuzz_target.py replays the seed corpus through it), no I/O, no clock.

An input is laid out as:
    byte 0       flags: 1 a body limit of 64 bytes, 2 small head limits (512 bytes, 8 fields),
                 4 EOF after the last piece, 8 answer each request only after the next piece
    byte 1       cut points k (low 3 bits)
    2k bytes     k cut positions, big-endian, each taken modulo the stream's length + 1
    the rest     the byte stream a client sends

The stream is fed in the pieces the cuts make, with events read after each piece as the
connection reads them, and fed again whole; both runs must give the same events. Invariants
(a violation raises `Violation`; any other exception is a crash, found as such):
- `next_event()` returns only a Request, non-empty bytes, END, NEED_DATA, PAUSED, CLOSED or a
  Refusal (status 4xx/5xx, a known kind), and always reaches one that waits within a bound.
- Events follow the request cycle: a Request only between requests, body bytes and END only
  inside a body, PAUSED only while a complete request waits for its answer.
- A Refusal is final: nothing but NEED_DATA after it, whatever else arrives; above all no Request.
- Body bytes never exceed the Content-Length, and add up to it at END; a chunked body never
  exceeds the body limit; a request without a body has no body bytes.
- A Request is well-formed: token method, origin-form (or `*`) target without white space or
  control bytes, HTTP/1.0 or 1.1, lower-case token header names, values without CR, LF, NUL or
  other control bytes and without surrounding white space, not both Content-Length and
  Transfer-Encoding, no more fields than the limit, a Content-Length within the body limit.
- Once EOF has arrived and every complete request is answered, the reader says CLOSED (or has
  refused): a connection never waits for bytes that cannot come.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple, cast

from dualgate.http.checks import Refusal
from dualgate.http.reader import CLOSED, END, NEED_DATA, PAUSED, Request, RequestReader, head_parser

__all__ = ["Options", "Violation", "decode", "encode", "reader_factory", "run_one"]

MAX_HEAD, MAX_FIELDS = 65536, 100
SMALL_HEAD, SMALL_FIELDS = 512, 8
BODY_LIMIT = 64
MAX_EVENTS = 100_000
REFUSAL_KINDS = {"malformed", "too_large", "smuggling", "unsupported"}

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_LOWER_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-z]+")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class Violation(AssertionError):
    """The reader broke one of its invariants."""


class Options(NamedTuple):
    body_limit: bool
    small_limits: bool
    eof: bool
    answer_late: bool


def decode(data: bytes) -> tuple[Options, list[bytes]]:
    """An input's options and the pieces its stream is fed in."""
    flags = data[0] if data else 0
    count = (data[1] & 7) if len(data) > 1 else 0
    raw_cuts = data[2 : 2 + 2 * count]
    stream = data[2 + 2 * count :]
    cuts = sorted(
        {
            int.from_bytes(raw_cuts[i : i + 2], "big") % (len(stream) + 1)
            for i in range(0, len(raw_cuts) - 1, 2)
        }
    )
    pieces, start = [], 0
    for cut in [*cuts, len(stream)]:
        if cut > start:
            pieces.append(stream[start:cut])
            start = cut
    options = Options(bool(flags & 1), bool(flags & 2), bool(flags & 4), bool(flags & 8))
    return options, pieces


PLAIN = Options(body_limit=False, small_limits=False, eof=False, answer_late=False)


def encode(stream: bytes, options: Options = PLAIN, cuts: tuple[int, ...] = ()) -> bytes:
    """The input that feeds `stream` with these options and cuts (for seed files and tests)."""
    flags = (
        options.body_limit | options.small_limits << 1 | options.eof << 2 | options.answer_late << 3
    )
    cut_bytes = b"".join(cut.to_bytes(2, "big") for cut in cuts[:7])
    return bytes([flags, len(cuts[:7])]) + cut_bytes + stream


ReaderFactory = Callable[[int, int, int | None], RequestReader]


def reader_factory(http: str) -> ReaderFactory:
    """Readers whose heads the parser `--http` names (h11 or httptools) reads."""
    parse_head = head_parser(http)

    def make(max_head: int, max_fields: int, max_body: int | None) -> RequestReader:
        return RequestReader(max_head, max_fields, max_body, parse_head)

    return make


def run_one(data: bytes, make_reader: ReaderFactory = RequestReader) -> None:
    """Check one input; raises Violation when an invariant breaks."""
    options, pieces = decode(data)
    split = _outline(_Run(options, make_reader).feed_all(pieces))
    whole = _outline(_Run(options, make_reader).feed_all([b"".join(pieces)] if pieces else []))
    if split != whole:
        raise Violation(f"events depend on how the bytes arrive:\n{split}\n!=\n{whole}")


def _outline(log: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The events as compared between runs: a refusal by its status (h11 or the raw-byte checks
    may be first to see a fault, each with its own message and kind), and without the body
    bytes of a refused body (they may stop at any byte before the fault is seen)."""
    kept: list[tuple[object, ...]] = []
    for item in log:
        if item[0] == "refusal":
            if kept and kept[-1][0] == "body":
                kept.pop()
            item = item[:2]
        kept.append(item)
    return kept


class _Run:
    """The connection's side: reads events after each piece, answers complete requests."""

    def __init__(self, options: Options, make_reader: ReaderFactory) -> None:
        self.options = options
        head, fields = (
            (SMALL_HEAD, SMALL_FIELDS) if options.small_limits else (MAX_HEAD, MAX_FIELDS)
        )
        self.max_fields = fields
        self.body_limit = BODY_LIMIT if options.body_limit else None
        self.reader = make_reader(head, fields, self.body_limit)
        self.log: list[tuple[object, ...]] = []
        self.request: Request | None = None  # the request whose body is arriving
        self.received = 0
        self.waiting = False  # a complete request not answered yet
        self.refused = False
        self.closed = False

    def feed_all(self, pieces: list[bytes]) -> list[tuple[object, ...]]:
        for piece in pieces:
            if self.options.answer_late:
                self._answer()  # the answer to the last request goes out as more bytes arrive
            self.reader.feed(piece)
            self._pump()
            if not self.options.answer_late:
                self._answer()
        self._answer_all()
        if self.options.eof:
            self.reader.feed_eof()
            self._pump()
            self._answer_all()
            if not self.refused and not self.closed:
                raise Violation(
                    f"EOF arrived and every request is answered, but no CLOSED: {self.log[-3:]}"
                )
        return self.log

    def _answer(self) -> None:
        """The response to the complete request is done; read on (maybe to the next one)."""
        if self.waiting and not self.refused:
            self.waiting = False
            self.reader.start_next()
            self._pump()

    def _answer_all(self) -> None:
        """Answer every request the bytes so far hold (each may uncover the next)."""
        for _ in range(MAX_EVENTS):
            if not self.waiting or self.refused:
                return
            self._answer()
        raise Violation(f"still a request to answer after {MAX_EVENTS} answers")

    def _pump(self) -> None:
        for _ in range(MAX_EVENTS):
            event = self.reader.next_event()
            if self.refused:
                if event is not NEED_DATA:
                    raise Violation(f"{event!r} after a refusal")
                return
            if type(event) is Request:
                self._on_request(event)
            elif type(event) is bytes:
                self._on_body(event)
            elif event is END:
                self._on_end()
            elif type(event) is Refusal:
                self._on_refusal(event)
            elif event is PAUSED:
                if not self.waiting:
                    raise Violation("PAUSED without a complete request waiting for its answer")
                return
            elif event is CLOSED:
                # Also while a complete request waits: the client half-closed after sending it,
                # and its answer still goes out.
                self.closed = True
                self._log("closed")
                return
            elif event is NEED_DATA:
                return
            else:
                raise Violation(f"unknown event {event!r}")
        raise Violation(f"no waiting event within {MAX_EVENTS} events")

    def _log(self, *item: object) -> None:
        last = self.log[-1] if self.log else None
        if item[0] == "body" and last is not None and last[0] == "body":
            self.log[-1] = ("body", cast(bytes, last[1]) + cast(bytes, item[1]))
        elif not (item == ("closed",) and last == item):
            self.log.append(item)

    def _on_request(self, request: Request) -> None:
        if self.request is not None or self.waiting:
            raise Violation("a Request before the previous one was complete and answered")
        if self.closed:
            raise Violation("a Request after CLOSED")  # EOF: no bytes can follow
        self._check_head(request)
        head = (request.method, request.target, tuple(request.headers), request.http_version)
        framing = (request.content_length, request.chunked, request.keep_alive, request.upgrade)
        self._log("request", *head, *framing)
        self.received = 0
        if request.has_body:
            self.request = request
        else:
            self.waiting = True

    def _check_head(self, request: Request) -> None:
        if not _TOKEN.fullmatch(request.method):
            raise Violation(f"method {request.method!r}")
        target = request.target
        if not (target == b"*" or target.startswith(b"/")) or _BAD_TARGET.search(target):
            raise Violation(f"target {target!r}")
        if request.http_version not in (b"1.0", b"1.1"):
            raise Violation(f"version {request.http_version!r}")
        names = [name for name, _ in request.headers]
        if len(names) > self.max_fields:
            raise Violation(f"{len(names)} header fields, more than {self.max_fields}")
        for name, value in request.headers:
            if not _LOWER_TOKEN.fullmatch(name):
                raise Violation(f"header name {name!r}")
            if (
                _BAD_VALUE.search(value)
                or value[:1] in (b" ", b"\t")
                or value[-1:] in (b" ", b"\t")
            ):
                raise Violation(f"header value {value!r}")
        if b"content-length" in names and b"transfer-encoding" in names:
            raise Violation("both Content-Length and Transfer-Encoding")
        if request.chunked and (request.content_length or b"transfer-encoding" not in names):
            raise Violation("chunked framing without Transfer-Encoding, or with a length")
        if request.content_length < 0:
            raise Violation(f"Content-Length {request.content_length}")
        if self.body_limit is not None and request.content_length > self.body_limit:
            raise Violation(f"Content-Length {request.content_length} over the limit")

    def _on_body(self, data: bytes) -> None:
        request = self.request
        if request is None or not data:
            raise Violation(f"body bytes {data[:20]!r} outside a body")
        self.received += len(data)
        if not request.chunked and self.received > request.content_length:
            raise Violation(
                f"{self.received} body bytes for Content-Length {request.content_length}"
            )
        if self.body_limit is not None and self.received > self.body_limit:
            raise Violation(f"{self.received} body bytes over the limit")
        self._log("body", data)

    def _on_end(self) -> None:
        request = self.request
        if request is None:
            raise Violation("END outside a body")
        if not request.chunked and self.received != request.content_length:
            raise Violation(f"END after {self.received} of {request.content_length} bytes")
        self.request = None
        self.waiting = True
        self._log("end")

    def _on_refusal(self, refusal: Refusal) -> None:
        status, message, kind = refusal
        if not 400 <= status <= 599 or kind not in REFUSAL_KINDS or not message:
            raise Violation(f"refusal {refusal!r}")
        if self.waiting:
            raise Violation("a Refusal while a complete request waits for its answer")
        self.refused = True
        self._log("refusal", status, kind)
