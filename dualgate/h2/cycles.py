"""Each HTTP/2 stream served as a `RequestCycle`, by the same handlers as HTTP/1.1.

The seam: a stream drives a RequestCycle (http/cycle.py) through `StreamCyclePort`, this
module's implementation of the cycle's narrow `Port`. The cycle does what it does for HTTP/1.1
(the response's state, the interfaces' calls, errors as 500s, the access line) and asks its
port to frame: here `frame_head` sends the head as a HEADERS frame (h2/checks.py drops the
connection-specific fields an application may set) and answers FRAMED, so the body goes out as
DATA frames within the flow-control windows (stream.py, sending.py), never chunked. WSGI,
ASGI, `--mount`s, the health answer and `--limit-max-requests` see a request whose
`http_version` is "2" and whose Host is the `:authority`; nothing of theirs knows HTTP/2.

Rules of this file:
- Per connection, `H2Server.take_over` hands the transport to an `H2Protocol` with what
  HTTP/1.1 decided of it when it was made (peer.py's view, and whether its forwarding headers
  are believed); per stream, a trusted proxy's headers are read as on HTTP/1.1 (`forward`).
- The request body moves from the stream to the cycle only while the cycle holds less than
  `--body-buffer-size` unread (the mark HTTP/1.1 pauses reading at, and the WSGI handler waits
  for before it takes a thread), and again as the interface takes it (`body_taken`): the stream
  acknowledges (WINDOW_UPDATE) only what moved, so an application that does not read stops its
  own upload, and no other, with at most that mark plus one stream window unread.
- Every cycle ends its stream: `response_done` ends it (a short body resets it: stream.py),
  `response_failed` resets it, and a stream reset under it is a lost connection to the cycle.
- Counting: the responses by interface and status (as metered.py's HTTP/1.1 connection counts
  them) and the HTTP/2 figures (h2_*, metrics/counters.py), while metrics are on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from dualgate.h2.protocol import H2Protocol, MeteredH2Protocol
from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import INTERNAL_ERROR, Stream
from dualgate.http.checks import Framing
from dualgate.http.cycle import RequestCycle, Takeover, View
from dualgate.http.framing import EMPTY, FRAMED, ResponseHead
from dualgate.http.grammar import Headers
from dualgate.http.peer import forward
from dualgate.http.reader import Request
from dualgate.http.state import ServerState
from dualgate.logs import error_logger

__all__ = ["H2Server", "StreamCyclePort"]

_HTTP2 = b"2"
_SERVER = "server"  # metered.py's name for answers no tagged handler saw
# Blocks a file is read in when a response is a file (cycle.sendfile): HTTP/2 frames it, so the
# OS's sendfile cannot be used, as under TLS.
_FILE_BLOCK = 262144


class H2Server:
    """HTTP/2 for one server, built once: what HTTPProtocol hands a connection to."""

    def __init__(
        self,
        state: ServerState,
        loop: asyncio.AbstractEventLoop,
        report: Callable[[RequestCycle], None] | None = None,
    ) -> None:
        self.state = state
        self.loop = loop
        self.settings = H2Settings.from_config(state.config)
        # A process manager's per-response hook (the gunicorn worker's access log and StatsD).
        self.report = report
        self.metered = state.metrics.metered
        # Chosen once: the metered one counts the connection's bytes (protocol.py).
        self.protocol: type[H2Protocol] = MeteredH2Protocol if self.metered else H2Protocol

    def take_over(
        self, transport: asyncio.BaseTransport, first: bytes, view: View, believed: bool
    ) -> None:
        """Serve the connection as HTTP/2 from now on; `first`: the bytes read already."""
        state = self.state
        state.metrics.h2.connections += 1

        def serve(stream: Stream) -> None:
            self.serve(stream, view, believed)

        protocol = self.protocol(state, self.settings, serve, self.loop)
        protocol.take_over(transport, first)

    def serve(self, stream: Stream, view: View, believed: bool) -> None:
        """One stream to the server's handler, as a RequestCycle (the module docstring)."""
        state = self.state
        head = stream.head
        length = head.content_length
        if length is None and stream.body_complete:
            # Without content-length, a body whose END_STREAM came before the handler started
            # (in the same read as its HEADERS, often) is all here: its length is known.
            length = stream.body_received
        # A body of unknown length is what HTTP/1.1 calls chunked: more to come, size unknown.
        unknown = length is None
        request = Request(
            head.method,
            head.target,
            head.headers,
            _HTTP2,
            Framing(length or 0, unknown, True, b""),
            False,  # 100-continue is the stream's to answer, as the body is first taken
        )
        if believed:
            view, request = forward(view, request, state.trust)
        state.metrics.h2.streams += 1
        port = StreamCyclePort(self, stream)
        cycle = RequestCycle(port, request, view, state.default_headers, state.default_head)
        port.cycle = cycle
        stream.on_reset = cycle.lose
        if stream.body_received or stream.body_complete:
            port.pull()
        elif not cycle.body_complete:
            stream.on_body_ready = port.pull
        try:
            state.handler(cycle)
        except Exception:
            error_logger.exception("Request handler failed")
            cycle.respond_error(500, "Internal Server Error\n")


