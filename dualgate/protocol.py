"""The HTTP/1.1 core: one `HTTPProtocol` per socket, one `RequestCycle` per request.

Rules of this file:
- Everything here runs on the event loop thread. Code in worker threads reaches a cycle only
  through `loop.call_soon_threadsafe` (see workers.py).
- h11 parses requests, with a fresh `h11.Connection` per request (cheaper than keeping its
  server-side state in step); framing.py writes responses; checks.py refuses what h11 lets
  through but RFC 9112 does not. Once h11 has handed out what it buffered of a Content-Length
  body, the rest is read directly (`_direct`), sparing h11's buffer copies.
- A request that is refused never reaches the application, and nothing after it on the same
  connection is read: a refusal always closes the connection.
- Timeouts are one deadline per connection, checked by the server's sweep, not loop timers.
- `RequestCycle` is all an interface (WSGI or ASGI) sees of a connection: `take_body` and
  `on_body_ready` for the request body; `send_head`, `send_body`, `respond`, `finish`,
  `abort` for the response; `disconnected` and `on_disconnect` to learn the client has gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import h11

from dualgate.checks import ChunkedFraming, check_request, final_coding_is_chunked, origin_form
from dualgate.framing import CHUNKED, CLOSE, EMPTY, LENGTH, build_head
from dualgate.logs import access_logger, error_logger, format_access

if TYPE_CHECKING:
    from dualgate.config import Config

__all__ = ["HTTPProtocol", "RequestCycle", "ServerState", "loop_can_sendfile"]

Headers = list[tuple[bytes, bytes]]
RequestHandler = Callable[["RequestCycle"], None]

_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
# RFC 9110 renamed these; Python 3.11's http module still has the RFC 7231 phrases.
_REASONS.update({413: b"Content Too Large", 414: b"URI Too Long", 422: b"Unprocessable Content"})
# Bodies a client may still be sending after its response are read and dropped up to this many
# bytes so the connection can be kept; past it, closing is cheaper than reading.
_MAX_DRAIN = 1 << 20


class ServerState:
    """What every connection of one server shares."""

    def __init__(self, config: Config, handler: RequestHandler) -> None:
        self.config = config
        self.handler = handler
        self.connections: set[HTTPProtocol] = set()
        self.shutting_down = False
        self.access_log = access_logger.isEnabledFor(logging.INFO)
        self.default_headers: Headers = []
        self.default_head = b""
        self.update_date()

    def update_date(self) -> None:
        """Called once a second by the server, so no request formats a date."""
        headers: Headers = []
        if self.config.date_header:
            headers.append((b"date", _http_date(time.time())))
        if self.config.server_header:
            headers.append((b"server", b"dualgate"))
        self.default_headers = headers
        self.default_head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)


def _http_date(now: float) -> bytes:
    from email.utils import formatdate

    return formatdate(now, usegmt=True).encode("ascii")


class RequestCycle:
    """One request and its response, as the application side sees them."""

    __slots__ = (
        "_body",
        "_body_buffered",
        "_continue_sent",
        "_protocol",
        "body_complete",
        "body_received",
        "client_closed",
        "content_length",
        "disconnected",
        "expects_body",
        "expects_continue",
        "framing",
        "head_sent",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "on_body_ready",
        "on_disconnect",
        "remaining",
        "response_complete",
        "sent_bytes",
        "started_at",
        "status",
        "target",
    )

    def __init__(self, protocol: HTTPProtocol, request: h11.Request) -> None:
        self._protocol = protocol
        self.method: bytes = request.method
        self.target: bytes = request.target
        self.headers: Headers = list(request.headers)
        # RFC 9110 section 2.5: a higher minor version is handled as the highest one we know.
        version = request.http_version
        self.http_version: bytes = (
            version if version in (b"1.1", b"1.0") or version[:2] != b"1." else b"1.1"
        )
        self.started_at = time.monotonic()
        self._body: deque[bytes] = deque()
        self._body_buffered = 0
        self._continue_sent = False
        self.body_received = 0
        self.body_complete = False
        # One-shot callbacks: a consumer sets them and they are cleared before they run.
        self.on_body_ready: Callable[[], None] | None = None
        self.on_disconnect: Callable[[], None] | None = None
        self.disconnected = False
        # The client has sent all it will (EOF after the request); it may still be reading.
        self.client_closed = False
        self.head_sent = False
        self.response_complete = False
        self.status = 0
        self.sent_bytes = 0
        self.keep_alive = True
        self.expects_body = False
        self.content_length = 0
        self.expects_continue = False
        self.framing = EMPTY
        self.remaining = 0

    # -- the connection, as an interface may need it -------------------------------------

    @property
    def client(self) -> tuple[str, int] | None:
        return self._protocol.client

    @property
    def server(self) -> tuple[str, int | None] | None:
        return self._protocol.server

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def config(self) -> Config:
        return self._protocol.state.config

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._protocol.loop

    # -- request body -------------------------------------------------------------------

    def take_body(self) -> tuple[bytes, bool]:
        """Everything buffered so far, and whether more is to come.

        The first call with nothing buffered answers a waiting `Expect: 100-continue`: the client
        is told to send only once the application asks for the body.
        """
        if self._body:
            data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
            self._body.clear()
            self._body_buffered = 0
            self._protocol.body_drained()
        else:
            data = b""
            if not self.body_complete and not self._continue_sent:
                self._continue_sent = True
                self._protocol.send_continue()
        return data, not self.body_complete and not self.disconnected

    @property
    def body_buffered(self) -> int:
        return self._body_buffered

    def _feed_body(self, data: bytes) -> None:
        self._body.append(data)
        self._body_buffered += len(data)
        self.body_received += len(data)
        self._notify_body()

    def _feed_end(self) -> None:
        self.body_complete = True
        self._notify_body()

    def _notify_body(self) -> None:
        callback = self.on_body_ready
        if callback is not None:
            self.on_body_ready = None
            callback()

    def _lose(self) -> None:
        self.disconnected = True
        self._notify_body()
        callback = self.on_disconnect
        if callback is not None:
            self.on_disconnect = None
            callback()

    # -- response -----------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers, reason: bytes = b"") -> None:
        self.status = status
        self.head_sent = True
        self._protocol.send_head(self, status, headers, reason)

    def respond(self, status: int, headers: Headers, body: bytes, reason: bytes = b"") -> None:
        """A whole response at once: head and body in one write, then finish."""
        self.status = status
        self.head_sent = True
        self._protocol.send_head(self, status, headers, reason, whole_body=body)

    def send_body(self, data: bytes) -> None:
        if data and not self.disconnected:
            self.sent_bytes += len(data)
            self._protocol.send_body(self, data)

    def finish(self) -> None:
        """The response is complete; the connection moves on to its next request or closes."""
        if not self.response_complete:
            self.response_complete = True
            self._protocol.finish(self)

    def abort(self) -> None:
        """The response cannot be completed: close the connection so the client sees that."""
        if not self.response_complete:
            self.response_complete = True
            self._protocol.abort(self)

    def respond_error(self, status: int, message: str, extra: Headers | None = None) -> None:
        """A short plain-text error response, if the head has not gone out yet; else abort."""
        if self.head_sent:
            self.abort()
            return
        body = message.encode("utf-8", "replace")
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            *(extra or ()),
        ]
        self.respond(status, headers, body)

    @property
    def writing_paused(self) -> bool:
        return self._protocol.writing_paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transport can take more bytes (at once if it can now)."""
        self._protocol.when_writable(callback)

    async def sendfile(self, file: Any, offset: int, count: int) -> None:
        await self._protocol.sendfile(self, file, offset, count)


