"""The application's side of one WebSocket: its scope and task, receive() and send().

Rules of this file:
- No bytes, no frames, no wsproto: those are protocol.py's. A session is handed the payload of
  each data frame (str for text, bytes for binary, and whether the message ends with it) and
  asks its `Wire` to answer the handshake, send, close or fail.
- Fragments are joined here into whole messages, within --ws-max-size (over it: 1009). Whole
  messages queue for receive(); reading pauses while the queue holds --ws-max-queue messages or
  --body-buffer-size bytes, and resumes as receive() takes them.
- send() checks each message against the phase and the ASGI spec, and raises naming what was
  expected; once the connection is closing or closed it raises `WebSocketClosed`, an OSError
  (spec 2.4). send() of a message waits while the transport is paused.
- receive() says `websocket.disconnect` after every message queued before it: with the peer's
  code and reason, the failure's code, or 1006 when the TCP connection ended without a Close.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast

from dualgate.http.flow import SENDS_PER_TURN
from dualgate.http.grammar import Headers, asgi_headers
from dualgate.logs import error_logger
from dualgate.ws.phases import Phase

if TYPE_CHECKING:
    from asgiref.typing import (
        ASGI3Application,
        ASGISendEvent,
        WebSocketAcceptEvent,
        WebSocketCloseEvent,
        WebSocketConnectEvent,
        WebSocketDisconnectEvent,
        WebSocketReceiveEvent,
        WebSocketResponseBodyEvent,
        WebSocketResponseStartEvent,
        WebSocketScope,
        WebSocketSendEvent,
    )

    from dualgate.config import Config

__all__ = ["Session", "WebSocketClosed", "Wire"]

_HANDSHAKE, _OPEN, _DENYING, _CLOSING, _CLOSED = Phase

MESSAGE_TOO_BIG = 1009  # RFC 6455 section 7.4.1
# RFC 6455 section 7.4: codes an endpoint may send in a Close frame, with 1012 (service restart)
# and 1013 (try again later) registered with IANA since; 1004-1006 and 1015 are reserved, and
# peers (wsproto among them) refuse the rest below 3000.
_SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1014)})


class WebSocketClosed(OSError):
    """send() on a WebSocket that is closed (the ASGI spec asks for an OSError subclass)."""


class Wire(Protocol):
    """What a session needs of its connection (protocol.py's WebSocketProtocol)."""

    phase: Phase

    @property
    def writing_paused(self) -> bool: ...
    async def drained(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def accept(self, subprotocol: str | None, headers: Headers) -> None: ...
    def deny(self, status: int, headers: Headers) -> None: ...
    def deny_body(self, body: bytes, more: bool) -> None: ...
    def refuse(self, status: int, reason: str) -> None: ...
    def send_data(self, data: str | bytes) -> None: ...
    def begin_close(self, code: int, reason: str) -> None: ...
    def fail(self, code: int, reason: str) -> None: ...
    def abort(self) -> None: ...
    def app_done(self) -> None: ...


class Session:
    """One WebSocket as its ASGI application sees it."""

    def __init__(self, wire: Wire, app: ASGI3Application, config: Config) -> None:
        self._wire = wire
        self._app = app
        self._max_size = config.ws_max_size
        self._max_queue = config.ws_max_queue
        self._max_queued_bytes = config.body_buffer_size
        self._loop = asyncio.get_running_loop()
        self._subprotocols: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.running = False  # the application's task has started and not ended
        self._connect_sent = False
        self._unyielded = 0  # sends since the app's task last gave the loop a turn
        # Incoming: the message being assembled (one of the two lists), and complete ones with
        # their sizes.
        self._text: list[str] = []
        self._binary: list[bytes | bytearray] = []
        self._part_size = 0
        self._inbox: deque[tuple[WebSocketReceiveEvent, int]] = deque()
        self._inbox_bytes = 0
        self._disconnect: WebSocketDisconnectEvent | None = None
        self._wake: asyncio.Future[None] | None = None

    # -- from the wire --------------------------------------------------------------------

    def start(self, scope: WebSocketScope) -> None:
        """The handshake is valid: call the application with `scope` (its subprotocols are the
        ones the client offered), and it hears websocket.connect."""
        self._subprotocols = list(scope["subprotocols"])
        self.running = True
        self._task = self._loop.create_task(self._run(scope))

    def data(self, data: str | bytes | bytearray, finished: bool) -> None:
        """One data frame's payload; the message ends with it or goes on in the next."""
        if isinstance(data, str):
            # str.isascii() is O(1) in CPython; otherwise the UTF-8 size is what the limit is on.
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
        total = self._part_size + size
        if total > self._max_size:
            self._wire.fail(MESSAGE_TOO_BIG, "message too big")
            return
        if not finished:
            if isinstance(data, str):
                self._text.append(data)
            else:
                self._binary.append(data)
            self._part_size = total
            return
        self._part_size = 0
        if isinstance(data, str):
            if self._text:
                self._text.append(data)
                data = "".join(self._text)
                self._text = []
            message = _received_message("text", data)
        else:
            if self._binary:
                self._binary.append(data)
                data = b"".join(self._binary)
                self._binary = []
            message = _received_message("bytes", bytes(data))
        self._inbox.append((message, total))
        self._inbox_bytes += total
        self._wake_receiver()
        if self._inbox_full():
            self._wire.pause_reading()

    def drop_partial(self) -> None:
        """Closing: a message still being assembled will never be delivered."""
        self._text = []
        self._binary = []
        self._part_size = 0

    def disconnected(self, code: int, reason: str) -> None:
        """How the connection ended, as receive() will say it (the first account stands)."""
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._wake_receiver()

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- the application ------------------------------------------------------------------

    async def _run(self, scope: WebSocketScope) -> None:
        failed = False
        try:
            await self._app(scope, self.receive, self.send)
        except WebSocketClosed:
            pass  # raised by send() after the peer left: not the application's error
        except Exception:
            failed = True
            error_logger.exception("Exception in ASGI WebSocket application %s", scope["path"])
        finally:
            self.running = False
        self._after_app(failed)
        self._wire.app_done()

    def _after_app(self, failed: bool) -> None:
        wire = self._wire
        phase = wire.phase
        if phase is _HANDSHAKE:
            if not failed:
                error_logger.error("ASGI application returned without accepting the WebSocket")
            wire.refuse(500, "Internal Server Error")
        elif phase is _DENYING:
            if not failed:
                error_logger.error("ASGI application returned before its denial response ended")
            wire.abort()
        elif phase is _OPEN:
            # An error after the 101 is a Close with 1011 (internal error); a return, 1000.
            wire.begin_close(1011 if failed else 1000, "")

    async def receive(
        self,
    ) -> WebSocketConnectEvent | WebSocketReceiveEvent | WebSocketDisconnectEvent:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            if self._inbox:
                message, size = self._inbox.popleft()
                self._inbox_bytes -= size
                if self._wire.phase is _OPEN and not self._inbox_full():
                    self._wire.resume_reading()
                return message
            if self._disconnect is not None:
                return self._disconnect.copy()
            if self._wake is None:
                self._wake = self._loop.create_future()
            await self._wake

    async def send(self, message: ASGISendEvent) -> None:
        phase = self._wire.phase
        if phase is _OPEN:
            if message["type"] == "websocket.send":
                await self._send_data(message)
            elif message["type"] == "websocket.close":
                self._wire.begin_close(*_close_arguments(message))
            else:
                raise RuntimeError(
                    f"expected 'websocket.send' or 'websocket.close', got {message['type']!r}"
                )
        elif phase is _HANDSHAKE:
            if message["type"] == "websocket.accept":
                self._accept(message)
            elif message["type"] == "websocket.close":
                # ASGI spec: a close before the accept is an HTTP 403.
                self._wire.refuse(403, "")
            elif message["type"] == "websocket.http.response.start":
                self._wire.deny(_denial_status(message), asgi_headers(message.get("headers", ())))
            else:
                raise RuntimeError(
                    "expected 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', got {message['type']!r}"
                )
        elif phase is _DENYING:
            if message["type"] != "websocket.http.response.body":
                raise RuntimeError(
                    f"expected 'websocket.http.response.body', got {message['type']!r}"
                )
            await self._send_denial_body(message)
        else:
            raise WebSocketClosed(f"{message['type']!r} sent on a closed WebSocket")

    def _accept(self, message: WebSocketAcceptEvent) -> None:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in self._subprotocols:
            raise ValueError(
                f"websocket.accept subprotocol {subprotocol!r} was not offered by the client "
                f"(offered: {self._subprotocols})"
            )
        headers = asgi_headers(message.get("headers", ()))
        if any(name.lower() == b"sec-websocket-protocol" for name, _ in headers):
            raise ValueError("websocket.accept headers must not set sec-websocket-protocol")
        self._wire.accept(subprotocol, headers)

    async def _send_data(self, message: WebSocketSendEvent) -> None:
        text, data = message.get("text"), message.get("bytes")
        if text is not None and data is None:
            if not isinstance(text, str):
                raise TypeError(f"websocket.send 'text' must be str, not {type(text).__name__}")
            self._wire.send_data(text)
        elif data is not None and text is None:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"websocket.send 'bytes' must be bytes, not {type(data).__name__}")
            self._wire.send_data(bytes(data))
        else:
            raise ValueError("websocket.send needs exactly one of 'bytes' and 'text'")
        if self._wire.writing_paused:
            await self._wire.drained()
            self._unyielded = 0
        else:
            self._unyielded += 1
            if self._unyielded >= SENDS_PER_TURN:  # flow.py says why
                self._unyielded = 0
                await asyncio.sleep(0)

    async def _send_denial_body(self, message: WebSocketResponseBodyEvent) -> None:
        body = message.get("body", b"")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(
                f"websocket.http.response.body 'body' must be bytes, not {type(body).__name__}"
            )
        more = bool(message.get("more_body", False))
        self._wire.deny_body(bytes(body), more)
        if more and self._wire.writing_paused:
            await self._wire.drained()

    # -- plumbing ---------------------------------------------------------------------------

    def _inbox_full(self) -> bool:
        return len(self._inbox) >= self._max_queue or self._inbox_bytes >= self._max_queued_bytes

    def _wake_receiver(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)


def _received_message(key: str, data: str | bytes) -> WebSocketReceiveEvent:
    # The spec makes "bytes" and "text" optional (missing means None) and applications tell a
    # text message from a binary one by the key that is there; asgiref's TypedDict marks both
    # required, so only the one that is there is set, and the dict cast.
    return cast("WebSocketReceiveEvent", {"type": "websocket.receive", key: data})


def _denial_status(message: WebSocketResponseStartEvent) -> int:
    status = message.get("status")
    if type(status) is not int:
        raise ValueError(f"websocket.http.response.start 'status' must be an int: {status!r}")
    return status


def _close_arguments(message: WebSocketCloseEvent) -> tuple[int, str]:
    code = message.get("code", 1000)
    if code is None:
        code = 1000
    if type(code) is not int or not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
        raise ValueError(f"websocket.close 'code' {code!r} is not a code a server may send")
    reason = message.get("reason") or ""
    if not isinstance(reason, str):
        raise TypeError(f"websocket.close 'reason' must be str, not {type(reason).__name__}")
    return code, reason