class StreamCyclePort:
    """The cycle's `Port` (http/cycle.py) over one HTTP/2 stream."""

    __slots__ = ("_buffer_limit", "_pull_scheduled", "_server", "_stream", "cycle")

    can_sendfile = False  # the body goes out as DATA frames, never by the OS's sendfile

    def __init__(self, server: H2Server, stream: Stream) -> None:
        self._server = server
        self._stream = stream
        self._buffer_limit = server.state.config.body_buffer_size
        self._pull_scheduled = False
        self.cycle: RequestCycle

    # -- the request body -----------------------------------------------------------------

    def pull(self) -> None:
        """Move what the stream holds to the cycle, while the cycle holds less than its mark."""
        self._pull_scheduled = False
        stream, cycle = self._stream, self.cycle
        if stream.reset_code is not None or cycle.disconnected or cycle.body_complete:
            return
        if cycle.body_buffered >= self._buffer_limit:
            return  # body_taken pulls again once the interface has taken some
        data, more = stream.take_body()
        if data:
            cycle.feed_body(data)
        if stream.reset_code is not None:
            return
        if not more:
            cycle.feed_end()
        else:
            stream.on_body_ready = self.pull

    def body_taken(self) -> None:
        # Not pulled at once: the interface is inside take_body, which must not be fed
        # under it (HTTP/1.1 likewise only resumes reading here).
        if not self._pull_scheduled:
            self._pull_scheduled = True
            self._server.loop.call_soon(self.pull)

    # -- the response ---------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self._stream.writing_paused

    def lend_wire(self, cycle: RequestCycle) -> None:
        # A stream's bytes are frames of a shared connection: a pool thread never writes them.
        return None

    def sent_directly(self, size: int) -> None:
        raise AssertionError("an HTTP/2 stream never lends its wire")

    def frame_head(
        self, cycle: RequestCycle, status: int, reason: bytes, headers: Headers, whole: int | None
    ) -> ResponseHead:
        # HTTP/2 has no reason phrase, and no keep-alive of a response's own; the Date and
        # Server headers are the stream's own (the same list, state.default_headers).
        no_body = cycle.request.method == b"HEAD" or status in (204, 304)
        # Known whole (cycle.respond): say how long, as HTTP/1.1 does, unless the app did.
        if (
            whole is not None
            and not no_body
            and not any(name.lower() == b"content-length" for name, _ in headers)
        ):
            headers = [*headers, (b"content-length", b"%d" % whole)]
        self._stream.send_head(status, headers)
        return ResponseHead(b"", EMPTY if no_body else FRAMED, 0, True)

    def write(self, data: bytes) -> None:
        self._stream.send_body(data)

    def when_writable(self, callback: Callable[[], None]) -> None:
        self._stream.when_writable(callback)

    async def drained(self) -> None:
        await self._stream.drained()

    async def sendfile(self, file: Any, offset: int, count: int) -> None:
        stream = self._stream
        file.seek(offset)
        while count > 0 and stream.reset_code is None:
            block = file.read(min(count, _FILE_BLOCK))
            if not block:
                break
            count -= len(block)
            stream.send_body(block)
            await stream.drained()

    def response_done(self, cycle: RequestCycle) -> None:
        self._finished(cycle)
        try:
            self._stream.end()
        except ValueError:
            self._stream.reset(INTERNAL_ERROR)

    def response_failed(self, cycle: RequestCycle) -> None:
        self._finished(cycle)
        self._stream.reset(INTERNAL_ERROR)

    def upgrade(self, cycle: RequestCycle, takeover: Takeover) -> None:
        # No request on HTTP/2 asks for one (checks.py refuses Upgrade and Connection, and
        # RFC 8441's extended CONNECT is not offered); an application that tries anyway
        # gets its stream reset.
        error_logger.error(
            "HTTP/2 stream %d: no protocol upgrade on HTTP/2", self._stream.stream_id
        )
        self.response_failed(cycle)

    def _finished(self, cycle: RequestCycle) -> None:
        server = self._server
        if server.metered:
            try:
                figures = cycle.interface
            except AttributeError:  # no tagged handler saw it: the server answered itself
                figures = server.state.metrics.interface(_SERVER)
            figures.record(cycle.status, time.monotonic() - cycle.started_at)
            server.state.metrics.h2.answered += 1
        if server.state.access_log:
            cycle.log_access()
        if server.report is not None:
            server.report(cycle)
