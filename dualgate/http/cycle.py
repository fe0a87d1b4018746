"""`RequestCycle`: one request and its response, all that an interface (WSGI, ASGI) sees.

Rules of this file:
- Everything here runs on the event loop thread; pool threads reach a cycle only by posting
  to the loop (wsgi/threads.py). The one exception is `whole_response`, run by the pool thread
  the connection's wire is lent to (wire.py): until that thread gives the wire back, the loop
  neither writes to the connection nor reads the response state.
- The request facts (`request`: method, target, headers, version, framing) are read-only once
  the reader has checked them. The request body arrives through `feed_body`/`feed_end`/`lose`,
  called by the connection (connection.py) alone; an interface takes it with `take_body`.
- The cycle owns all response state: the head, its framing, the bytes still owed to a
  Content-Length, completion. It writes through its connection's narrow `Port` and tells the
  connection once, through `response_done` or `response_failed`, that the response is over.
- `interface` (the figures of the interface that handles the request) is written only while
  metrics are on, by the handler's tag (metered.py), so a request costs nothing for it
  otherwise; it stays unset then.
- `client`, `scheme`, `server` and `tls` are what the application sees: the connection's, or
  what a trusted proxy forwarded (peer.py decides, before the cycle is built: a `View`). They
  and `request` are inputs, never rewritten; a router or an interface that needs another view
  of the request derives it and passes it on. Every interface (WSGI, ASGI, a WebSocket after
  an upgrade) reads them here and nowhere else. The client's port is None when a proxy
  forwarded an address without one.
- The cycle knows its connection only as a `Port`: the head framed, bytes out, waiting for
  drain, a file out, body taken, and the three ways a response ends. The port frames the head
  (`frame_head`, handed the cycle, from which it reads what its framing needs): HTTP/1.1
  (port.py) serialises it and chunks a body of unknown length; HTTP/2 (h2/cycles.py) sends it
  as a HEADERS frame itself and frames the body (FRAMED), so neither protocol's framing leaks
  into the other and the interfaces serve both alike.
  Settings (the default headers) come in as values when the cycle is built; it never sees the
  server's state, the flow control, the transport or the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from dualgate.http.framing import CHUNKED, CLOSE, EMPTY, FRAMED, LENGTH, ResponseHead
from dualgate.http.grammar import Headers
from dualgate.http.reader import Request
from dualgate.logs import error_logger, log_access

if TYPE_CHECKING:
    from dualgate.http.state import ServerState
    from dualgate.http.wire import DirectWire
    from dualgate.metrics.counters import InterfaceFigures

__all__ = ["Port", "RequestCycle", "Takeover", "View", "loop_can_sendfile"]

# What builds the protocol that takes a connection over (`RequestCycle.upgrade`), given what the
# server's connections share: it joins the live connections (so that a graceful stop waits for
# it too), writes the same Date and Server headers, and counts and logs what it answers.
Takeover = Callable[["ServerState"], asyncio.BaseProtocol]


class View(NamedTuple):
    """Who asked, and how, as the application must see it: the connection's own facts, or what
    a trusted proxy forwarded (peer.py)."""

    client: tuple[str, int | None] | None
    server: tuple[str, int | None] | None
    scheme: str
    tls: dict[str, Any] | None  # the ASGI TLS extension, when a client cert was asked for


class Port(Protocol):
    """What a cycle needs of its connection (connection.py implements it), and nothing more."""

    # The loop has sendfile and the connection is not TLS: `sendfile` uses the OS's.
    can_sendfile: bool

    @property
    def writing_paused(self) -> bool: ...

    def frame_head(
        self, cycle: RequestCycle, status: int, reason: bytes, headers: Headers, whole: int | None
    ) -> ResponseHead:
        """`cycle`'s response head as this protocol frames it: its bytes, for `write` to send
        first, and how the body is framed. What else the framing needs the port reads from the
        cycle (the request's method and version, keep-alive, the default headers); `reason` is
        the application's (empty: none given), `whole` the body's length when the response is
        whole (`respond`). ValueError when the head is not valid HTTP; nothing is sent then."""

    def write(self, data: bytes) -> None: ...
    def when_writable(self, callback: Callable[[], None]) -> None: ...
    async def drained(self) -> None: ...
    async def sendfile(self, file: Any, offset: int, count: int) -> None: ...
    def body_taken(self) -> None: ...
    def response_done(self, cycle: RequestCycle) -> None: ...
    def response_failed(self, cycle: RequestCycle) -> None: ...
    def upgrade(self, cycle: RequestCycle, takeover: Takeover) -> None: ...

    def lend_wire(self, cycle: RequestCycle) -> DirectWire | None:
        """The socket, for a pool thread to write `cycle`'s whole response itself (wire.py), or
        None when it may not (TLS, uvloop, bytes still queued)."""

    def sent_directly(self, size: int) -> None:
        """A pool thread wrote `size` bytes of a response to the socket itself (for counting)."""


class RequestCycle:
    __slots__ = (
        "_body",
        "_body_buffered",
        "_continue_sent",
        "_framing",
        "_on_body_ready",
        "_on_disconnect",
        "_port",
        "_remaining",
        "body_complete",
        "body_received",
        "client",
        "client_closed",
        "complete",
        "disconnected",
        "extra",
        "extra_head",
        "head_sent",
        "interface",
        "keep_alive",
        "request",
        "response_headers",
        "scheme",
        "sent_bytes",
        "server",
        "started_at",
        "status",
        "tls",
    )

    # Set by metered.tagged only (see the rules above), never in __init__.
    interface: InterfaceFigures

    def __init__(
        self, port: Port, request: Request, view: View, extra: Headers, extra_head: bytes
    ) -> None:
        self._port = port
        self.request = request
        self.client, self.server, self.scheme, self.tls = view
        # The server's default headers (Date, Server) as they were when the request came, for
        # the port to frame the head with (`extra_head`: the same, serialised).
        self.extra = extra
        self.extra_head = extra_head
        self.started_at = time.monotonic()
        self._body: deque[bytes] = deque()
        self._body_buffered = 0
        self._continue_sent = False
        self.body_received = 0
        self.body_complete = not (request.chunked or request.content_length)
        # One-shot callbacks (when_body_ready, when_disconnected), cleared before they run.
        self._on_body_ready: Callable[[], None] | None = None
        self._on_disconnect: Callable[[], None] | None = None
        self.disconnected = False
        # The client has sent all it will (EOF after the request); it may still be reading.
        self.client_closed = False
        # Response state, written only by the methods below.
        self.head_sent = False
        self.complete = False
        self.status = 0
        self.sent_bytes = 0
        # The application's response headers, as given, for an access line that shows some.
        self.response_headers: Sequence[tuple[bytes, bytes]] = ()
        self.keep_alive = request.keep_alive
        self._framing = EMPTY
        self._remaining = 0

    @property
    def can_sendfile(self) -> bool:
        """Whether `sendfile` uses the OS's: not under TLS, nor on a loop without it (uvloop)."""
        return self._port.can_sendfile

    # -- request body, the connection's side --------------------------------------------

    def feed_body(self, data: bytes) -> None:
        self._body.append(data)
        self._body_buffered += len(data)
        self.body_received += len(data)
        self._notify_body()

    def feed_end(self) -> None:
        self.body_complete = True
        self._notify_body()

    def half_closed(self) -> None:
        """The client sent EOF after its request; it may still read the response."""
        self.client_closed = True
        self._notify_disconnect()

    def lose(self) -> None:
        """The connection is gone: nothing more arrives and nothing more can be sent."""
        if not self.disconnected:
            self.disconnected = True
            self._notify_body()
            self._notify_disconnect()

    def when_body_ready(self, callback: Callable[[], None] | None) -> None:
        """Run `callback` once, at the next body bytes, the body's end or a disconnect (None:
        no longer)."""
        self._on_body_ready = callback

    def when_disconnected(self, callback: Callable[[], None] | None) -> None:
        """Run `callback` once, when the client sends EOF or the connection is gone."""
        self._on_disconnect = callback

    def _notify_body(self) -> None:
        callback = self._on_body_ready
        if callback is not None:
            self._on_body_ready = None
            callback()

    def _notify_disconnect(self) -> None:
        callback = self._on_disconnect
        if callback is not None:
            self._on_disconnect = None
            callback()

    # -- request body, the interface's side ---------------------------------------------

    @property
    def body_buffered(self) -> int:
        return self._body_buffered

    def take_body(self) -> tuple[bytes, bool]:
        """Everything buffered so far, and whether more is to come.

        The first call with nothing buffered answers a waiting `Expect: 100-continue`: the client
        is told to send only once the application asks for the body.
        """
        body = self._body
        if body:
            data = body.popleft() if len(body) == 1 else b"".join(body)
            body.clear()
            self._body_buffered = 0
            self._port.body_taken()
        else:
            data = b""
            if not self.body_complete and not self._continue_sent:
                self._continue_sent = True
                if self.request.expects_continue and not self.head_sent:
                    self._port.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._port.body_taken()
        return data, not self.body_complete and not self.disconnected

    # -- response -----------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self._port.writing_paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transport can take more bytes (at once if it can now)."""
        self._port.when_writable(callback)

    def _head_decided(self, status: int, headers: Headers, head: ResponseHead) -> bytes:
        self.status = status
        self.response_headers = headers
        self.head_sent = True
        self.keep_alive = head.keep_alive
        self._framing = head.framing
        self._remaining = head.length
        return head.data

    def _head(
        self, status: int, headers: Headers, reason: bytes, whole: int | None
    ) -> bytes | None:
        try:
            head = self._port.frame_head(self, status, reason, headers, whole)
        except ValueError as exc:
            # Not valid HTTP (a bad Content-Length, a control character): the client gets a
            # 500 and a close instead, and the log says why.
            error_logger.error("Response refused: %s", exc)
            self.keep_alive = False
            self.respond_error(500, "Internal Server Error\n")
            return None
        return self._head_decided(status, headers, head)

    def log_access(self) -> None:
        """The access line of this finished (or broken-off) response, for whichever protocol
        carried it (HTTP/1.1, an HTTP/2 stream)."""
        request = self.request
        log_access(
            self.client,
            request.method,
            request.target,
            request.http_version,
            self.status,
            self.sent_bytes,
            self.started_at,
            request.headers,
            self.response_headers,
        )

    def send_head(self, status: int, headers: Headers, reason: bytes = b"") -> None:
        if self.complete:
            return
        head = self._head(status, headers, reason, None)
        if head is not None:
            self._port.write(head)

    def respond(self, status: int, headers: Headers, body: bytes, reason: bytes = b"") -> None:
        """A whole response at once: head and body in one write, then finish."""
        if self.complete:
            return
        head = self._head(status, headers, reason, len(body))
        if head is None:
            return
        if body and self._framing != EMPTY:
            self.sent_bytes += len(body)
            self._remaining = 0
            self._port.write(head + body)
        else:
            self._port.write(head)
        self.finish()

    def whole_response(
        self, status: int, headers: Headers, body: bytes, reason: bytes = b""
    ) -> bytes | None:
        """`respond`'s bytes, for the pool thread the wire is lent to to write itself; None when
        the head is not valid HTTP (`respond`, on the loop, then answers 500 and logs why).

        Runs in that thread (see the rules above); the response state is decided as `respond`
        decides it, and `sent_directly` (on the loop) ends the response.
        """
        try:
            head = self._port.frame_head(self, status, reason, headers, len(body))
        except ValueError:
            return None
        data = self._head_decided(status, headers, head)
        if body and self._framing != EMPTY:
            self.sent_bytes += len(body)
            self._remaining = 0
            return data + body
        return data

    def sent_directly(self, written: int, rest: bytes) -> None:
        """On the loop: the thread wrote `written` bytes of `whole_response`; `rest` is what the
        socket did not take. Writes the rest, and finishes."""
        if written:
            self._port.sent_directly(written)
        if rest:
            self._port.write(rest)
        self.finish()

    def lend_wire(self) -> DirectWire | None:
        """On the loop, as a pool thread is given the request: the wire, for it to write the
        whole response itself (wire.py), or None."""
        return self._port.lend_wire(self)

    def send_body(self, data: bytes) -> None:
        if not data or self.complete or self.disconnected:
            return
        framing = self._framing
        if framing == LENGTH:
            if len(data) > self._remaining:
                excess = len(data) - self._remaining
                raise ValueError(f"response body exceeds its Content-Length by {excess} bytes")
            self._remaining -= len(data)
            self._port.write(data)
        elif framing == CHUNKED:
            self._port.write(b"%x\r\n%s\r\n" % (len(data), data))
        elif framing in (CLOSE, FRAMED):
            self._port.write(data)
        else:
            return  # EMPTY: a HEAD, 204 or 304 response; the body never reaches the wire
        self.sent_bytes += len(data)

    async def sendfile(self, file: Any, offset: int, count: int) -> None:
        if self.complete or self.disconnected:
            return
        framing = self._framing
        if framing == EMPTY:
            return
        if framing == LENGTH:
            count = min(count, self._remaining)
            self._remaining -= count
        if framing == CHUNKED:
            self._port.write(b"%x\r\n" % count)
        await self._port.sendfile(file, offset, count)
        if framing == CHUNKED:
            self._port.write(b"\r\n")
        self.sent_bytes += count

    def finish(self) -> None:
        """The response is complete; the connection moves on to its next request or closes."""
        if self.complete:
            return
        self.complete = True
        if self._framing == CHUNKED:
            self._port.write(b"0\r\n\r\n")
        elif self._framing == LENGTH and self._remaining:
            # Fewer bytes than the declared Content-Length: the client must see a broken body.
            error_logger.error(
                "Response ended %d bytes short of its Content-Length; closing", self._remaining
            )
            self._port.response_failed(self)
            return
        if self._framing == CLOSE:
            self.keep_alive = False
        self._port.response_done(self)

    def abort(self) -> None:
        """The response cannot be completed: close the connection so the client sees that."""
        if not self.complete:
            self.complete = True
            self._port.response_failed(self)

    def respond_error(
        self, status: int, message: str, extra: Headers | None = None, *, close: bool = False
    ) -> None:
        """A short plain-text error response, if the head has not gone out yet; else abort.

        `close`: the connection ends with this answer, whatever the request asked for."""
        if close:
            self.keep_alive = False
        if self.head_sent:
            self.abort()
            return
        headers = [(b"content-type", b"text/plain; charset=utf-8"), *(extra or ())]
        self.respond(status, headers, message.encode("utf-8", "replace"))

    # -- protocol upgrade ---------------------------------------------------------------

    def upgrade(self, takeover: Takeover) -> None:
        """Hand the connection to the protocol `takeover` builds (after the request head: a
        WebSocket, h2c).

        The connection writes nothing: the protocol answers the upgrade request itself. It gets
        `connection_made(transport)`, then `data_received` with any bytes already read past
        the request head, and it owns the transport from then on.
        """
        self.complete = True
        self._port.upgrade(self, takeover)


def loop_can_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """uvloop's loop has `sendfile` only as AbstractEventLoop's stub, which raises."""
    return type(loop).sendfile is not asyncio.AbstractEventLoop.sendfile
