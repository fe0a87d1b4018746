"""`HTTPProtocol`: one client connection, the glue between the reader, the cycle and the wire.

The reader (reader.py) turns bytes into request events; the cycle (cycle.py) is what the
application's interface sees and owns the response; flow.py pauses, resumes and keeps the
deadline; phases.py says which phase the connection is in and where it may go next. What
the cycle sees of the connection (its `Port`: writing, drain, sendfile, the hand-over) is
port.py's `ConnectionPort`, mixed in.

Rules: everything runs on the event loop thread. A refused request never reaches the
application, and nothing after it is read: a refusal always closes. Bytes that follow a
complete request wait in the reader until its response is done (pipelining, in order), and
reading pauses while they wait.

What a connection is (client, scheme, trust, TLS) is decided once, by peer.py.

Counting: refusals, timeouts and connections over the limit are counted here, on those paths
only (they are free); whatever every request would pay for is counted by metered.py's subclass,
which the server builds only while metrics are on.
"""

from __future__ import annotations

import asyncio
from typing import cast

from dualgate.h2.preface import Sniffed, negotiated, sniff
from dualgate.http.buffer import BufferedReads
from dualgate.http.checks import Refusal
from dualgate.http.cycle import RequestCycle, View
from dualgate.http.flow import GONE, Deadline, FlowControl
from dualgate.http.framing import refusal_response
from dualgate.http.peer import FROM_PEER, GivenClient, describe, forward
from dualgate.http.phases import MOVES, ConnectionPhase
from dualgate.http.port import ConnectionPort
from dualgate.http.reader import CLOSED, END, NEED_DATA, PAUSED, Request, reader_for
from dualgate.http.state import ServerState
from dualgate.http.wire import DirectWire, settle_written, wire_fd
from dualgate.logs import error_logger, log_access

__all__ = ["HTTPProtocol", "reading_class"]

_IDLE, _HEAD, _BODY, _RESPONDING, _DRAINING, _UPGRADED, _CLOSED = ConnectionPhase

# On a graceful stop, a connection accepted this recently that has not had a request yet gets
# until then to send one, which is served: unlike an idle keep-alive connection, its client has
# had no chance to use it (a rolling restart would otherwise refuse requests).
_FIRST_REQUEST_GRACE = 1.0
# Bodies a client may still be sending after its response are read and dropped up to this many
# bytes so the connection can be kept; past it, closing is cheaper than reading.
_MAX_DRAIN = 1 << 20
# A connection's view until connection_made decides it (peer.py).
_NO_VIEW = View(None, None, "http", None)


