"""Two views of one raw byte stream: dualgate's request reader and llhttp (through httptools).

Each view reads the whole stream (no EOF: httptools cannot signal one) and says what a server
built on it would do: the requests it would hand on, each with its method, target, headers,
version, body and keep-alive, and how the stream ends: `clean` (nothing left over, or bytes
after a last request that are never read), `incomplete` (a request is cut off), `refused` (the
parser rejects the bytes) or `upgrade` (the connection changes protocol after the last request).

The llhttp view is normalised where llhttp leaves to its caller what RFC 9112 and RFC 9110 say
a recipient does, so that the comparison is about parsing, not about who does that last step:
- an absolute-form target becomes origin-form with its authority as the Host (RFC 9112
  section 3.2.2);
- header names are compared lower-cased (RFC 9110 section 5.1: case-insensitive), and
  transfer-coding names too (RFC 9112 section 7);
- trailing white space is not part of a field value (RFC 9110 section 5.5); llhttp strips only
  the leading white space;
- trailer fields are not compared: dualgate discards them, which a recipient that removes the
  chunked coding may do (RFC 9112 section 7.1.2), while httptools reports them as headers.
Both views stop after a request that does not keep the connection open, as a server closes then.
"""

from __future__ import annotations

from typing import NamedTuple

import httptools

from dualgate.http.checks import Refusal
from dualgate.http.reader import CLOSED, END, NEED_DATA, PAUSED, Request, RequestReader

__all__ = ["Message", "Outcome", "dualgate_view", "llhttp_view"]

# dualgate's defaults (Config.max_head_size, Config.max_header_fields).
MAX_HEAD = 65536
MAX_FIELDS = 100
_MAX_EVENTS = 100_000


class Message(NamedTuple):
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased, in order
    version: bytes
    body: bytes
    keep_alive: bool


class Outcome(NamedTuple):
    messages: tuple[Message, ...]
    end: str  # clean, incomplete, refused, upgrade
    status: int = 0  # dualgate's answer to a refused request (llhttp has none)
    detail: str = ""  # why it was refused, for failure messages; never compared

    def same_as(self, other: Outcome) -> bool:
        return self.messages == other.messages and self.end == other.end


def dualgate_view(data: bytes, piece: int = 0) -> Outcome:
    """What dualgate's reader makes of `data`, fed whole or in pieces of `piece` bytes, with
    events read after each piece as the connection reads them."""
    view = _Reader()
    step = piece or max(len(data), 1)
    for start in range(0, len(data), step):
        end = view.feed(data[start : start + step])
        if end is not None:
            return end
    return view.outcome_at_end()


class _Reader:
    """The connection's side of the reader, answering each request at once."""

    def __init__(self) -> None:
        self.reader = RequestReader(MAX_HEAD, MAX_FIELDS, None)
        self.messages: list[Message] = []
        self.current: Request | None = None
        self.body = bytearray()

    def feed(self, data: bytes) -> Outcome | None:
        """The outcome once the stream has ended for the server; None while it reads on."""
        reader = self.reader
        reader.feed(data)
        for _ in range(_MAX_EVENTS):
            event = reader.next_event()
            if type(event) is Request:
                self.current = event
                if not event.has_body and (end := self._finish()) is not None:
                    return end
            elif type(event) is bytes:
                self.body += event
            elif event is END:
                if (end := self._finish()) is not None:
                    return end
            elif type(event) is Refusal:
                messages = tuple(self.messages)
                return Outcome(messages, "refused", event.status, event.message)
            elif event is NEED_DATA:
                return None
            elif event is PAUSED:
                raise AssertionError("PAUSED: a request was left unanswered")
            else:
                assert event is CLOSED, event
                return Outcome(tuple(self.messages), "clean")
        raise AssertionError(f"no end after {_MAX_EVENTS} events")

    def _finish(self) -> Outcome | None:
        request, self.current = self.current, None
        assert request is not None
        self.messages.append(
            Message(
                request.method,
                request.target,
                tuple(request.headers),
                request.http_version,
                bytes(self.body),
                request.keep_alive,
            )
        )
        self.body.clear()
        if request.upgrade or request.method == b"CONNECT":
            return Outcome(tuple(self.messages), "upgrade")
        if not request.keep_alive:
            return Outcome(tuple(self.messages), "clean")
        self.reader.start_next()  # the response is done: on to what followed
        return None

    def outcome_at_end(self) -> Outcome:
        cut = self.current is not None or self.reader.head_started
        return Outcome(tuple(self.messages), "incomplete" if cut else "clean")


def _origin_form(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """RFC 9112 section 3.2.2, written here independently of dualgate's own code."""
    if target.startswith(b"/") or target == b"*" or b"://" not in target:
        return target, headers
    rest = target.split(b"://", 1)[1]
    cuts = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
    cut = min(cuts) if cuts else len(rest)
    path = rest[cut:]
    if not path.startswith(b"/"):
        path = b"/" + path
    kept = [(name, value) for name, value in headers if name != b"host"]
    return path, [*kept, (b"host", rest[:cut])]


class _LLHTTP:
    """httptools' callback protocol, collecting one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.messages: list[Message] = []
        self.in_message = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._head: tuple[bytes, bytes, bool] = (b"", b"", False)
        self._in_trailers = False

    def on_message_begin(self) -> None:
        self.in_message = True
        self._url = b""
        self._headers = []
        self._body.clear()
        self._in_trailers = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            return
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"transfer-encoding":
            value = value.lower()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_trailers = True
        parser = self.parser
        self._head = (
            parser.get_method(),
            parser.get_http_version().encode(),
            parser.should_keep_alive(),
        )

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method, version, keep_alive = self._head
        target, headers = _origin_form(self._url, self._headers)
        self.messages.append(
            Message(method, target, tuple(headers), version, bytes(self._body), keep_alive)
        )
        self.in_message = False


def llhttp_view(data: bytes) -> Outcome:
    view = _LLHTTP()
    try:
        view.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return Outcome(tuple(view.messages), "upgrade")
    except httptools.HttpParserError as exc:
        last = view.messages[-1] if view.messages else None
        if last is not None and not last.keep_alive and not view.in_message:
            # Bytes after a last request: a server never reads them (llhttp calls them an error).
            return Outcome(tuple(view.messages), "clean")
        return Outcome(tuple(view.messages), "refused", detail=f"{type(exc).__name__}: {exc}")
    messages = tuple(view.messages)
    return Outcome(messages, "incomplete" if view.in_message else "clean")
