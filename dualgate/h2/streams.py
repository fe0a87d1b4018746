"""`StreamTable`: the streams of one HTTP/2 connection, from request head to the response's end.

The core (core.py) hands it h2's stream events and asks it to `pump`; streams reach it through
the `StreamPort` it implements (stream.py). No I/O; the clock is given.

Rules of this file:
- A malformed request, a Content-Length the DATA does not match, a trailer section that breaks
  a rule: RST_STREAM PROTOCOL_ERROR for that stream alone (RFC 9113 section 8.1.1), and the
  reset counts against the client's reset budget as one it sent would: a client must not make
  the server reset streams for free, any more than reset them itself.
- Handlers run at most `max_concurrent_streams` at a time, a handler of a reset stream included
  until it finishes (phases.py); streams beyond wait in order, and one reset while it waits
  never starts. So resetting streams cannot make more handlers run than the limit, and a reset
  stream costs no handler at all unless one had already started (CVE-2023-44487).
- Request body: only what a handler takes is acknowledged (Stream.take_body), so the client's
  window is the buffer; what arrives for a stream nobody will read is acknowledged at once, as
  is the unread rest of a stream that ends or is reset.
- Deadlines per stream: read (the client may send body bytes and does not; when the window is
  shut the stall is the application's and the deadline moves on) and write (sending.py).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Protocol

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset, TrailersReceived
from h2.exceptions import StreamClosedError

from dualgate.h2.checks import Answer, Malformed, check_request, check_trailers, response_fields
from dualgate.h2.guard import FrameGuard
from dualgate.h2.phases import StreamPhase
from dualgate.h2.sending import Sender
from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream
from dualgate.http.grammar import Headers
from dualgate.logs import error_logger
from dualgate.metrics.counters import H2Figures

__all__ = ["Outlet", "StreamTable"]

_PENDING, _RUNNING, _FLUSHING, _ORPHANED, _DONE = StreamPhase


class Outlet(Protocol):
    def output_ready(self) -> None:
        """There is something to send (or the connection has closed): flush soon."""

    def start(self, stream: Stream) -> None:
        """Run the handler of this stream."""


class StreamTable:
    def __init__(
        self,
        conn: H2Connection,
        settings: H2Settings,
        clock: Callable[[], float],
        outlet: Outlet,
        guard: FrameGuard,
        fail: Callable[[int, str], None],
        default_headers: Callable[[], Headers],
        figures: H2Figures,
    ) -> None:
        self._conn = conn
        self._figures = figures
        self.settings = settings
        self._clock = clock
        self._outlet = outlet
        self._guard = guard
        self._fail = fail  # a connection error: the core sends GOAWAY and closes
        self._default_headers = default_headers
        self.streams: dict[int, Stream] = {}  # every stream not DONE
        self._pending: deque[Stream] = deque()
        self._running = 0
        self._sender = Sender(conn, settings, clock)
        self.send_queue = settings.send_queue
        self.writing_paused = False  # the transport's; the core keeps it current
        self.refuse_above = 2**31 - 1  # the last stream id a final GOAWAY named
        self.requests = 0  # streams whose handler was started
        self.closed = False

    # -- h2's stream events ---------------------------------------------------------------

    def on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if stream_id > self.refuse_above:
            # After the final GOAWAY: never processed, so the client may retry it elsewhere.
            self._rst(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        settings = self.settings
        head = check_request(
            event.headers,
            settings.max_header_list_size,
            settings.max_header_fields,
            settings.max_body_size,
        )
        if isinstance(head, Malformed):
            self._stream_error(stream_id, head.reason)
        elif isinstance(head, Answer):
            self._answer(stream_id, head, event.stream_ended is not None)
        else:
            stream = Stream(self, stream_id, head)
            self.streams[stream_id] = stream
            self._pending.append(stream)

    def on_data(self, event: DataReceived) -> None:
        stream_id, data, flow = event.stream_id, event.data, event.flow_controlled_length
        stream = self.streams.get(stream_id)
        if stream is None or stream.complete or stream.reset_code is not None:
            # Nobody will read it: give the window back now (h2 has counted it against us).
            self._ack(stream_id, flow)
            return
        received = stream.body_received + len(data)
        length = stream.head.content_length
        limit = self.settings.max_body_size
        if length is not None and received > length:
            self._ack(stream_id, flow)
            self._stream_error(stream_id, "more DATA than its content-length")
        elif limit is not None and received > limit:
            self._ack(stream_id, flow)
            self._too_large(stream)
        else:
            stream.feed(data, flow)
            if stream.phase is _RUNNING:
                stream.read_deadline = self._clock() + self.settings.timeout_read

    def on_stream_ended(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.reset_code is not None:
            return
        length = stream.head.content_length
        if length is not None and stream.body_received != length:
            self._stream_error(event.stream_id, "DATA short of its content-length")
            return
        stream.read_deadline = 0.0
        stream.feed_end()

    def on_trailers(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.reset_code is not None:
            return
        settings = self.settings
        fields = event.headers
        malformed = check_trailers(
            fields, settings.max_header_list_size, settings.max_header_fields
        )
        if malformed is not None:
            self._stream_error(event.stream_id, malformed.reason)
        else:
            stream.trailers = list(fields)

    def on_reset(self, event: StreamReset) -> None:
        self._figures.reset("client" if event.remote_reset else "server")
        if not event.remote_reset:
            # h2 reset it itself: the client overflowed the stream's send window.
            self._draw_reset()
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._lose(stream, int(event.error_code))

    # -- errors, answers, losses ----------------------------------------------------------

    def _stream_error(self, stream_id: int, reason: str) -> None:
        error_logger.debug("HTTP/2 stream %d reset: %s", stream_id, reason)
        self._rst(stream_id, ErrorCodes.PROTOCOL_ERROR)
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._lose(stream, ErrorCodes.PROTOCOL_ERROR)
        self._draw_reset()

    def _draw_reset(self) -> None:
        violation = self._guard.draw_reset(self._clock())
        if violation is not None:
            self._fail(violation.code, violation.reason)

    def _answer(self, stream_id: int, answer: Answer, ended: bool) -> None:
        """A response of the server's own, head only: nothing in it waits for a window."""
        error_logger.debug("HTTP/2 stream %d answered %d: %s", stream_id, *answer[:2])
        fields, _ = response_fields(
            answer.status, [(b"content-length", b"0")], self._default_headers()
        )
        try:
            self._conn.send_headers(stream_id, fields, end_stream=True)
        except StreamClosedError:
            return  # the client reset it in the same read
        if not ended:
            self._rst(stream_id, ErrorCodes.NO_ERROR)  # RFC 9113 section 8.1: stop the upload

    def _too_large(self, stream: Stream) -> None:
        if stream.phase is not _PENDING:
            # The handler has it already: it sees the stream reset, as a client would.
            self._stream_error(stream.stream_id, "body over --max-body-size")
            return
        self._lose(stream, ErrorCodes.CANCEL)
        self._answer(stream.stream_id, Answer(413, "Request body too large", "too_large"), False)

    def _lose(self, stream: Stream, code: int) -> None:
        self._ack(stream.stream_id, stream.take_unread())
        self._sender.discard(stream.stream_id)
        stream.lose(code)
        if stream.phase is _DONE:
            self.streams.pop(stream.stream_id, None)

    def _rst(self, stream_id: int, code: int) -> None:
        # Closed already, by the client or by the response that just ended: nothing to say.
        with contextlib.suppress(StreamClosedError):
            self._conn.reset_stream(stream_id, code)
            self._figures.reset("server")

    def _ack(self, stream_id: int, flow: int) -> None:
        if flow:
            self._conn.acknowledge_received_data(flow, stream_id)

    def lose_all(self) -> None:
        """The connection is closing: every stream is lost to its handler."""
        self.closed = True
        streams = list(self.streams.values())
        self.streams.clear()
        self._pending.clear()
        self._sender.clear()
        for stream in streams:
            stream.lose(ErrorCodes.CANCEL)

    # -- the StreamPort (stream.py) -------------------------------------------------------

    @property
    def default_headers(self) -> Headers:
        """Date and Server: the server replaces the list once a second, so it is read anew."""
        return self._default_headers()

    def send_fields(self, stream: Stream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self._conn.send_headers(stream.stream_id, fields, end_stream=end)
        except StreamClosedError:
            self._lose(stream, ErrorCodes.STREAM_CLOSED)
            return
        self._outlet.output_ready()

    def queued(self, stream: Stream) -> None:
        self._sender.add(stream)
        self._outlet.output_ready()

    def consumed(self, stream: Stream, flow: int) -> None:
        self._ack(stream.stream_id, flow)
        if stream.phase is _RUNNING and not stream.body_complete:
            # The client may send again; from now on a stall is its own.
            stream.read_deadline = self._clock() + self.settings.timeout_read
        self._outlet.output_ready()

    def reset_by_handler(self, stream: Stream, code: int) -> None:
        self._ack(stream.stream_id, stream.take_unread())
        self._sender.discard(stream.stream_id)
        stream.out.clear()
        stream.out_size = 0
        self._rst(stream.stream_id, code)
        stream.move(_DONE)
        self.finished(stream)

    def finished(self, stream: Stream) -> None:
        self._running -= 1
        if stream.phase is _DONE:
            self.streams.pop(stream.stream_id, None)
        # Waiting streams start at the next pump, not inside this handler's call.
        self._outlet.output_ready()

    # -- starting and sending -------------------------------------------------------------

    def pump(self) -> bool:
        """Start what may start, frame what the windows allow; True when there is more to
        send than one pump frames."""
        limit = self.settings.max_concurrent_streams
        pending = self._pending
        while pending and self._running < limit:
            stream = pending.popleft()
            if stream.phase is not _PENDING:
                continue  # reset while it waited: it never costs a handler
            stream.move(_RUNNING)
            self._running += 1
            self.requests += 1
            if not stream.body_complete:
                stream.read_deadline = self._clock() + self.settings.timeout_read
            self._outlet.start(stream)
            if self.closed:
                return False  # what the handler did brought the connection down
        if self.writing_paused:
            return False
        ended, more = self._sender.pump()
        for stream in ended:
            # The response's END_STREAM is out, and its handler had finished already.
            if not stream.body_complete:
                # RFC 9113 section 8.1: a response that ends before its request may stop the
                # upload with RST_STREAM NO_ERROR; the unread rest is acknowledged.
                self._ack(stream.stream_id, stream.take_unread())
                self._rst(stream.stream_id, ErrorCodes.NO_ERROR)
            stream.move(_DONE)
            self.streams.pop(stream.stream_id, None)
        return more

    def wake_writers(self) -> None:
        """The transport takes bytes again: writers below their queue limit may go on."""
        for stream in list(self.streams.values()):
            if stream.out_size < self.send_queue:
                stream.wake_writers()

    def check(self, now: float) -> list[str]:
        """Per-stream deadlines: what timed out ("read", "write")."""
        expired: list[str] = []
        for stream in list(self.streams.values()):
            if stream.read_deadline and now >= stream.read_deadline:
                if self._conn.remote_flow_control_window(stream.stream_id) <= 0:
                    # The client cannot send: the stall is the application's, not its own.
                    stream.read_deadline = now + self.settings.timeout_read
                    continue
                expired.append("read")
            elif stream.write_deadline and now >= stream.write_deadline:
                expired.append("write")
            else:
                continue
            error_logger.debug(
                "HTTP/2 stream %d: %s deadline passed", stream.stream_id, expired[-1]
            )
            self._rst(stream.stream_id, ErrorCodes.CANCEL)
            self._lose(stream, ErrorCodes.CANCEL)
        return expired