class HTTPProtocol(ConnectionPort, asyncio.BaseProtocol):
    """One connection. Served as is on uvloop without TLS, which reads into a buffer of its own
    and makes each read's bytes in C; elsewhere, as `reading_class` makes it (buffered reads).
    A BaseProtocol, not an asyncio.Protocol: uvloop reads into `get_buffer` only for a protocol
    that is not an asyncio.Protocol."""

    def __init__(
        self,
        state: ServerState,
        loop: asyncio.AbstractEventLoop,
        client: GivenClient = FROM_PEER,
    ) -> None:
        self.state = state
        self.loop = loop
        self._given_client = client
        config = state.config
        self.reader = reader_for(config)
        self.phase = _IDLE
        self.cycle: RequestCycle | None = None
        self.transport: asyncio.Transport
        self.flow: FlowControl
        # Decided in connection_made, once per connection (see the module docstring).
        self.view = _NO_VIEW
        self.believed = False
        self.can_sendfile = False
        self._over_limit = False
        self._served = False  # a request has reached the handler on this connection
        self._accepted_at = 0.0
        self._drained = 0
        self._in_events = False
        # The first bytes of a plain connection (at most the 24 of the HTTP/2 preface) while
        # they may still be the preface; None once decided, or when HTTP/2 is off.
        self._sniffed: bytes | None = None
        # The socket a pool thread may write a whole response to (wire.py): its descriptor and
        # whether the loop hears of each response at once, decided once; the wire while a
        # response has it (a spare one, or made at the loan), None when idle.
        self._wire_fd = -1
        self._wire_wakes = False
        self._wire: DirectWire | None = None

    def _move(self, phase: ConnectionPhase) -> None:
        """A move checked against the table. The moves every request makes, whose phase before
        is known where they are made (IDLE -> HEAD on bytes, HEAD -> RESPONDING or BODY on a
        head, RESPONDING -> IDLE or HEAD after the response), are plain assignments: hashing
        an enum member runs Python code, and the check cost more than the move.
        tests/http/test_connection_memory.py walks a connection through them against the table."""
        assert phase in MOVES[self.phase], f"{self.phase} -> {phase}"
        self.phase = phase

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = transport = cast(asyncio.Transport, transport)
        state = self.state
        if state.written:
            settle_written(state.written)  # an event on the loop: see data_received
        config = state.config
        self.flow = FlowControl(transport, self.loop, config.timeout_write, self._write_timed_out)
        self.view, self.believed, self.can_sendfile = describe(
            transport, state, self.loop, self._given_client
        )
        self._wire_fd = wire_fd(transport)
        if self._wire_fd >= 0:
            self._wire_wakes = self._reports_each_response()
        # Over the limit, the connection is still read far enough to answer 503, so the client
        # learns why instead of seeing a reset.
        self._over_limit = len(self.state.connections) >= config.limit_concurrency
        self.state.connections.add(self)
        self.flow.arm(Deadline.KEEP_ALIVE, config.timeout_keep_alive)
        self._accepted_at = self.flow.deadline - config.timeout_keep_alive
        if state.http2 is not None and not self._over_limit:
            # Under TLS, ALPN has chosen already; on a plain port the first bytes tell.
            if negotiated(transport.get_extra_info("ssl_object")):
                self._to_http2(b"")
            else:
                self._sniffed = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase is _UPGRADED:
            return
        if self._wire is not None:
            self._settle_direct()
            self._wire.lost()  # before asyncio closes the socket: no thread writes to it now
        self.phase = _CLOSED
        self.state.connections.discard(self)
        self._client_gone()
        self.transport = GONE  # the real one (under TLS, its buffers) is not kept: flow.py

    def data_received(self, data: bytes) -> None:
        """Bytes read (buffer_updated), or handed over (the TLS and PROXY layers' own reads)."""
        written = self.state.written
        if written:
            # Responses threads wrote meanwhile, on any connection: finished now, so that an
            # idle connection holds nothing of its last request (wire.py).
            settle_written(written)
        if self._wire is not None:  # none while idle, nor ever under TLS or uvloop
            self._settle_direct()
        if self._sniffed is not None:
            data = self._sniffed + data
            verdict = sniff(data)
            if verdict is Sniffed.UNDECIDED:
                self._sniffed = data
                return
            self._sniffed = None
            if verdict is Sniffed.HTTP2:
                self._to_http2(data)
                return
        phase = self.phase
        if phase is _IDLE:
            self.phase = _HEAD
            self.reader.feed(data)
            self._read_events()
            # The head deadline only once a head is left waiting for more bytes: nearly every
            # head arrives whole, and the request (or its response) arms the next deadline.
            flow = self.flow
            if self.phase is _HEAD and flow.deadline_kind is not Deadline.HEAD:
                flow.arm(Deadline.HEAD, self.state.config.timeout_request_head)
            return
        if (phase is _BODY or phase is _DRAINING) and not self.flow.reading_paused:
            self.flow.arm(Deadline.BODY, self.state.config.timeout_read)
        self.reader.feed(data)
        self._read_events()

    def eof_received(self) -> bool:
        # A client may half-close after sending its request and still wait for the response,
        # so the transport stays open for writing.
        self._settle_direct()
        self.reader.feed_eof()
        self._read_events()
        if self.view.scheme == "http":
            return True
        # TLS has no half-close here: after an EOF the TLS layer closes whatever is returned,
        # and drops what is written meanwhile (asyncio and uvloop log "SSL connection is
        # closed" for each write). The response cannot arrive: the application hears now that
        # the client is gone, as at connection_lost, instead of writing into the void until
        # the TLS shutdown ends.
        self._client_gone()
        return False

    def _client_gone(self) -> None:
        """Nothing more reaches the client: what waits to write is released, and the request
        in progress hears that the client went away."""
        self.flow.connection_lost()
        if self.cycle is not None:
            self.cycle.lose()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- reading ------------------------------------------------------------------------

    def _read_events(self) -> None:
        if self._in_events:
            return  # a response finished inside a handler; the loop below goes on reading
        self._in_events = True
        try:
            reader = self.reader
            while self.phase is not _CLOSED and self.phase is not _UPGRADED:
                event = reader.next_event()
                # `type(event) is` narrows the type for mypy, where typing.cast would be a
                # Python call per event.
                if type(event) is Request:
                    self._on_request(event)
                elif event is NEED_DATA:
                    return
                elif type(event) is bytes:
                    self._on_body(event)
                elif event is END:
                    self._on_end()
                elif event is PAUSED:
                    if self._settle_direct():
                        continue  # a thread wrote the response meanwhile: on to the next one
                    # The next request waits for this response; stop reading so it cannot
                    # pile up meanwhile.
                    self.flow.pause_reading()
                    return
                elif event is CLOSED:
                    self._on_eof()
                    return
                else:
                    assert type(event) is Refusal, event
                    self._refuse(event)
                    return
        finally:
            self._in_events = False

    def _on_request(self, request: Request) -> None:
        # The phase is HEAD: a request comes only out of a head.
        state = self.state
        view = self.view
        if self.believed:
            view, request = forward(view, request, state.trust)
        self.cycle = cycle = RequestCycle(
            self, request, view, state.default_headers, state.default_head
        )
        if self._over_limit or (state.shutting_down and self._served):
            if self._over_limit:
                state.metrics.connections_refused += 1
            self._refuse(Refusal(503, "Server busy, retry later", "busy"), retry_after=True)
            return
        self._served = True
        if request.chunked or request.content_length:
            self.phase = _BODY
            self.flow.arm(Deadline.BODY, state.config.timeout_read)
        else:
            self.phase = _RESPONDING
            self.flow.disarm()
        try:
            state.handler(cycle)
        except Exception:
            error_logger.exception("Request handler failed")
            cycle.respond_error(500, "Internal Server Error\n")

    def _on_body(self, data: bytes) -> None:
        if self.phase is _DRAINING:
            self._drained += len(data)
            if self._drained > _MAX_DRAIN:
                self.close()
            return
        cycle = self.cycle
        assert cycle is not None
        cycle.feed_body(data)
        if cycle.body_buffered >= self.state.config.body_buffer_size:
            self.flow.pause_reading()
            self.flow.disarm()  # the stall is the application's, not the client's

    def _on_end(self) -> None:
        if self.phase is _DRAINING:
            self._next_request()
            return
        cycle = self.cycle
        assert cycle is not None
        self._move(_RESPONDING)
        self.flow.disarm()
        cycle.feed_end()

    def _on_eof(self) -> None:
        cycle = self.cycle
        if self.phase is _RESPONDING and cycle is not None:
            cycle.half_closed()
        else:
            self.close()

    # -- the cycle's port ---------------------------------------------------------------

    def _reports_each_response(self) -> bool:
        """Whether the connection reports each response as it ends (the access log; metrics and
        hooks, as a subclass): then it hears of a response a thread wrote at once (wire.py)."""
        cls = type(self)
        return (
            self.state.access_log
            or cls.response_done is not HTTPProtocol.response_done
            or cls.response_failed is not HTTPProtocol.response_failed
        )

    def response_done(self, cycle: RequestCycle) -> None:
        state = self.state
        if state.access_log:
            cycle.log_access()
        phase = self.phase
        if phase is _CLOSED:
            return
        if not cycle.keep_alive or state.shutting_down:
            self.close()
        elif phase is _RESPONDING:
            self._next_request()
        else:
            # The application answered without reading the whole body: read and drop the rest.
            self._move(_DRAINING)
            self._drained = cycle.body_buffered
            if self._drained > _MAX_DRAIN:
                self.close()
                return
            self.flow.resume_reading()
            self.flow.arm(Deadline.BODY, self.state.config.timeout_read)

    def response_failed(self, cycle: RequestCycle) -> None:
        if self.state.access_log:
            cycle.log_access()
        self.close()

    def _next_request(self) -> None:
        # The phase is RESPONDING or DRAINING: the response is done, and the body read.
        self.cycle = None
        wire = self._wire
        if wire is not None:
            # No thread holds it now: spare, for the next lend on any connection (wire.py).
            self._wire = None
            self.state.spare_wires.append(wire)
        self._drained = 0
        reader = self.reader
        waiting = reader.start_next()
        config = self.state.config
        flow = self.flow
        if waiting:
            self.phase = _HEAD
            flow.arm(Deadline.HEAD, config.timeout_request_head)
        else:
            self.phase = _IDLE
            flow.arm(Deadline.KEEP_ALIVE, config.timeout_keep_alive)
        if flow.reading_paused:
            flow.resume_reading()
        if waiting or reader.eof:  # a plain attribute: no property call per request
            self._read_events()

    # -- refusals, deadlines, closing ---------------------------------------------------

    def _refuse(self, refusal: Refusal, retry_after: bool = False) -> None:
        """Answer a request that must not reach the application, then close."""
        self.state.metrics.refused(refusal.kind)
        cycle = self.cycle
        if cycle is not None and cycle.head_sent:
            self.close()
            return
        status, message, _ = refusal
        state = self.state
        self.write(
            refusal_response(
                status,
                message,
                head_request=cycle is not None and cycle.request.method == b"HEAD",
                retry_after=retry_after,
                extra=state.default_headers,
                extra_head=state.default_head,
            )
        )
        if cycle is not None:
            cycle.status = status
            cycle.complete = True
            if self.state.access_log:
                cycle.log_access()
        elif self.state.access_log:
            log_access(self.view.client, b"-", b"-", b"-", status, 0, None, ())
        self.close()

    def check_deadline(self, now: float) -> None:
        """Called by the server's periodic sweep."""
        if self.state.written:
            settle_written(self.state.written)
        self._settle_direct()  # so a response written meanwhile starts the keep-alive wait
        kind = self.flow.expired(now)
        if kind is None or self.phase is _CLOSED:
            return
        self.state.metrics.timed_out(kind.value)
        if kind is Deadline.HEAD:
            error_logger.debug("%s: request head not received in time", self.view.client)
            self._refuse(Refusal(408, "Request head not received in time", "timeout"))
            return
        error_logger.debug("%s: closing, %s deadline passed", self.view.client, kind.value)
        self.close()

    def _write_timed_out(self) -> None:
        if self.phase is not _CLOSED:
            self.state.metrics.timed_out(Deadline.WRITE.value)
            error_logger.debug("%s: closing, the client took no bytes in time", self.view.client)
            self.force_close()

    def shutdown(self) -> None:
        """Graceful stop: close when idle; a request in flight finishes first, and so does the
        first request of a connection accepted just now."""
        self._settle_direct()
        if self.cycle is not None and not self.cycle.complete:
            return  # its response says "Connection: close" and closes after it
        grace = self._accepted_at + _FIRST_REQUEST_GRACE - self.loop.time()
        if not self._served and grace > 0 and self.phase in (_IDLE, _HEAD):
            if self.phase is _IDLE:
                self.flow.arm(Deadline.KEEP_ALIVE, grace)
            return
        self.close()

    def close(self) -> None:
        if self.phase is _CLOSED or self.phase is _UPGRADED:
            return
        self.phase = _CLOSED
        self.flow.disarm()
        self.transport.close()
        self.state.connections.discard(self)
        if self.cycle is not None:
            self.cycle.lose()

    def force_close(self) -> None:
        if self.phase is not _UPGRADED:
            self.phase = _CLOSED
            self.transport.abort()


_buffered: dict[type[HTTPProtocol], type[HTTPProtocol]] = {}


def reading_class(
    protocol: type[HTTPProtocol], loop: asyncio.AbstractEventLoop, tls: bool = False
) -> type[HTTPProtocol]:
    """`protocol` as the connections of `loop` are served: with buffered reads (buffer.py) on
    asyncio's own loops (and any subclass of BaseEventLoop) and under TLS, where asyncio's and
    uvloop's TLS layers would make a 256 KiB object per read; plain on uvloop without TLS, which
    reads into a buffer of its own, so that buffered reads would cost two Python calls per read
    for nothing."""
    if not tls and not isinstance(loop, asyncio.BaseEventLoop):
        return protocol
    buffered = _buffered.get(protocol)
    if buffered is None:
        # A class per protocol class (metered, reporting), made once.
        buffered = type("Buffered" + protocol.__name__, (protocol, BufferedReads), {})
        _buffered[protocol] = buffered
    return buffered
