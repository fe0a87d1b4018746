"""`WebSocketProtocol`: one upgraded connection on the wire: bytes in, frames out, over wsproto.

Theory of operation. The HTTP core reads the upgrade request and, for an ASGI application,
builds this protocol and hands it the transport (`cycle.upgrade`): `connection_made`, then
`data_received` with any bytes that came after the request head. The core writes nothing;
every byte of the answer (101, refusal or denial) is written here. handshake.py checks the
opening handshake, wsproto does the framing (RFC 6455) and permessage-deflate (RFC 7692,
bounded by deflate.py), and session.py is the application's side: the scope, receive(),
send(), whole messages. phases.py holds the phases and the moves between them.

What the HTTP connection has, this uses rather than copies: its flow control (http/flow.py),
its read buffer (http/buffer.py), its refusal answer (http/framing.py) and the server's Date
and Server headers (http/state.py). Its deadlines are loop timers, not the server's sweep:
pings and closing handshakes need finer steps than the sweep's (up to a second).

The protocol stays in the server's connection registry until both the connection and the
application's task have ended, so a graceful shutdown waits for applications to finish (up to
--timeout-graceful-shutdown) and `force_close` cancels them.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

from dualgate.http.buffer import read_buffer
from dualgate.http.flow import GONE, FlowControl
from dualgate.http.grammar import Headers
from dualgate.logs import error_logger
from dualgate.ws.answer import Answer
from dualgate.ws.handshake import HandshakeRefusal, HandshakeRequest, build_scope
from dualgate.ws.phases import MOVES, Phase
from dualgate.ws.session import Session, WebSocketClosed

if TYPE_CHECKING:
    from asgiref.typing import ASGI3Application

    from dualgate.http.state import ServerState

__all__ = ["WebSocketClosed", "WebSocketProtocol"]

_HANDSHAKE, _OPEN, _DENYING, _CLOSING, _CLOSED = Phase

_FAILURE_REASONS: dict[int, str] = {
    CloseReason.MESSAGE_TOO_BIG: "message too big",
    CloseReason.INVALID_FRAME_PAYLOAD_DATA: "invalid frame payload data",
}


class WebSocketProtocol(asyncio.BufferedProtocol):
    """One upgraded connection: the handshake's answer, frames both ways, pings and closing.

    A BufferedProtocol, so that the transport, once it is set, reads straight into the loop
    thread's reused buffer (`get_buffer`, `buffer_updated`), and not an asyncio.Protocol, which
    uvloop would give a fresh object per read (under TLS, of 256 KiB: http/buffer.py); it has
    `data_received` too, for the bytes the hand-off passes on and the memory-BIO TLS's reads.
    """

    def __init__(
        self,
        request: HandshakeRequest,
        *,
        state: ServerState,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        scheme: str,
        app: ASGI3Application,
        root_path: str,
        lifespan_state: dict[str, Any] | None,
    ) -> None:
        self._request = request
        self._state = state
        self._config = config = state.config
        self._client = client
        self._answer = Answer(request, state, client)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport
        self._flow: FlowControl
        self.phase = _HANDSHAKE
        # The scope waits only for the subprotocols the handshake brings (connection_made).
        self._scope_for = functools.partial(
            build_scope,
            request,
            client=client,
            server=server,
            scheme=scheme,
            root_path=root_path,
            state=lifespan_state,
        )
        self._session = Session(self, app, config)
        self._conn: Connection | None = None  # wsproto, once open
        self._early = bytearray()  # bytes that came before the 101
        self._lost = False
        self._failed = False
        self._deadline: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._pings = 0

    def _move(self, phase: Phase) -> None:
        assert phase in MOVES[self.phase], f"{self.phase} -> {phase}"
        self.phase = phase

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = transport = cast(asyncio.Transport, transport)
        config = self._config
        self._flow = FlowControl(
            transport, self._loop, config.ws_write_timeout, self._on_write_timeout
        )
        self._state.connections.add(self)
        handshake = self._answer.check()
        if isinstance(handshake, HandshakeRefusal):
            self.refuse(handshake.status, handshake.reason, headers=handshake.headers)
            return
        self._session.start(self._scope_for(subprotocols=handshake.subprotocols))
        self._arm_deadline(config.ws_handshake_timeout, self._on_handshake_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        # A view, not a copy: every byte is copied out at once (into wsproto, or the early
        # bytes), before the buffer is read into again.
        self._received(read_buffer()[:nbytes])

    def data_received(self, data: bytes) -> None:
        """The bytes the HTTP core read after the upgrade request (the hand-off's leftover)."""
        self._received(data)

    def _received(self, data: bytes | memoryview) -> None:
        phase = self.phase
        if phase is _OPEN or (phase is _CLOSING and not self._failed):
            self._feed(data)
        elif phase is _HANDSHAKE:
            # Served once accepted (phases.py); reading pauses, so this is one read at most.
            self._early += data
            self._flow.pause_reading()
        # Otherwise (denying, failed, closed): nothing more is parsed; the bytes are dropped.

    def eof_received(self) -> bool:
        # A peer that half-closes has nothing more to say: close, unless a denial response is
        # still going out to it.
        return self.phase is _DENYING

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._move(_CLOSED)
        for timer in (self._deadline, self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._deadline = self._ping_timer = self._pong_timer = None
        self._session.disconnected(1006, "")
        self._flow.connection_lost()
        self._transport = GONE  # not kept in this connection's cycles (http/flow.py says why)
        self._unregister_when_done()

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # -- the server's connection registry (http/state.py's Connection) ---------------------

    def shutdown(self) -> None:
        """Graceful stop: close with 1012 (service restart) and let the application finish."""
        if self.phase is _HANDSHAKE:
            self.refuse(503, "Server shutting down", retry_after=True)
        elif self.phase is _OPEN:
            self.begin_close(1012, "server shutting down")

    def force_close(self) -> None:
        if not self._lost:
            self._transport.abort()
        self._session.cancel()
        self._state.connections.discard(self)

    def check_deadline(self, now: float) -> None:
        """The server's sweep: nothing to do, every deadline here is a loop timer."""

    # -- the session's wire (session.py's Wire) -------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self._flow.writing_paused

    async def drained(self) -> None:
        """Wait until the transport takes bytes again; WebSocketClosed if the peer left."""
        await self._flow.drained()
        if self._lost:
            raise WebSocketClosed("the client went away")

    def pause_reading(self) -> None:
        self._flow.pause_reading()

    def resume_reading(self) -> None:
        self._flow.resume_reading()

    def accept(self, subprotocol: str | None, headers: Headers) -> None:
        """The 101, then the bytes that came early are parsed."""
        data, self._conn = self._answer.accept(subprotocol, headers)
        self._move(_OPEN)
        self._cancel_deadline()
        self._write(data)
        if self._config.ws_ping_interval:
            self._ping_timer = self._loop.call_later(self._config.ws_ping_interval, self._ping)
        early, self._early = self._early, bytearray()
        self._flow.resume_reading()
        if early:
            self._feed(bytes(early))

    def deny(self, status: int, headers: Headers) -> None:
        """The WebSocket Denial Response extension: an HTTP response instead of the 101."""
        data = self._answer.deny(status, headers)
        self._move(_DENYING)
        self._cancel_deadline()
        self._early = bytearray()
        self._write(data)

    def deny_body(self, body: bytes, more: bool) -> None:
        self._write(self._answer.deny_body(body, more))
        if not more:
            self._close_transport()

    def refuse(
        self,
        status: int,
        reason: str,
        *,
        retry_after: bool = False,
        headers: Headers | None = None,
    ) -> None:
        """A short plain-text HTTP answer instead of the 101, then close."""
        if self.phase is not _HANDSHAKE:
            return
        self._early = bytearray()
        self._write(self._answer.refuse(status, reason, retry_after=retry_after, headers=headers))
        self._close_transport()

    def send_data(self, data: str | bytes) -> None:
        assert self._conn is not None
        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        self._write(self._conn.send(event))

    def begin_close(self, code: int, reason: str) -> None:
        """Send a Close frame and wait (bounded) for the peer's."""
        conn = self._conn
        if self.phase is not _OPEN or conn is None:
            return
        self._write(conn.send(CloseConnection(code=code, reason=reason or None)))
        self._enter_closing()

    def fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket Connection (RFC 6455 7.1.7): a Close frame with `code`, then close.

        The write side is shut after the frame and whatever the peer still sends is read and
        dropped until it closes, so the peer sees the Close frame instead of a reset.
        """
        conn = self._conn
        assert conn is not None
        self._failed = True
        self._session.disconnected(int(code), reason)
        if conn.state is ConnectionState.OPEN:
            self._write(conn.send(CloseConnection(code=code, reason=reason or None)))
        self._enter_closing()
        self._flow.resume_reading()
        if not self._lost and self._transport.can_write_eof():
            self._transport.write_eof()

    def abort(self) -> None:
        self._close_transport(abort=True)

    def app_done(self) -> None:
        self._unregister_when_done()

    # -- frames in ------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        conn = self._conn
        assert conn is not None
        # wsproto only appends what it is given to a bytearray, so a view of the read buffer
        # spares a copy (its annotation says bytes).
        conn.receive_data(cast("bytes", data))
        for event in conn.events():
            match event:
                case TextMessage() | BytesMessage():
                    if self.phase is _OPEN:
                        self._session.data(event.data, event.message_finished)
                case Ping():
                    if conn.state is ConnectionState.OPEN:
                        self._write(conn.send(event.response()))
                case Pong():
                    if self._pong_timer is not None:
                        self._pong_timer.cancel()
                        self._pong_timer = None
                case CloseConnection():
                    self._on_close(conn, event)
            if (self.phase is not _OPEN and self.phase is not _CLOSING) or self._failed:
                return

    def _on_close(self, conn: Connection, event: CloseConnection) -> None:
        state = conn.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer starts the closing handshake: answer with its code, then close TCP.
            self._session.disconnected(int(event.code), event.reason or "")
            self._write(conn.send(event.response()))
            self._close_transport()
        elif state is ConnectionState.CLOSED:
            # The peer's answer to our Close.
            self._session.disconnected(int(event.code), event.reason or "")
            self._close_transport()
        elif state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot accept as a CloseConnection with the code to
            # fail with, leaving the state as it was.
            self.fail(event.code, _FAILURE_REASONS.get(event.code, event.reason or ""))
        else:
            # Invalid bytes after our own Close: the closing handshake is over.
            self._close_transport()

    # -- deadlines: the application's answer, the closing handshake, pings, writes ----------

    def _on_handshake_timeout(self) -> None:
        self._deadline = None
        error_logger.error(
            "ASGI application did not accept or deny the WebSocket %s within %gs",
            self._request.target.decode("ascii", "replace"),
            self._config.ws_handshake_timeout,
        )
        self.refuse(500, "Internal Server Error")

    def _enter_closing(self) -> None:
        self._move(_CLOSING)
        self._session.drop_partial()
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
        self._arm_deadline(self._config.ws_handshake_timeout, self._on_close_timeout)

    def _on_close_timeout(self) -> None:
        self._deadline = None
        error_logger.debug("%s: WebSocket closing handshake timed out", self._client)
        self.abort()

    def _ping(self) -> None:
        self._ping_timer = None
        conn = self._conn
        if self.phase is not _OPEN or conn is None:
            return
        self._pings += 1
        self._write(conn.send(Ping(payload=struct.pack("!I", self._pings))))
        timeout = self._config.ws_ping_timeout
        if timeout and self._pong_timer is None:
            self._pong_timer = self._loop.call_later(timeout, self._on_pong_timeout)
        self._ping_timer = self._loop.call_later(self._config.ws_ping_interval, self._ping)

    def _on_pong_timeout(self) -> None:
        self._pong_timer = None
        if self.phase is _OPEN:
            error_logger.debug("%s: WebSocket ping not answered in time", self._client)
            self.fail(CloseReason.INTERNAL_ERROR, "keepalive ping timeout")

    def _on_write_timeout(self) -> None:
        # A peer that stops reading must not hold the application (or memory) forever.
        if not self._lost:
            error_logger.debug("%s: WebSocket peer took no bytes in time; dropped", self._client)
            self.abort()

    # -- plumbing ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if data and self.phase is not _CLOSED:
            self._transport.write(data)

    def _arm_deadline(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self._loop.call_later(seconds, callback)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close_transport(self, abort: bool = False) -> None:
        self._move(_CLOSED)
        self._cancel_deadline()
        if not self._lost:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()

    def _unregister_when_done(self) -> None:
        if self._lost and not self._session.running:
            self._state.connections.discard(self)
