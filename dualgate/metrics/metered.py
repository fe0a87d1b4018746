"""The wiring that counts the metered figures (metrics.py); the server installs it only while
metrics are on.

With metrics off none of this exists: the server builds plain HTTPProtocols, a plain
ThreadPool and untagged handlers, so a request takes not one step more than it would without
metrics. With them on, the server builds these instead:
- `MeteredHTTPProtocol` counts connections accepted, bytes received and written, and every
  response: by the interface its handler was tagged with, status class and duration; a
  connection it hands to HTTP/2 goes on counting its bytes in h2/protocol.py's
  `MeteredH2Protocol`, which the HTTP/2 server builds instead of `H2Protocol` (it lives there:
  h2 is optional, and this module is imported without it);
- `tagged` handlers put their interface's figures on the cycle before handling it; a response
  no tagged handler saw (the health answer, a 404 outside every --mount) counts as "server";
- `CountingThreadPool` (pool.py) counts the requests that got a thread at once;
- `LagProbe` measures how late the loop runs a timer, four times a second.
WebSocket handshakes are counted where they are answered (ws/answer.py, interface
"websocket"), and only while metrics are on.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left

from dualgate.http.connection import HTTPProtocol
from dualgate.http.cycle import RequestCycle
from dualgate.http.phases import ConnectionPhase
from dualgate.http.state import RequestHandler
from dualgate.metrics.counters import InterfaceFigures, Metrics
from dualgate.metrics.snapshot import DURATION_BOUNDS, Histogram

__all__ = ["SERVER", "LagProbe", "MeteredHTTPProtocol", "tagged"]

SERVER = "server"  # the interface of answers the server gives itself
_CLOSED = ConnectionPhase.CLOSED
_LAG_INTERVAL = 0.25
_monotonic = time.monotonic


class MeteredHTTPProtocol(HTTPProtocol):
    # Set in connection_made: one attribute less to follow on every count.
    _metrics: Metrics

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._metrics = metrics = self.state.metrics
        metrics.connections_accepted += 1
        HTTPProtocol.connection_made(self, transport)

    def data_received(self, data: bytes) -> None:
        self._metrics.received_bytes += len(data)
        HTTPProtocol.data_received(self, data)

    def write(self, data: bytes) -> None:
        if self.phase is not _CLOSED:
            self._metrics.sent_bytes += len(data)
            self.transport.write(data)

    def sent_directly(self, size: int) -> None:
        self._metrics.sent_bytes += size

    def response_done(self, cycle: RequestCycle) -> None:
        try:
            figures = cycle.interface
        except AttributeError:  # no tagged handler saw it: the server answered itself
            figures = self._metrics.interface(SERVER)
        # InterfaceFigures.record, inline (once per request).
        status = cycle.status
        figures.statuses[status // 100 if status < 600 else 0] += 1
        seconds = _monotonic() - cycle.started_at
        durations = figures.durations
        durations.counts[bisect_left(DURATION_BOUNDS, seconds)] += 1
        durations.sum += seconds
        HTTPProtocol.response_done(self, cycle)

    def response_failed(self, cycle: RequestCycle) -> None:
        try:
            figures = cycle.interface
        except AttributeError:
            figures = self._metrics.interface(SERVER)
        figures.record(cycle.status, _monotonic() - cycle.started_at)
        HTTPProtocol.response_failed(self, cycle)


def tagged(handler: RequestHandler, figures: InterfaceFigures) -> RequestHandler:
    """`handler`, putting its interface's figures on each cycle first (metrics on only)."""

    def tag(cycle: RequestCycle) -> None:
        cycle.interface = figures
        handler(cycle)

    return tag


class LagProbe:
    """Asks the loop to run a timer every quarter second and records how late it ran: the time
    every callback and every ready connection waits behind whatever holds the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, histogram: Histogram) -> None:
        self._loop = loop
        self._histogram = histogram
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = self._loop.time() + _LAG_INTERVAL
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        # asyncio may run a timer up to its clock resolution early: never a negative lag.
        self._histogram.observe(max(0.0, self._loop.time() - self._due))
        self.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
