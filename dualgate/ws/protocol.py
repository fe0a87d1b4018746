"""WebSockets for ASGI applications: one `WebSocketProtocol` per upgraded connection, over wsproto.

Theory of operation
-------------------
The HTTP core reads the upgrade request and, for an ASGI application, builds this protocol and
hands it the transport (`cycle.upgrade`): `connection_made`, then `data_received` with any bytes
that came after the request head. The core writes nothing; every byte of the answer (101,
refusal or denial) is written here. wsproto does the framing (RFC 6455) and permessage-deflate
(RFC 7692); ws_handshake.py checks the opening handshake and builds the scope.

A connection is in one phase at a time:

  HANDSHAKE  the application has been called and has websocket.connect; it has not answered.
             Reading is paused, and bytes that came early wait for the 101.
  OPEN       after websocket.accept: frames both ways. Incoming messages queue for receive();
             reading pauses while the queue is full (--ws-max-queue messages or
             --body-buffer-size bytes). send() waits while the transport is paused.
  DENYING    the application answered with a denial response (websocket.http.response.*)
             whose body is still being written.
  CLOSING    a Close frame went out (the application's websocket.close, its error or return,
             a graceful shutdown, or a failure: a protocol error, a message too big, a ping
             not answered). Normally the peer's Close is awaited; after a failure the write
             side is shut and incoming bytes are dropped until the peer closes, so the peer
             reads the Close frame instead of a reset. Either way at most
             --ws-handshake-timeout, then the transport is aborted.
  CLOSED     the TCP connection is closed or closing: nothing more is read or written.

  HANDSHAKE -> OPEN     websocket.accept: the 101 goes out, then the early bytes are parsed
  HANDSHAKE -> DENYING  websocket.http.response.start
  HANDSHAKE -> CLOSED   websocket.close (403), an application error or return (500), the
                        handshake deadline (500), a graceful shutdown (503), the peer leaving
  DENYING   -> CLOSED   the denial body complete (or the application failing: abort)
  OPEN      -> CLOSING  as listed under CLOSING
  OPEN      -> CLOSED   the peer's Close answered (the server closes TCP first, RFC 6455 7.1.1),
                        or the peer gone
  CLOSING   -> CLOSED   the peer's Close or EOF, or the deadline

The application hears `websocket.disconnect` once the connection is closed, after every message
queued before it: with the peer's code and reason, the failure's code, or 1006 when the TCP
connection ended without a Close. The protocol stays in the server's connection registry until
both the connection and the application task have ended, so a graceful shutdown waits for
applications to finish (up to --timeout-graceful-shutdown) and `force_close` cancels them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, MutableSet
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal, cast

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason

from dualgate.logs import access_logger, error_logger, log_access
from dualgate.ws.deflate import BoundedDeflate
from dualgate.ws.handshake import (
    Handshake,
    HandshakeRequest,
    Refusal,
    build_scope,
    check_handshake,
)

if TYPE_CHECKING:
    from asgiref.typing import ASGI3Application, WebSocketScope

    from dualgate.config import Config
    from dualgate.metrics.counters import Metrics

__all__ = ["WebSocketClosed", "WebSocketProtocol"]

Headers = list[tuple[bytes, bytes]]
Message = dict[str, Any]
Phase = Literal["handshake", "open", "denying", "closing", "closed"]

# RFC 6455 section 7.4: codes an endpoint may send in a Close frame, with 1012 (service restart)
# and 1013 (try again later) registered with IANA since; 1004-1006 and 1015 are reserved, and
# peers (wsproto among them) refuse the rest below 3000.
_SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1014)})
_FAILURE_REASONS: dict[int, str] = {
    CloseReason.MESSAGE_TOO_BIG: "message too big",
    CloseReason.INVALID_FRAME_PAYLOAD_DATA: "invalid frame payload data",
}


_READ_SIZE = 256 * 1024
_reads = threading.local()


class WebSocketClosed(OSError):
    """send() on a WebSocket that is closed (the ASGI spec asks for an OSError subclass)."""


class WebSocketProtocol(asyncio.BufferedProtocol, asyncio.Protocol):
    """One upgraded connection: the handshake answer, frames, and the application's task.

    An asyncio.Protocol for the hand-off (which passes the bytes read after the request head to
    `data_received`), and a BufferedProtocol so that the transport, once it is set, reads
    straight into a reused buffer (`get_buffer`, `buffer_updated`).
    """

    def __init__(
        self,
        request: HandshakeRequest,
        *,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        scheme: str,
        app: ASGI3Application,
        root_path: str,
        state: dict[str, Any] | None,
        config: Config,
        connections: MutableSet[Any],
        metrics: Metrics | None = None,
    ) -> None:
        self._request = request
        self._client = client
        self._server = server
        self._scheme = scheme
        self._app = app
        self._root_path = root_path
        self._lifespan_state = state
        self._config = config
        self._connections = connections
        self._metrics = metrics  # only while metrics are on
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._phase: Phase = "handshake"
        self._handshake: Handshake | None = None
        self._ws: WSConnection | None = None  # wsproto, for the handshake answer
        self._conn: Connection | None = None  # wsproto, once open
        self._early: bytearray | None = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._task_done = False
        self._lost = False
        self._failed = False
        self._connect_sent = False
        # Incoming: the message being assembled, and complete ones with their sizes.
        self._parts: list[Any] = []
        self._part_size = 0
        self._inbox: deque[tuple[Message, int]] = deque()
        self._inbox_bytes = 0
        self._disconnect: Message | None = None
        self._wake: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._pings = 0
        self._started = time.monotonic()
        self._status = 0
        self._sent = 0

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(self)
        result = check_handshake(self._request, deflate=self._config.ws_per_message_deflate)
        if isinstance(result, Refusal):
            self._respond(result.status, result.reason, result.headers)
            return
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(_wsproto_headers(result), self._request.target)
            next(ws.events())
        except Exception:  # wsproto refused what the checks let through: still the client's fault
            self._respond(400, "Malformed WebSocket handshake")
            return
        self._handshake = result
        self._ws = ws
        scope = build_scope(
            self._request,
            client=self._client,
            server=self._server,
            scheme=self._scheme,
            root_path=self._root_path,
            state=self._lifespan_state,
            subprotocols=result.subprotocols,
        )
        self._task = self._loop.create_task(self._run(scope))
        self._arm_deadline(self._config.ws_handshake_timeout, self._on_handshake_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        # One read buffer per loop thread, reused: every byte read is copied out (into wsproto,
        # or the early bytes) before the next read. The fresh 256 KiB object per read that
        # data_received is given page-faults anew each time: uploads ran at half the speed.
        view: memoryview | None = getattr(_reads, "view", None)
        if view is None:
            view = _reads.view = memoryview(bytearray(_READ_SIZE))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self._received(_reads.view[:nbytes])

    def data_received(self, data: bytes) -> None:
        """The bytes the HTTP core read after the upgrade request (the hand-off's leftover)."""
        self._received(data)

    def _received(self, data: bytes | memoryview) -> None:
        phase = self._phase
        if phase == "open" or (phase == "closing" and not self._failed):
            self._feed(data)
        elif phase == "handshake" and self._early is not None:
            # RFC 6455 4.1: a client waits for the 101 before sending frames; one that does not
            # is served anyway, once accepted. Reading pauses, so this is one read at most.
            self._early += data
            self._pause_reading()
        # Otherwise (denying, failed, closed): nothing more is parsed; the bytes are dropped.

    def eof_received(self) -> bool:
        # A peer that half-closes has nothing more to say: close, unless a denial response is
        # still going out to it.
        return self._phase == "denying"

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._phase = "closed"
        for timer in (self._deadline, self._ping_timer, self._pong_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._deadline = self._ping_timer = self._pong_timer = self._write_timer = None
        self._set_disconnect(1006, "")
        self._resolve_drain()
        self._unregister_when_done()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._write_timer is not None:
            self._write_timer.cancel()
        # A peer that stops reading must not hold the application (or memory) forever.
        self._write_timer = self._loop.call_later(
            self._config.ws_write_timeout, self._on_write_timeout
        )

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._resolve_drain()

    # -- the server's connection registry -------------------------------------------------

    def shutdown(self) -> None:
        """Graceful stop: close with 1012 (service restart) and let the application finish."""
        if self._phase == "handshake":
            self._respond(503, "Server shutting down", [(b"retry-after", b"1")])
        elif self._phase == "open":
            self._begin_close(1012, "server shutting down")

    def force_close(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._connections.discard(self)

    def check_deadline(self, now: float) -> None:
        """The server's sweep: nothing to do, every deadline here is a loop timer.

        Ping intervals and close deadlines need finer steps than the sweep's (up to a second).
        """

    # -- the application ------------------------------------------------------------------

    async def _run(self, scope: WebSocketScope) -> None:
        failed = False
        try:
            await self._app(scope, self.receive, self.send)  # type: ignore[arg-type]
        except WebSocketClosed:
            pass  # raised by send() after the peer left: not the application's error
        except Exception:
            failed = True
            error_logger.exception("Exception in ASGI WebSocket application %s", scope["path"])
        finally:
            self._task_done = True
        self._after_app(failed)
        self._unregister_when_done()

    def _after_app(self, failed: bool) -> None:
        phase = self._phase
        if phase == "handshake":
            if not failed:
                error_logger.error("ASGI application returned without accepting the WebSocket")
            self._respond(500, "Internal Server Error")
        elif phase == "denying":
            if not failed:
                error_logger.error("ASGI application returned before its denial response ended")
            self._abort()
        elif phase == "open":
            # An error after the 101 is a Close with 1011 (internal error); a return, 1000.
            self._begin_close(1011 if failed else 1000, "")

    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            if self._inbox:
                message, size = self._inbox.popleft()
                self._inbox_bytes -= size
                if self._reading_paused and self._phase == "open" and not self._inbox_full():
                    self._resume_reading()
                return message
            if self._disconnect is not None:
                return dict(self._disconnect)
            if self._wake is None:
                self._wake = self._loop.create_future()
            await self._wake

    async def send(self, message: Message) -> None:
        kind = message["type"]
        phase = self._phase
        if phase == "open":
            if kind == "websocket.send":
                await self._send_message(message)
            elif kind == "websocket.close":
                self._begin_close(*_close_arguments(message))
            else:
                raise RuntimeError(f"expected 'websocket.send' or 'websocket.close', got {kind!r}")
        elif phase == "handshake":
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                # ASGI spec: a close before the accept is an HTTP 403.
                self._respond(403, "")
            elif kind == "websocket.http.response.start":
                self._start_denial(message)
            else:
                raise RuntimeError(
                    "expected 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', got {kind!r}"
                )
        elif phase == "denying":
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"expected 'websocket.http.response.body', got {kind!r}")
            await self._send_denial_body(message)
        else:
            raise WebSocketClosed(f"{kind!r} sent on a closed WebSocket")

    async def _send_message(self, message: Message) -> None:
        assert self._conn is not None
        text, data = message.get("text"), message.get("bytes")
        if text is not None and data is None:
            if not isinstance(text, str):
                raise TypeError(f"websocket.send 'text' must be str, not {type(text).__name__}")
            self._write(self._conn.send(TextMessage(data=text)))
        elif data is not None and text is None:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"websocket.send 'bytes' must be bytes, not {type(data).__name__}")
            self._write(self._conn.send(BytesMessage(data=bytes(data))))
        else:
            raise ValueError("websocket.send needs exactly one of 'bytes' and 'text'")
        if self._writing_paused:
            await self._drained()

    async def _drained(self) -> None:
        if self._drain is None:
            self._drain = self._loop.create_future()
        await self._drain
        if self._lost:
            raise WebSocketClosed("the client went away")

    def _resolve_drain(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the opening handshake --------------------------------------------------------------

    def _accept(self, message: Message) -> None:
        assert self._ws is not None and self._handshake is not None
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in self._handshake.subprotocols:
            raise ValueError(
                f"websocket.accept subprotocol {subprotocol!r} was not offered by the client "
                f"(offered: {self._handshake.subprotocols})"
            )
        headers = _app_headers(message.get("headers", ()))
        if any(name.lower() == b"sec-websocket-protocol" for name, _ in headers):
            raise ValueError("websocket.accept headers must not set sec-websocket-protocol")
        extensions: list[Extension] = []
        if self._handshake.deflate_offer is not None:
            extensions.append(BoundedDeflate(self._config.ws_max_size))
        data = self._ws.send(
            AcceptConnection(
                subprotocol=subprotocol,
                extensions=extensions,
                extra_headers=headers + self._default_headers(),
            )
        )
        self._conn = self._ws.connection
        self._phase = "open"
        self._cancel_deadline()
        self._status = 101
        self._answered()
        self._write(data)
        if self._config.ws_ping_interval:
            self._ping_timer = self._loop.call_later(self._config.ws_ping_interval, self._ping)
        early, self._early = self._early, None
        self._resume_reading()
        if early:
            self._feed(bytes(early))

    def _start_denial(self, message: Message) -> None:
        """The WebSocket Denial Response extension: an HTTP response instead of the 101."""
        assert self._ws is not None
        status = message.get("status")
        if type(status) is not int:
            raise ValueError(f"websocket.http.response.start 'status' must be an int: {status!r}")
        headers = _app_headers(message.get("headers", ()))
        data = self._ws.send(
            RejectConnection(
                status_code=status,
                headers=[*headers, *self._default_headers(), (b"connection", b"close")],
                has_body=True,
            )
        )
        self._phase = "denying"
        self._cancel_deadline()
        self._status = status
        self._early = None
        self._write(data)

    async def _send_denial_body(self, message: Message) -> None:
        assert self._ws is not None
        body = message.get("body", b"")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(
                f"websocket.http.response.body 'body' must be bytes, not {type(body).__name__}"
            )
        more = bool(message.get("more_body", False))
        self._sent += len(body)
        self._write(self._ws.send(RejectData(data=bytes(body), body_finished=not more)))
        if not more:
            self._answered()
            self._close_transport()
        elif self._writing_paused:
            await self._drained()

    def _respond(self, status: int, reason: str, headers: Headers | None = None) -> None:
        """A short plain-text HTTP answer instead of the 101, then close."""
        if self._phase != "handshake":
            return
        body = (reason + "\n").encode("utf-8") if reason else b""
        head = [
            b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode("ascii")),
            *(name + b": " + value for name, value in self._default_headers()),
            *(name + b": " + value for name, value in headers or ()),
            b"content-type: text/plain; charset=utf-8",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        self._phase = "closed"
        self._cancel_deadline()
        self._early = None
        self._status = status
        self._sent = len(body)
        self._answered()
        if self._transport is not None and not self._lost:
            self._transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self._close_transport()

    def _on_handshake_timeout(self) -> None:
        self._deadline = None
        error_logger.error(
            "ASGI application did not accept or deny the WebSocket %s within %gs",
            self._request.target.decode("ascii", "replace"),
            self._config.ws_handshake_timeout,
        )
        self._respond(500, "Internal Server Error")

    def _default_headers(self) -> Headers:
        headers: Headers = []
        if self._config.server_header:
            headers.append((b"server", b"dualgate"))
        if self._config.date_header:
            headers.append((b"date", formatdate(usegmt=True).encode("ascii")))
        return headers

    def _answered(self) -> None:
        """The handshake has its answer (101, a denial or a refusal): log and count it."""
        if self._metrics is not None:
            self._metrics.response("websocket", self._status, time.monotonic() - self._started)
        self._log_access()

    def _log_access(self) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        log_access(
            self._client,
            b"GET",
            self._request.target,
            self._request.http_version,
            self._status,
            self._sent,
            self._started,
            self._request.headers,
        )

    # -- frames in ------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        conn = self._conn
        assert conn is not None
        # wsproto only appends what it is given to a bytearray, so a view of the read buffer
        # spares a copy (its annotation says bytes).
        conn.receive_data(cast("bytes", data))
        for event in conn.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                if self._phase == "open":
                    self._on_data(event)  # type: ignore[arg-type]
            elif kind is Ping:
                if conn.state is ConnectionState.OPEN:
                    self._write(conn.send(event.response()))  # type: ignore[attr-defined]
            elif kind is Pong:
                if self._pong_timer is not None:
                    self._pong_timer.cancel()
                    self._pong_timer = None
            elif kind is CloseConnection:
                self._on_close(event)  # type: ignore[arg-type]
            if self._phase not in ("open", "closing") or self._failed:
                return

    def _on_data(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        if type(data) is str:
            # str.isascii() is O(1) in CPython; otherwise the UTF-8 size is what the limit is on.
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
        total = self._part_size + size
        if total > self._config.ws_max_size:
            self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
            return
        if not event.message_finished:
            self._parts.append(data)
            self._part_size = total
            return
        if self._parts:
            self._parts.append(data)
            data = "".join(self._parts) if type(data) is str else b"".join(self._parts)
            self._parts = []
            self._part_size = 0
        message: Message
        if isinstance(data, str):
            message = {"type": "websocket.receive", "text": data}
        else:
            message = {"type": "websocket.receive", "bytes": bytes(data)}
        self._inbox.append((message, total))
        self._inbox_bytes += total
        self._wake_receiver()
        if self._inbox_full():
            self._pause_reading()

    def _inbox_full(self) -> bool:
        return (
            len(self._inbox) >= self._config.ws_max_queue
            or self._inbox_bytes >= self._config.body_buffer_size
        )

    def _on_close(self, event: CloseConnection) -> None:
        assert self._conn is not None
        state = self._conn.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer starts the closing handshake: answer with its code, then close TCP.
            self._set_disconnect(int(event.code), event.reason or "")
            self._write(self._conn.send(event.response()))
            self._close_transport()
        elif state is ConnectionState.CLOSED:
            # The peer's answer to our Close.
            self._set_disconnect(int(event.code), event.reason or "")
            self._close_transport()
        elif state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot accept as a CloseConnection with the code to
            # fail with, leaving the state as it was.
            self._fail(event.code, _FAILURE_REASONS.get(event.code, event.reason or ""))
        else:
            # Invalid bytes after our own Close: the closing handshake is over.
            self._close_transport()

    # -- closing ----------------------------------------------------------------------------

    def _begin_close(self, code: int, reason: str) -> None:
        """Send a Close frame and wait (bounded) for the peer's."""
        conn = self._conn
        if self._phase != "open" or conn is None:
            return
        self._write(conn.send(CloseConnection(code=code, reason=reason or None)))
        self._enter_closing()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket Connection (RFC 6455 7.1.7): a Close frame with `code`, then close.

        The write side is shut after the frame and whatever the peer still sends is read and
        dropped until it closes, so the peer sees the Close frame instead of a reset.
        """
        conn = self._conn
        assert conn is not None
        self._failed = True
        self._set_disconnect(code, reason)
        if conn.state is ConnectionState.OPEN:
            self._write(conn.send(CloseConnection(code=code, reason=reason or None)))
        self._enter_closing()
        self._resume_reading()
        transport = self._transport
        if transport is not None and not self._lost and transport.can_write_eof():
            transport.write_eof()

    def _enter_closing(self) -> None:
        self._phase = "closing"
        self._parts = []
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
        self._arm_deadline(self._config.ws_handshake_timeout, self._on_close_timeout)

    def _on_close_timeout(self) -> None:
        self._deadline = None
        error_logger.debug("%s: WebSocket closing handshake timed out", self._client)
        self._abort()

    def _ping(self) -> None:
        self._ping_timer = None
        conn = self._conn
        if self._phase != "open" or conn is None:
            return
        self._pings += 1
        self._write(conn.send(Ping(payload=struct.pack("!I", self._pings))))
        timeout = self._config.ws_ping_timeout
        if timeout and self._pong_timer is None:
            self._pong_timer = self._loop.call_later(timeout, self._on_pong_timeout)
        self._ping_timer = self._loop.call_later(self._config.ws_ping_interval, self._ping)

    def _on_pong_timeout(self) -> None:
        self._pong_timer = None
        if self._phase == "open":
            error_logger.debug("%s: WebSocket ping not answered in time", self._client)
            self._fail(CloseReason.INTERNAL_ERROR, "keepalive ping timeout")

    def _on_write_timeout(self) -> None:
        self._write_timer = None
        if self._writing_paused and not self._lost:
            error_logger.debug("%s: WebSocket peer took no bytes in time; dropped", self._client)
            self._abort()

    # -- plumbing ---------------------------------------------------------------------------

    def _set_disconnect(self, code: int, reason: str) -> None:
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._wake_receiver()

    def _wake_receiver(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._lost and self._phase != "closed":
            self._transport.write(data)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = False
            self._transport.resume_reading()

    def _arm_deadline(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self._loop.call_later(seconds, callback)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close_transport(self) -> None:
        self._phase = "closed"
        self._cancel_deadline()
        if self._transport is not None and not self._lost:
            self._transport.close()

    def _abort(self) -> None:
        self._phase = "closed"
        self._cancel_deadline()
        if self._transport is not None and not self._lost:
            self._transport.abort()

    def _unregister_when_done(self) -> None:
        if self._lost and (self._task is None or self._task_done):
            self._connections.discard(self)


def _wsproto_headers(handshake: Handshake) -> Headers:
    """The request as wsproto is to see it: checked already, so only what it needs, canonical.

    The Host is a placeholder: wsproto decodes it with the idna codec, which refuses some valid
    host names (a label over 63 characters), and never uses it on the server side.
    """
    headers: Headers = [
        (b"host", b"localhost"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", handshake.key),
        (b"sec-websocket-version", b"13"),
    ]
    if handshake.subprotocols:
        headers.append((b"sec-websocket-protocol", ", ".join(handshake.subprotocols).encode()))
    if handshake.deflate_offer is not None:
        headers.append((b"sec-websocket-extensions", handshake.deflate_offer.encode("ascii")))
    return headers


def _app_headers(raw: Any) -> Headers:
    headers = []
    for name, value in raw:
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError(f"ASGI header names and values must be bytes: {(name, value)!r}")
        headers.append((name, value))
    return headers


def _close_arguments(message: Message) -> tuple[int, str]:
    code = message.get("code", 1000)
    if code is None:
        code = 1000
    if type(code) is not int or not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
        raise ValueError(f"websocket.close 'code' {code!r} is not a code a server may send")
    reason = message.get("reason") or ""
    if not isinstance(reason, str):
        raise TypeError(f"websocket.close 'reason' must be str, not {type(reason).__name__}")
    return code, reason
