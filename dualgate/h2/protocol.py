"""`H2Protocol`: one HTTP/2 connection on the event loop, the glue between transport and core.

How a connection gets here (preface.py decides, the HTTP/1.1 connection hands over):
- under TLS, ALPN chose "h2": the connection is HTTP/2 from its first byte;
- on a plain port, the first bytes are the client preface (prior knowledge).
Either way `take_over(transport, first_bytes)` installs the protocol on the transport and gives
it the bytes already read, as an HTTP/1.1 upgrade hands a connection to a WebSocket.

What it does: reads go to the core (read into the loop's one buffer, http/buffer.py, on every
loop: under TLS a plain protocol would get a fresh 256 KiB object per read), and what the core
has to send is written once per loop turn (`output_ready` coalesces the writes of every
stream); each stream the core starts goes to the handler, `handler(stream)`, which must not
block (it starts a task or hands the stream to a thread pool) and finishes the stream with
`end()` or `reset()` (stream.py). It is one of the server's live connections
(state.Connection): the server's sweep calls `check_deadline`, a graceful stop `shutdown`
(GOAWAY, PING, GOAWAY: core.py), and `force_close` when time is up.

A client that takes no bytes for `timeout_write` while the transport is paused is cut off, as
on HTTP/1.1; while it is paused, the core frames no more response bytes.

Counting: while metrics are on, the server builds `MeteredH2Protocol` instead (as it builds
metered.py's `MeteredHTTPProtocol` for HTTP/1.1): it adds the bytes read and written to the
same `received_bytes` and `sent_bytes`. The bytes read before the hand-off were counted by the
HTTP/1.1 connection that read them. With metrics off nothing is wrapped: `_send` is the
transport's own `write`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, cast

from dualgate.h2.core import H2Core
from dualgate.h2.phases import Phase
from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import INTERNAL_ERROR, Stream
from dualgate.http.buffer import BufferedReads
from dualgate.http.flow import GONE
from dualgate.http.grammar import Headers
from dualgate.logs import error_logger
from dualgate.metrics.counters import Metrics

__all__ = ["H2Protocol", "Host", "MeteredH2Protocol", "StreamHandler"]

StreamHandler = Callable[[Stream], None]


class Host(Protocol):
    """What a connection needs of its server (ServerState has all of it)."""

    connections: set[Any]  # the server's live connections, which this one joins
    default_headers: Headers  # Date and Server, replaced once a second
    shutting_down: bool
    metrics: Metrics  # the server's figures; HTTP/2's are `metrics.h2`


class H2Protocol(BufferedReads):
    def __init__(
        self,
        host: Host,
        settings: H2Settings,
        handler: StreamHandler,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.host = host
        self.settings = settings
        self.handler = handler
        self.loop = loop
        self.transport: asyncio.Transport
        self.core: H2Core
        self._send: Callable[[bytes], None]  # the transport's write (or a counting one)
        self._flushing = False  # in a read or a flush: what is queued goes out at its end
        self._flush_scheduled = False
        self._write_timer: asyncio.TimerHandle | None = None
        self._gone = False
        self.timeouts: Counter[str] = Counter()  # what timed out here, by deadline kind

    def take_over(self, transport: asyncio.BaseTransport, first: bytes) -> None:
        """Install this protocol on a transport another protocol read `first` from."""
        transport.set_protocol(self)
        self.connection_made(transport)
        if first:
            # H2Protocol's own: the HTTP/1.1 connection read (and counted) these already.
            H2Protocol.data_received(self, first)

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        self._send = self._outlet(self.transport)
        host = self.host
        self.core = H2Core(
            self.settings, self, self.loop.time, lambda: host.default_headers, host.metrics.h2
        )
        host.connections.add(self)
        if host.shutting_down:
            self.core.shutdown()
        self._flush()  # the server's SETTINGS (and the stop's GOAWAY, if it came first)

    def data_received(self, data: bytes) -> None:
        self._flushing = True
        try:
            self.core.receive(data)
        finally:
            self._flushing = False
        self._flush()

    def eof_received(self) -> bool:
        # An HTTP/2 client that half-closes can no longer open its windows or acknowledge
        # anything: nothing useful can follow, so the connection closes.
        self.core.lost()
        self._release()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.lost()
        self._release()
        self.transport = GONE  # not kept in this connection's cycles (http/flow.py says why)
        self._send = GONE.write  # the bound write would keep the transport as well

    def pause_writing(self) -> None:
        self.core.writing_paused = True
        self._write_timer = self.loop.call_later(self.settings.timeout_write, self._write_timed_out)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self.core.writing_paused = False

    def _write_timed_out(self) -> None:
        self._write_timer = None
        self.timeouts["write"] += 1
        error_logger.debug("HTTP/2 connection: the client took no bytes in time")
        self.force_close()

    # -- the core's outlet ----------------------------------------------------------------

    def _outlet(self, transport: asyncio.Transport) -> Callable[[bytes], None]:
        """What `_flush` writes with, chosen once per connection: the transport's `write`."""
        return transport.write

    def output_ready(self) -> None:
        if not self._flushing and not self._flush_scheduled and not self._gone:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def start(self, stream: Stream) -> None:
        try:
            self.handler(stream)
        except Exception:
            error_logger.exception("HTTP/2 stream handler failed")
            stream.reset(INTERNAL_ERROR)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._gone:
            return
        self._flushing = True
        try:
            more = self.core.pump()
            data = self.core.data_to_send()
        finally:
            self._flushing = False
        if data:
            self._send(data)
        if self.core.phase is Phase.CLOSED:
            self.transport.close()
            self._release()
        elif more:
            self.output_ready()

    def _release(self) -> None:
        if not self._gone:
            self._gone = True
            self.host.connections.discard(self)
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

    # -- the server's side (state.Connection) ---------------------------------------------

    def check_deadline(self, now: float) -> None:
        if self._gone:
            return
        expired = self.core.check(now)
        if expired:
            self.timeouts.update(expired)
            self._flush()

    def shutdown(self) -> None:
        if not self._gone:
            self.core.shutdown()

    def force_close(self) -> None:
        if not self._gone:
            self.transport.abort()
            self.core.lost()
            self._release()


class MeteredH2Protocol(H2Protocol):
    """An HTTP/2 connection that counts the bytes it reads and writes (metrics on only)."""

    def data_received(self, data: bytes) -> None:
        self.host.metrics.received_bytes += len(data)
        H2Protocol.data_received(self, data)

    def _outlet(self, transport: asyncio.Transport) -> Callable[[bytes], None]:
        metrics = self.host.metrics
        write = transport.write

        def counted(data: bytes) -> None:
            metrics.sent_bytes += len(data)
            write(data)

        return counted
