"""`Stream`: one HTTP/2 request and its response, all that a handler sees of HTTP/2.

Rules of this file:
- Everything here runs on the event loop thread. No I/O: a stream reaches the wire only
  through its `StreamPort` (the connection's stream table, streams.py), which frames what it
  is given within the flow-control windows.
- The request: `head` is read-only. Its body arrives through `feed`/`feed_end`/`lose`, called
  by the stream table alone; a handler takes it with `take_body` (or `await receive_body()`),
  and only what is taken is acknowledged to the client (WINDOW_UPDATE), so a handler that does
  not read stops its own upload and no other.
- The response: `send_head`, then `send_body` any number of times, then `end` (with trailers,
  if any). `send_body` never blocks: bytes wait in the stream's queue until the client's window
  takes them, and `writing_paused` (with `when_writable` and `drained`) tells a writer to wait,
  as the HTTP/1.1 transport does.
- Every handler finishes with `end()` or `reset()`, whatever happened on the wire: that is what
  frees its slot among the connection's `max_concurrent_streams` (phases.py). After the client
  reset the stream (`reset_code` is set, `on_reset` called), both only free the slot.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from typing import Protocol

from dualgate.h2.checks import RequestHead, response_fields, trailer_fields
from dualgate.h2.phases import STREAM_MOVES, StreamPhase
from dualgate.http.grammar import Headers
from dualgate.logs import error_logger

__all__ = ["CANCEL", "INTERNAL_ERROR", "Stream", "StreamPort", "StreamReset"]

# RFC 9113 section 7 error codes a handler may reset with.
INTERNAL_ERROR = 0x2
CANCEL = 0x8

_PENDING, _RUNNING, _FLUSHING, _ORPHANED, _DONE = StreamPhase


class StreamReset(Exception):
    """The stream was closed under its handler: the client reset it, it broke a rule, timed
    out, or the connection is gone. `code` is the RFC 9113 error code."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} reset (error code {code:#x})")
        self.code = code