class HTTPProtocol(asyncio.Protocol):
    """One client connection: parse with h11, check, dispatch, write, keep alive or close."""

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        config = state.config
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_head_size)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.cycle: RequestCycle | None = None
        self._dispatched_cycle: RequestCycle | None = None
        # Bytes of the head being received (h11's buffer plus what came since), for the checks
        # h11 does not make. None while a request body is being received.
        self._head_window: bytes | bytearray | None = b""
        # One deadline per connection (0.0: none), checked by the server's sweep: setting a
        # float per request is far cheaper than a loop timer per request (about 10% of the
        # loop's time went to call_later/cancel under load).
        self._deadline = 0.0
        self._deadline_for = ""
        self._write_timer: asyncio.TimerHandle | None = None
        self._head_timer_armed = False
        self._reading_paused = False
        self._writing_paused = False
        self._write_waiters: list[Callable[[], None]] = []
        self._over_limit = False
        self._draining = 0
        self._closed = False
        # The rest of a Content-Length body is read directly, not through h11, whose buffer
        # copies every byte three times (two thirds of the loop's time in a 200 MB upload).
        # `_direct` holds from then until the next parser; bytes after the body are carried
        # over to it.
        self._direct = False
        self._body_left = 0
        self._carry = b""
        self._carry_closed = False
        # The framing check of the current chunked request body, if it has one.
        self._chunked: ChunkedFraming | None = None

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.server = (str(local[0]), int(local[1]))
        elif isinstance(local, str):
            self.server = (local, None)
        # Over the limit, the connection is still read far enough to answer 503, so the client
        # learns why instead of seeing a reset.
        self._over_limit = len(self.state.connections) >= self.state.config.limit_concurrency
        self.state.connections.add(self)
        self._arm_timer(self.state.config.timeout_keep_alive, "keep-alive idle")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.state.connections.discard(self)
        self._cancel_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle._lose()
        elif cycle is not None:
            cycle.disconnected = True
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            waiter()

    def eof_received(self) -> bool:
        # A client may half-close after sending its request and still wait for the response,
        # so the transport stays open for writing. An ASGI app listening for http.disconnect
        # (long-poll, server-sent events) is told all the same, as uvicorn would.
        if self._direct and not self._body_left:
            self._carry_closed = True
        else:
            self.conn.receive_data(b"")
            self._handle_events()
        cycle = self.cycle
        if cycle is not None and cycle.body_complete and not cycle.response_complete:
            cycle.client_closed = True
            callback = cycle.on_disconnect
            if callback is not None:
                cycle.on_disconnect = None
                callback()
        return True

    def data_received(self, data: bytes) -> None:
        if self._direct:
            self._receive_directly(data)
            return
        if self._head_window is not None:
            if self.cycle is None and not self._head_timer_armed and self._deadline:
                self._head_timer_armed = True
                self._arm_timer(self.state.config.timeout_request_head, "request head")
            if not self._head_window and data[:1] in (b"\r", b"\n"):
                # RFC 9112 section 2.2: empty lines before a request line are ignored (h11
                # would answer 400). The head deadline above still runs.
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            if not self._head_window:
                self._head_window = data
            elif isinstance(self._head_window, bytearray):
                self._head_window += data
            else:
                self._head_window = bytearray(self._head_window) + data
        elif self.cycle is not None and not self.cycle.body_complete and not self._reading_paused:
            self._arm_timer(self.state.config.timeout_read, "request body")
        if self._chunked is not None:
            problem = self._chunked.feed(data)
            if problem is not None:
                self._refuse(400, problem)
                return
        self.conn.receive_data(data)
        self._handle_events()

    def _receive_directly(self, data: bytes) -> None:
        left = self._body_left
        if left:
            body = data if len(data) <= left else data[:left]
            data = data[len(body) :]
            self._body_left = left - len(body)
            if self._body_left and not self._reading_paused:
                self._arm_timer(self.state.config.timeout_read, "request body")
        else:
            body = b""
        if data:
            # The next request, pipelined: it waits for the next parser, and reading stops.
            self._carry += data
            self._pause_reading()
        if body:
            self._on_body_data(body)
            if not self._body_left and not self._closed:
                self._on_body_end()

    def pause_writing(self) -> None:
        self._writing_paused = True
        # A client that stops reading must not hold a worker (or a task) forever.
        self._write_timer = self.loop.call_later(
            self.state.config.timeout_write, self._on_write_timeout
        )

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            waiter()

    # -- reading ------------------------------------------------------------------------

    def _handle_events(self) -> None:
        while not self._closed:
            conn = self.conn
            if conn.their_state is h11.MUST_CLOSE and conn.trailing_data[0]:
                # The request just read was the connection's last (HTTP/1.0, or "Connection:
                # close"). h11 raises on any byte after it, which turned the answer to that
                # valid request into a 400. RFC 9112 section 9.6: send its response, then
                # close, processing nothing more; so leave those bytes unread.
                self._pause_reading()
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 501 and not final_coding_is_chunked(self._head_window):
                    # h11 answers every Transfer-Encoding but a lone "chunked" with 501; RFC
                    # 9112 section 6.3 item 4 makes a request whose final coding is not chunked
                    # a MUST-400 ("chunked, gzip", "gzip"). 501 stays for "gzip, chunked".
                    status = 400
                elif status == 431 and b"\n" not in (self._head_window or b"\n"):
                    # Over the limit before the request line even ended: the target is what is
                    # too long (RFC 9112 section 3, 414).
                    self._refuse(414, "Request target too long")
                    return
                self._refuse(status, f"Malformed request: {exc}")
                return
            event_type = type(event)
            if event_type is h11.Data:
                # h11 hands out bytearray slices of its buffer; applications get bytes.
                self._on_body_data(bytes(event.data))  # type: ignore[union-attr]
            elif event_type is h11.Request:
                self._on_request(event)  # type: ignore[arg-type]
            elif event_type is h11.EndOfMessage:
                self._on_body_end()
                # Whatever follows is the next request: _start_next_cycle (with a new parser)
                # or the next data_received (PAUSED) takes it from here.
                return
            elif event is h11.NEED_DATA:
                cycle = self.cycle
                if (
                    cycle is not None
                    and cycle.content_length
                    and not cycle.body_complete
                    and conn.their_state is h11.SEND_BODY
                ):
                    # h11 has handed out all it buffered; the rest of the body comes directly.
                    self._direct = True
                    self._body_left = cycle.content_length - cycle.body_received
                return
            elif event is h11.PAUSED:
                # A pipelined request waits until the current response is done; stop reading
                # so it cannot pile up meanwhile.
                self._pause_reading()
                return
            elif event_type is h11.ConnectionClosed:
                if self.cycle is None or self.cycle.response_complete:
                    self._close()
                return

    def _on_request(self, request: h11.Request) -> None:
        self._cancel_timer()
        self._head_timer_armed = False
        window = self._head_window or b""
        self._head_window = None
        # The head ends at the first CRLF CRLF; if h11 found its end elsewhere (a bare LF
        # blank line), the whole window is checked and the bare LF refused.
        end = window.find(b"\r\n\r\n")
        head = bytes(window[: end + 4]) if end >= 0 else bytes(window)
        self.cycle = cycle = RequestCycle(self, request)
        refusal = check_request(cycle, head, self.state.config)
        if refusal is not None:
            self._refuse(*refusal)
            return
        if self._over_limit or self.state.shutting_down:
            self._refuse(503, "Server busy, retry later", [(b"retry-after", b"1")])
            return
        if cycle.target[:1] not in (b"/", b"*"):
            cycle.target, cycle.headers = origin_form(cycle.target, cycle.headers)
        if cycle.expects_body and not cycle.content_length:
            # A chunked body: its framing is checked on the raw bytes, from those h11 holds.
            self._chunked = ChunkedFraming()
            problem = self._chunked.feed(self.conn.trailing_data[0])
            if problem is not None:
                self._refuse(400, problem)
                return
        if cycle.expects_body:
            # The handler gets the request now and decides whether to wait for body bytes
            # (WSGI pre-buffers so a dribbling upload holds no thread; ASGI streams at once).
            cycle.expects_continue = self.conn.client_is_waiting_for_100_continue
            self._arm_timer(self.state.config.timeout_read, "request body")
            self._dispatch(cycle)
        # Without a body, h11's EndOfMessage follows at once and dispatches.

    def _on_body_data(self, data: bytes) -> None:
        cycle = self.cycle
        assert cycle is not None
        if cycle.response_complete:
            self._draining += len(data)
            if self._draining > _MAX_DRAIN:
                self._close()
            return
        limit = self.state.config.max_body_size
        if limit is not None and cycle.body_received + len(data) > limit:
            self._refuse(413, "Request body too large")
            return
        cycle._feed_body(data)
        if cycle.body_buffered >= self.state.config.body_buffer_size:
            self._pause_reading()

    def _on_body_end(self) -> None:
        cycle = self.cycle
        assert cycle is not None
        self._cancel_timer()
        if cycle.response_complete:
            self._start_next_cycle()
            return
        cycle._feed_end()
        if cycle is not self._dispatched_cycle:
            self._dispatch(cycle)

    def _dispatch(self, cycle: RequestCycle) -> None:
        self._dispatched_cycle = cycle
        try:
            self.state.handler(cycle)
        except Exception:
            error_logger.exception("Request handler failed")
            cycle.respond_error(500, "Internal Server Error")

    def _body_arriving(self) -> bool:
        return self.cycle is not None and not self.cycle.body_complete

    def body_drained(self) -> None:
        if self._reading_paused and self._body_arriving():
            self._resume_reading()
            self._arm_timer(self.state.config.timeout_read, "request body")

    def send_continue(self) -> None:
        cycle = self.cycle
        if (
            self.conn.client_is_waiting_for_100_continue
            and cycle is not None
            and not cycle.head_sent
        ):
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._reading_paused and self._body_arriving():
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
            if self._body_arriving():
                # The stall is the application's, not the client's.
                self._cancel_timer()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- writing ------------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        if self._writing_paused and not self._closed:
            self._write_waiters.append(callback)
        else:
            callback()

    def _write(self, data: bytes | None) -> None:
        if data and self.transport is not None and not self._closed:
            self.transport.write(data)

    def send_head(
        self,
        cycle: RequestCycle,
        status: int,
        headers: Headers,
        reason: bytes,
        whole_body: bytes | None = None,
    ) -> None:
        """Write the head; with `whole_body`, the body too, in one write, and finish."""
        if cycle is not self.cycle or self._closed:
            return
        try:
            head = build_head(
                status,
                reason or _REASONS.get(status, b""),
                headers,
                head_request=cycle.method == b"HEAD",
                http11=cycle.http_version == b"1.1",
                keep_alive=cycle.keep_alive and not self.state.shutting_down,
                whole_body=None if whole_body is None else len(whole_body),
                extra=self.state.default_headers,
                extra_head=self.state.default_head,
            )
        except ValueError as exc:
            error_logger.error("Response refused: %s", exc)
            cycle.head_sent = False
            self._refuse(500, "Internal Server Error")
            return
        cycle.keep_alive = head.keep_alive
        cycle.framing = head.framing
        cycle.remaining = head.length
        if whole_body is None:
            self._write(head.data)
            return
        if whole_body and head.framing != EMPTY:
            cycle.sent_bytes += len(whole_body)
            cycle.remaining = 0
            self._write(head.data + whole_body)
        else:
            self._write(head.data)
        cycle.response_complete = True
        self.finish(cycle)

    def send_body(self, cycle: RequestCycle, data: bytes) -> None:
        if cycle is not self.cycle or self._closed:
            return
        framing = cycle.framing
        if framing == LENGTH:
            if len(data) > cycle.remaining:
                excess = len(data) - cycle.remaining
                raise ValueError(f"response body exceeds its Content-Length by {excess} bytes")
            cycle.remaining -= len(data)
            self._write(data)
        elif framing == CHUNKED:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        elif framing == CLOSE:
            self._write(data)
        # EMPTY: a HEAD, 204 or 304 response; the body never reaches the wire.

    async def sendfile(self, cycle: RequestCycle, file: Any, offset: int, count: int) -> None:
        if cycle is not self.cycle or self._closed or self.transport is None:
            return
        framing = cycle.framing
        if framing == EMPTY:
            return
        if framing == LENGTH:
            count = min(count, cycle.remaining)
            cycle.remaining -= count
        if framing == CHUNKED:
            self._write(b"%x\r\n" % count)
        if loop_can_sendfile(self.loop):
            await self.loop.sendfile(self.transport, file, offset, count)
        else:
            await self._copy_file(file, offset, count)
        if framing == CHUNKED:
            self._write(b"\r\n")
        cycle.sent_bytes += count

    async def _copy_file(self, file: Any, offset: int, count: int) -> None:
        """For loops without sendfile (uvloop): read and write in blocks, waiting for drain."""
        file.seek(offset)
        while count > 0 and not self._closed:
            block = file.read(min(count, 262144))
            if not block:
                break
            count -= len(block)
            self._write(block)
            if self._writing_paused:
                drained: asyncio.Future[None] = self.loop.create_future()
                self.when_writable(functools.partial(_resolve, drained))
                await drained

    def finish(self, cycle: RequestCycle) -> None:
        if cycle is not self.cycle or self._closed:
            return
        framing = cycle.framing
        if framing == CHUNKED:
            self._write(b"0\r\n\r\n")
        elif framing == LENGTH and cycle.remaining:
            # Fewer bytes than the declared Content-Length: the client must see a broken body.
            error_logger.error(
                "Response ended %d bytes short of its Content-Length; closing", cycle.remaining
            )
            self._log_access(cycle)
            self._close()
            return
        self._log_access(cycle)
        if not cycle.keep_alive or framing == CLOSE or self.state.shutting_down:
            self._close()
        elif cycle.body_complete:
            self._start_next_cycle()
        elif self._direct or self.conn.their_state is h11.SEND_BODY:
            # The application answered without reading the whole body: read and drop the rest.
            self._draining = cycle.body_buffered
            cycle.take_body()
            self._resume_reading()
            self._arm_timer(self.state.config.timeout_read, "request body")
        else:
            self._close()

    def abort(self, cycle: RequestCycle) -> None:
        if cycle is not self.cycle:
            return
        self._log_access(cycle)
        self._close()

    def _log_access(self, cycle: RequestCycle) -> None:
        if not self.state.access_log:
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        access_logger.info(
            format_access(
                client,
                cycle.method.decode("ascii", "replace"),
                cycle.target.decode("ascii", "replace"),
                cycle.http_version.decode("ascii"),
                cycle.status,
                cycle.sent_bytes,
                time.monotonic() - cycle.started_at,
            )
        )

    def _start_next_cycle(self) -> None:
        # A fresh parser per request: h11 only ever parses here (framing.py writes responses),
        # and a new Connection costs less than keeping its server-side state machine in step.
        pipelined, closed = self.conn.trailing_data
        if self._direct:
            pipelined += self._carry
            closed = closed or self._carry_closed
            self._direct = False
            self._carry = b""
            self._carry_closed = False
        pipelined = pipelined.lstrip(b"\r\n")  # empty lines before a request line are ignored
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.state.config.max_head_size
        )
        if pipelined:
            self.conn.receive_data(pipelined)
        if closed:
            self.conn.receive_data(b"")
        self.cycle = None
        self._dispatched_cycle = None
        self._chunked = None
        self._draining = 0
        self._head_window = pipelined
        if self._head_window:
            self._head_timer_armed = True
            self._arm_timer(self.state.config.timeout_request_head, "request head")
        else:
            self._head_timer_armed = False
            self._arm_timer(self.state.config.timeout_keep_alive, "keep-alive idle")
        self._resume_reading()
        if pipelined or closed:
            self._handle_events()

    # -- refusals, timers, closing ------------------------------------------------------

    def _refuse(self, status: int, message: str, extra: Headers | None = None) -> None:
        """Answer a request that must not reach the application, then close."""
        cycle = self.cycle
        if cycle is not None and cycle.head_sent:
            self._close()
            return
        body = message.encode("utf-8", "replace") + b"\n"
        head = build_head(
            status,
            _REASONS.get(status, b""),
            [(b"content-type", b"text/plain; charset=utf-8"), *(extra or ())],
            head_request=cycle is not None and cycle.method == b"HEAD",
            http11=True,
            keep_alive=False,
            whole_body=len(body),
            extra=self.state.default_headers,
            extra_head=self.state.default_head,
        )
        self._write(head.data if head.framing == EMPTY else head.data + body)
        if cycle is not None:
            cycle.status = status
            cycle.response_complete = True
            self._log_access(cycle)
            cycle._lose()
        elif self.state.access_log:
            access_logger.info(
                "%s refused before a request line: %d %s", self.client, status, message
            )
        self._close()

    def _arm_timer(self, seconds: float, what: str) -> None:
        self._deadline = self.loop.time() + seconds
        self._deadline_for = what

    def _cancel_timer(self) -> None:
        self._deadline = 0.0

    def check_deadline(self, now: float) -> None:
        """Called by the server's periodic sweep."""
        if self._deadline and now >= self._deadline:
            self._deadline = 0.0
            self._on_timeout(self._deadline_for)

    def _on_timeout(self, what: str) -> None:
        if self._closed:
            return
        if what == "request head" and (self.cycle is None or not self.cycle.head_sent):
            error_logger.debug("%s: request head not received in time", self.client)
            self.cycle = None
            self._refuse(408, "Request head not received in time")
            return
        error_logger.debug("%s: closing, %s timed out", self.client, what)
        self._close()

    def _on_write_timeout(self) -> None:
        self._write_timer = None
        if self._writing_paused and not self._closed:
            error_logger.debug("%s: closing, the client took no bytes in time", self.client)
            self.force_close()

    def shutdown(self) -> None:
        """Graceful stop: close when idle; a request in flight finishes first."""
        if self.cycle is None or self.cycle.response_complete:
            self._close()

    def _close(self) -> None:
        if not self._closed and self.transport is not None:
            self._closed = True
            self._cancel_timer()
            self.transport.close()
            self.state.connections.discard(self)
            cycle = self.cycle
            if cycle is not None and not cycle.disconnected:
                cycle._lose()

    def force_close(self) -> None:
        if self.transport is not None:
            self._closed = True
            self.transport.abort()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def loop_can_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """uvloop's loop has `sendfile` only as AbstractEventLoop's stub, which raises."""
    return type(loop).sendfile is not asyncio.AbstractEventLoop.sendfile
