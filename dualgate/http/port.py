"""`ConnectionPort`: what a request cycle sees of its HTTP/1.1 connection, the `Port` side of
`HTTPProtocol` (connection.py), which mixes it in.

The cycle writes, waits for drain, sends files and hands the connection over through these;
the connection's reading side, its phases and its end live in connection.py. Kept apart so
that each half reads as one idea; a mixin, not a second object, so the per-request path looks
nothing up twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from dualgate.http.cycle import RequestCycle, Takeover, View
from dualgate.http.flow import GONE, Deadline, FlowControl
from dualgate.http.framing import ResponseHead, build_head
from dualgate.http.grammar import REASONS, Headers
from dualgate.http.phases import ConnectionPhase
from dualgate.http.wire import DirectWire

if TYPE_CHECKING:
    from dualgate.http.reader import RequestReader
    from dualgate.http.state import ServerState

__all__ = ["ConnectionPort"]

_IDLE, _HEAD, _BODY, _RESPONDING, _DRAINING, _UPGRADED, _CLOSED = ConnectionPhase


class ConnectionPort:
    # Set by HTTPProtocol (connection.py).
    state: ServerState
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: FlowControl
    phase: ConnectionPhase
    cycle: RequestCycle | None
    reader: RequestReader
    view: View
    believed: bool
    can_sendfile: bool
    _wire_fd: int
    _wire_wakes: bool
    _wire: DirectWire | None

    def _move(self, phase: ConnectionPhase) -> None:
        raise NotImplementedError  # HTTPProtocol's

    def _reports_each_response(self) -> bool:
        raise NotImplementedError  # HTTPProtocol's

    @property
    def writing_paused(self) -> bool:
        return self.flow.writing_paused

    def frame_head(
        self, cycle: RequestCycle, status: int, reason: bytes, headers: Headers, whole: int | None
    ) -> ResponseHead:
        # HTTP/1.1: one bytes join, written with the body. A stopping server's response is
        # its connection's last.
        request = cycle.request
        return build_head(
            status,
            reason or REASONS.get(status, b""),
            headers,
            head_request=request.method == b"HEAD",
            http11=request.http_version == b"1.1",
            keep_alive=cycle.keep_alive and not self.state.shutting_down,
            whole_body=whole,
            extra=cycle.extra,
            extra_head=cycle.extra_head,
        )

    def write(self, data: bytes) -> None:
        if self.phase is not _CLOSED:
            self.transport.write(data)

    def when_writable(self, callback: Callable[[], None]) -> None:
        self.flow.when_writable(callback)

    async def drained(self) -> None:
        await self.flow.drained()

    async def sendfile(self, file: Any, offset: int, count: int) -> None:
        if self.can_sendfile:
            sent = await self.loop.sendfile(self.transport, file, offset, count)
            # The OS wrote these bytes, not self.write: counted here, one step per file.
            self.state.metrics.sendfile_bytes += sent
            return
        # Under TLS (sendfile cannot encrypt) and on loops without sendfile (uvloop): read and
        # write in blocks, waiting for drain.
        file.seek(offset)
        while count > 0 and self.phase is not _CLOSED:
            block = file.read(min(count, 262144))
            if not block:
                break
            count -= len(block)
            self.write(block)
            await self.flow.drained()

    def body_taken(self) -> None:
        if self.phase is _BODY and self.flow.reading_paused:
            self.flow.resume_reading()
            self.flow.arm(Deadline.BODY, self.state.config.timeout_read)

    def lend_wire(self, cycle: RequestCycle) -> DirectWire | None:
        # Only while nothing is queued and nothing else writes (wire.py says why that holds).
        if (
            self._wire_fd < 0
            or self.phase is not _RESPONDING
            or self.flow.writing_paused
            or self.transport.get_write_buffer_size()
        ):
            return None
        wire = self._wire
        if wire is None:
            # An idle connection holds none: a spare one, if another connection left one.
            spare = self.state.spare_wires
            wire = self._wire = spare.pop() if spare else DirectWire(self.state.written)
        wire.lend(cycle, self._wire_fd, self._wire_wakes)
        return wire

    def sent_directly(self, size: int) -> None:
        pass  # counted by metered.py's subclass only

    def _settle_direct(self) -> bool:
        """Finish the response a pool thread wrote in full itself (wire.py), if it has; if not,
        the thread posts its end instead. Whether one was finished."""
        if self._wire is None or self.cycle is None:
            return False
        claimed = self._wire.claim()
        if claimed is not None:
            claimed[0].sent_directly(claimed[1], b"")
        return claimed is not None

    def upgrade(self, cycle: RequestCycle, takeover: Takeover) -> None:
        if self.phase is _CLOSED:
            return
        self._move(_UPGRADED)
        self.flow.disarm()
        self.state.connections.discard(self)
        protocol = takeover(self.state)
        reader = self.reader
        leftover = reader.take_leftover()
        transport = self.transport
        # Resumed before the new protocol starts, so that it may pause reading itself.
        self.flow.resume_reading()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        stream = cast(asyncio.Protocol, protocol)
        if leftover:
            stream.data_received(leftover)
        if reader.eof and not stream.eof_received():
            transport.close()
        self.transport = GONE  # the new protocol's now (flow.py says why it is not kept)
        self.flow.connection_lost()

    def _to_http2(self, first: bytes) -> None:
        """Hand the connection to HTTP/2 (prior knowledge, or ALPN) as `upgrade` hands it to
        a WebSocket: it leaves the live connections, which the HTTP/2 one joins."""
        assert self.state.http2 is not None
        self._move(_UPGRADED)
        self.flow.disarm()
        self.state.connections.discard(self)
        self.state.http2.take_over(self.transport, first, self.view, self.believed)
        self.transport = GONE  # HTTP/2's now (flow.py says why it is not kept)
        self.flow.connection_lost()