class StreamPort(Protocol):
    """What a stream needs of its connection (streams.StreamTable implements it)."""

    send_queue: int  # queued response bytes past which a stream's writer is told to wait

    @property
    def default_headers(self) -> Headers: ...  # Date, Server

    @property
    def writing_paused(self) -> bool: ...  # the transport takes no more bytes for now
    def send_fields(self, stream: Stream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        """Send a HEADERS frame (a head, or trailers with `end`) now: it is not flow
        controlled."""

    def queued(self, stream: Stream) -> None:
        """The stream's queue has bytes, or its end, to send as the windows allow."""

    def consumed(self, stream: Stream, flow: int) -> None:
        """The handler took this many flow-controlled bytes: hand the window back."""

    def reset_by_handler(self, stream: Stream, code: int) -> None: ...
    def finished(self, stream: Stream) -> None:
        """The handler is done: its slot is free."""


class Stream:
    __slots__ = (
        "_body",
        "_body_flow",
        "_continue_sent",
        "_port",
        "_remaining",
        "_waiters",
        "body_complete",
        "body_received",
        "complete",
        "end_queued",
        "head",
        "head_sent",
        "no_body",
        "on_body_ready",
        "on_reset",
        "out",
        "out_size",
        "out_trailers",
        "phase",
        "read_deadline",
        "reset_code",
        "sent_bytes",
        "status",
        "stream_id",
        "trailers",
        "write_deadline",
    )

    def __init__(self, port: StreamPort, stream_id: int, head: RequestHead) -> None:
        self._port = port
        self.stream_id = stream_id
        self.head = head
        self.phase = _PENDING
        # The request body: chunks with their flow-controlled sizes (padding included), which
        # are acknowledged when taken.
        self._body: deque[bytes] = deque()
        self._body_flow = 0
        self._continue_sent = False
        self.body_received = 0
        self.body_complete = False
        self.trailers: Headers | None = None
        self.on_body_ready: Callable[[], None] | None = None
        self.on_reset: Callable[[], None] | None = None
        self.reset_code: int | None = None
        # The response, written only by the methods below.
        self.head_sent = False
        self.complete = False  # the handler ended the response (or reset the stream)
        self.status = 0
        self.sent_bytes = 0
        self.no_body = head.method == b"HEAD"
        self._remaining: int | None = None  # owed to the response's Content-Length
        # The queue the sender drains as the windows allow (sending.py reads and pops it).
        self.out: deque[bytes | memoryview] = deque()
        self.out_size = 0
        self.end_queued = False
        self.out_trailers: list[tuple[bytes, bytes]] | None = None
        self._waiters: list[Callable[[], None]] = []
        # Loop times, 0.0 for none; the stream table and the sender arm them, the table checks.
        self.read_deadline = 0.0
        self.write_deadline = 0.0

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.phase.value} {self.head!r}>"

    def move(self, phase: StreamPhase) -> None:
        assert phase in STREAM_MOVES[self.phase], f"{self.phase} -> {phase}"
        self.phase = phase

    # -- the request body, the stream table's side --------------------------------------

    def feed(self, data: bytes, flow: int) -> None:
        self._body.append(data)
        self._body_flow += flow
        self.body_received += len(data)
        self._notify_body()

    def feed_end(self) -> None:
        self.body_complete = True
        self._notify_body()

    def take_unread(self) -> int:
        """Drop the unread body; its flow-controlled size, for the table to acknowledge."""
        flow, self._body_flow = self._body_flow, 0
        self._body.clear()
        return flow

    def lose(self, code: int) -> None:
        """The stream is closed on the wire, by the client, by a rule, or with the connection;
        the table has already acknowledged what was unread."""
        if self.reset_code is not None or self.phase is _DONE:
            return
        self.reset_code = code
        self.out.clear()
        self.out_size = 0
        self.read_deadline = self.write_deadline = 0.0
        self.move(_ORPHANED if self.phase is _RUNNING else _DONE)
        self._notify_body()
        callback = self.on_reset
        if callback is not None:
            self.on_reset = None
            callback()
        self.wake_writers()

    def _notify_body(self) -> None:
        callback = self.on_body_ready
        if callback is not None:
            self.on_body_ready = None
            callback()

    # -- the request body, the handler's side -------------------------------------------

    def take_body(self) -> tuple[bytes, bool]:
        """Everything buffered so far, and whether more is to come.

        The first call with nothing buffered answers a waiting `expect: 100-continue`: the client
        is told to send only once the handler asks for the body (RFC 9110 section 10.1.1).
        """
        body = self._body
        if body:
            data = body.popleft() if len(body) == 1 else b"".join(body)
            body.clear()
            flow, self._body_flow = self._body_flow, 0
            self._port.consumed(self, flow)
        else:
            data = b""
            if not self._continue_sent and not self.body_complete and self.reset_code is None:
                self._continue_sent = True
                if self.head.expects_continue and not self.head_sent:
                    self._port.send_fields(self, [(b":status", b"100")], False)
        return data, not self.body_complete and self.reset_code is None

    async def receive_body(self) -> bytes:
        """The next bytes of the body; b"" once it is complete. StreamReset if it never will."""
        while True:
            data, more = self.take_body()
            if data:
                return data
            if self.reset_code is not None:
                raise StreamReset(self.stream_id, self.reset_code)
            if not more:
                return b""
            future = asyncio.get_running_loop().create_future()
            self.on_body_ready = functools.partial(_resolve, future)
            await future

    # -- the response -------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self.out_size >= self._port.send_queue or self._port.writing_paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the stream can take more bytes (at once if it can now)."""
        if self.writing_paused and self.reset_code is None:
            self._waiters.append(callback)
        else:
            callback()

    async def drained(self) -> None:
        """Wait until the stream can take more bytes (or is reset)."""
        if self.writing_paused and self.reset_code is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(functools.partial(_resolve, future))
            await future

    def wake_writers(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter()

    def send_head(self, status: int, headers: Headers) -> None:
        """The response head; ValueError when it is not valid (nothing is sent then)."""
        if self.head_sent or self.complete:
            raise RuntimeError("the response head was already sent")
        if self.reset_code is not None:
            return
        fields, length = response_fields(status, headers, self._port.default_headers)
        self.head_sent = True
        self.status = status
        if status in (204, 304):
            self.no_body = True
        self._remaining = 0 if self.no_body else length
        self._port.send_fields(self, fields, False)

    def send_body(self, data: bytes) -> None:
        """Queue body bytes; they go out as the client's windows allow. After a reset, or the
        end, they go nowhere (and do not raise: the handler learns of a reset by `on_reset`)."""
        if self.reset_code is not None or self.complete or not data:
            return
        if not self.head_sent:
            raise RuntimeError("send_head() comes before send_body()")
        if self.no_body:
            return
        if self._remaining is not None:
            if len(data) > self._remaining:
                excess = len(data) - self._remaining
                raise ValueError(f"response body exceeds its Content-Length by {excess} bytes")
            self._remaining -= len(data)
        self.sent_bytes += len(data)
        self.out.append(data)
        self.out_size += len(data)
        self._port.queued(self)

    def end(self, trailers: Headers | None = None) -> None:
        """The response is complete (after what is queued); the handler is done. ValueError
        (and nothing done) when a trailer is not valid."""
        if self.complete:
            return
        fields = trailer_fields(trailers) if trailers else None
        self.complete = True
        if self.reset_code is not None:
            self.move(_DONE)
            self._port.finished(self)
            return
        if not self.head_sent or self._remaining:
            # The client must see a broken response, not a short one taken as whole.
            error_logger.error(
                "Stream %d ended %s; resetting it",
                self.stream_id,
                "before its head" if not self.head_sent else f"{self._remaining} bytes short",
            )
            self._port.reset_by_handler(self, INTERNAL_ERROR)
            return
        self.out_trailers = fields or None
        self.end_queued = True
        self.move(_FLUSHING)
        self._port.finished(self)
        self._port.queued(self)

    def reset(self, code: int = CANCEL) -> None:
        """Abort: the client sees the stream reset (RST_STREAM) and the handler is done."""
        if self.complete or self.phase is _PENDING:
            return
        self.complete = True
        if self.reset_code is not None:
            self.move(_DONE)
            self._port.finished(self)
            return
        self._port.reset_by_handler(self, code)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
