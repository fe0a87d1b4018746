"""`H2Core`: one HTTP/2 connection without I/O: bytes in, streams out, bytes to send back.

The protocol (protocol.py) feeds it what it reads (`receive`), tells it when the transport
pauses (`writing_paused`), calls `check` from the server's sweep and `shutdown` on a graceful
stop, and writes what `data_to_send` returns after `pump`. The core tells the protocol two
things through its `Outlet` (streams.py): there are bytes to send (`output_ready`, so writes of
many streams coalesce into one per loop turn), and a stream's handler may run (`start`). Its
clock is given, so tests drive it with h2's client state machine and a fake clock.

Rules of this file:
- Every read passes the frame guard (guard.py) before h2 sees a byte of it; past a bound the
  connection closes with a GOAWAY and nothing of that read is processed. A client that keeps
  drawing replies (PING, SETTINGS acknowledgements) while it reads none of our bytes is cut
  off past `MAX_UNREAD_REPLIES`, so what it makes us queue stays bounded.
- The connection's phases and deadlines are phases.py's; a header block left unfinished runs
  the head deadline in every phase (the client may send nothing else until it ends).
- The streams are the StreamTable's (streams.py); the core only routes h2's stream events to
  it, and closes it with the connection.
- A graceful stop is RFC 9113 section 6.8's two steps. Both GOAWAY frames are written past h2:
  h2's `close_connection` ends its state machine, after which no stream could finish.
- h2 sends nothing once the client has sent GOAWAY, so a client GOAWAY closes the connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError
from hyperframe.frame import GoAwayFrame

from dualgate.h2.guard import ENHANCE_YOUR_CALM, FrameGuard
from dualgate.h2.machine import new_connection
from dualgate.h2.phases import MOVES, Phase
from dualgate.h2.settings import GOAWAY_PING_WAIT, MAX_UNREAD_REPLIES, H2Settings
from dualgate.h2.streams import Outlet, StreamTable
from dualgate.http.grammar import Headers
from dualgate.logs import error_logger
from dualgate.metrics.counters import H2Figures

__all__ = ["H2Core"]

_OPENING, _IDLE, _ACTIVE, _NOTICE, _DRAINING, _CLOSED = Phase
_MAX_STREAM_ID = 2**31 - 1
_PING_DATA = b"dualgate"  # the graceful stop's PING; any 8 bytes would do


class H2Core:
    def __init__(
        self,
        settings: H2Settings,
        outlet: Outlet,
        clock: Callable[[], float],
        default_headers: Callable[[], Headers],
        figures: H2Figures | None = None,
    ) -> None:
        self.settings = settings
        # The server's HTTP/2 figures (resets, GOAWAYs), shared by its connections.
        self.figures = figures if figures is not None else H2Figures()
        self._outlet = outlet
        self._clock = clock
        now = clock()
        self._conn = new_connection(settings)
        self._guard = FrameGuard(settings, now)
        self.table = StreamTable(
            self._conn,
            settings,
            clock,
            outlet,
            self._guard,
            self._fail,
            default_headers,
            self.figures,
        )
        self._out = bytearray()  # frames of our own (a graceful stop's GOAWAYs), in order
        self.phase = _OPENING
        self.deadline = now + settings.timeout_request_head  # the connection's; 0.0 for none
        self._block_deadline = 0.0
        self._unread_replies = 0
        self.close_reason = ""
        table = self.table
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            RequestReceived: self._on_request,
            DataReceived: table.on_data,
            StreamEnded: table.on_stream_ended,
            TrailersReceived: table.on_trailers,
            StreamReset: table.on_reset,
            PingAckReceived: self._on_ping_ack,
            ConnectionTerminated: self._on_goaway,
        }

    def _move(self, phase: Phase) -> None:
        assert phase in MOVES[self.phase], f"{self.phase} -> {phase}"
        self.phase = phase

    @property
    def requests(self) -> int:
        """Streams whose handler was started."""
        return self.table.requests

    # -- input --------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self.phase is _CLOSED:
            return
        now = self._clock()
        violation = self._guard.scan(data, now)
        if violation is not None:
            self._fail(violation.code, violation.reason)
            return
        try:
            events = self._conn.receive_data(data)
        except ProtocolError as exc:  # h2 has queued its GOAWAY
            self._close(f"connection error: {exc}")
            return
        if self.table.writing_paused and self._guard.replies:
            self._unread_replies += self._guard.replies
            if self._unread_replies > MAX_UNREAD_REPLIES:
                self._fail(ENHANCE_YOUR_CALM, "control replies the client does not read")
                return
        dispatch = self._dispatch
        for event in events:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
                if self.phase is _CLOSED:
                    return
        if not self._guard.in_block:
            self._block_deadline = 0.0
        elif not self._block_deadline:
            self._block_deadline = now + self.settings.timeout_request_head
            if self.phase is _IDLE:
                self.deadline = 0.0  # a request is arriving: the connection is not idle
        self._settle()
        self._outlet.output_ready()

    def _on_request(self, event: RequestReceived) -> None:
        if self.phase is _OPENING:
            self._move(_IDLE)  # _settle moves on to ACTIVE, or arms the keep-alive deadline
            self.deadline = 0.0
        self.table.on_request(event)

    def _on_ping_ack(self, event: PingAckReceived) -> None:
        if self.phase is _NOTICE and event.ping_data == _PING_DATA:
            self._final_goaway()

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        self._close(f"the client sent GOAWAY ({event.error_code!r})")

    # -- output ---------------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self.table.writing_paused

    @writing_paused.setter
    def writing_paused(self, paused: bool) -> None:
        self.table.writing_paused = paused
        if not paused:
            self._unread_replies = 0
            self.table.wake_writers()
            self._outlet.output_ready()

    def pump(self) -> bool:
        """Start the handlers that may start and frame what the windows allow; True when there
        is more to send than one pump frames (the protocol pumps again next loop turn)."""
        if self.phase is _CLOSED:
            return False
        more = self.table.pump()
        if self.phase is not _CLOSED:
            self._settle()
        return more

    def data_to_send(self) -> bytes:
        self._out += self._conn.data_to_send()
        data = bytes(self._out)
        self._out.clear()
        return data

    # -- phases, deadlines, the end -------------------------------------------------------

    def _settle(self) -> None:
        """The phase the live streams imply, with its deadline."""
        phase = self.phase
        if self.table.streams:
            if phase is _IDLE or phase is _OPENING:
                self._move(_ACTIVE)
                self.deadline = 0.0
            return
        if phase is _DRAINING:
            self._close("graceful stop done")
            return
        if phase is _ACTIVE:
            self._move(_IDLE)
        if self.phase is _IDLE and not self.deadline and not self._block_deadline:
            # Idle: no stream, and no request arriving (that runs the head deadline).
            self.deadline = self._clock() + self.settings.timeout_keep_alive

    def check(self, now: float) -> list[str]:
        """The server's sweep: what timed out ("head", "keep-alive", "read", "write")."""
        if self.phase is _CLOSED:
            return []
        if self._block_deadline and now >= self._block_deadline:
            self._fail(ErrorCodes.PROTOCOL_ERROR, "a header block not finished in time")
            return ["head"]
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            if self.phase is _NOTICE:
                self._final_goaway()  # no acknowledgement of the PING in time
            else:
                kind = "head" if self.phase is _OPENING else "keep-alive"
                self._fail(ErrorCodes.NO_ERROR, f"{kind} deadline passed")
                return [kind]
        expired = self.table.check(now)
        if expired:
            self._settle()
            self._outlet.output_ready()
        return expired

    def shutdown(self) -> None:
        """A graceful stop, step one (RFC 9113 section 6.8): GOAWAY with the largest stream id,
        so the client opens no more streams, and a PING, whose acknowledgement tells that every
        stream it opened before it read the GOAWAY has arrived."""
        if self.phase not in (_OPENING, _IDLE, _ACTIVE):
            return
        self._goaway(_MAX_STREAM_ID)
        self._conn.ping(_PING_DATA)
        self._move(_NOTICE)
        self.deadline = self._clock() + GOAWAY_PING_WAIT
        self._outlet.output_ready()

    def _final_goaway(self) -> None:
        """Step two: the last stream that will be served; the connection closes after it."""
        last = self._conn.highest_inbound_stream_id
        self.table.refuse_above = last
        self._goaway(last)
        self._move(_DRAINING)
        self.deadline = 0.0
        self._settle()
        self._outlet.output_ready()

    def _goaway(self, last_stream_id: int) -> None:
        self._out += self._conn.data_to_send()  # what h2 queued before goes first
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=ErrorCodes.NO_ERROR)
        self._out += frame.serialize()
        self.figures.goaway("graceful")

    def _fail(self, code: int, reason: str) -> None:
        """A connection error of ours: GOAWAY with `code`, then close."""
        with contextlib.suppress(ProtocolError):  # h2 may have closed its side already
            self._conn.close_connection(error_code=code)
            self.figures.goaway("error" if code else "no_error")
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.phase is _CLOSED:
            return
        error_logger.debug("HTTP/2 connection closing: %s", reason)
        self.close_reason = reason
        self._move(_CLOSED)
        self.deadline = self._block_deadline = 0.0
        self.table.lose_all()
        self._outlet.output_ready()

    def lost(self) -> None:
        """The transport is gone: every stream is lost; nothing more is sent."""
        self._close("the connection was lost")
