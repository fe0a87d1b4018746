"""What one server counts about itself while it runs: `Metrics`, kept on its event loop.

Two kinds of figure, so that metrics cost nothing while they are off:
- Free ones, always counted: on paths a request takes only when something goes wrong
  (refusals by reason, timeouts by kind, connections over --limit-concurrency; the pool counts
  its waits and 503s the same way), and gauges read only when asked (open connections, the
  pool's threads).
- Metered ones, counted only while metrics are on (--metrics-address, or a worker process whose
  supervisor serves them), by wiring that is absent otherwise (metered.py): connections
  accepted, requests by interface and status class, their duration, bytes in and out, the
  requests that got a thread at once, the event loop's lag.

Everything here is written on the loop. `snapshot` may be called from any thread: it copies
with single C-level operations, so a reader sees each figure whole, if not all at one instant.
"""

from __future__ import annotations

from bisect import bisect_left

from dualgate.metrics.snapshot import DURATION_BOUNDS, LAG_BOUNDS, Histogram, Stats
from dualgate.wsgi.pool import PoolFigures

__all__ = ["H2Figures", "InterfaceFigures", "Metrics"]

# Status code // 100 -> its class; status 0 means no response head went out.
_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


class InterfaceFigures:
    """The requests of one interface: counts by status class, and their durations.

    A metered server's handlers hold their interface's figures and put them on each cycle
    (metered.py), so counting a response looks nothing up.
    """

    __slots__ = ("durations", "statuses")

    def __init__(self) -> None:
        self.statuses = [0] * len(_CLASSES)  # indexed by status // 100; 0: none
        self.durations = Histogram(DURATION_BOUNDS)

    def record(self, status: int, seconds: float) -> None:
        """One response with `status` (0: no head went out), `seconds` after its head came.

        MeteredHTTPProtocol.response_done does the same inline, one Python call less per
        request: keep the two alike.
        """
        self.statuses[status // 100 if status < 600 else 0] += 1
        durations = self.durations
        durations.counts[bisect_left(DURATION_BOUNDS, seconds)] += 1
        durations.sum += seconds


class H2Figures:
    """HTTP/2's own figures (dualgate/h2/), counted always: each is one step per connection,
    stream, reset or GOAWAY, on the HTTP/2 path alone, which HTTP/1.1 requests never take."""

    __slots__ = ("answered", "connections", "goaways_sent", "resets", "streams")

    def __init__(self) -> None:
        self.connections = 0  # connections served as HTTP/2 (prior knowledge or ALPN)
        self.streams = 0  # streams whose handler started: HTTP/2 requests
        self.answered = 0  # HTTP/2 responses counted by interface (metered only)
        self.resets: dict[str, int] = {}  # RST_STREAM frames, by who sent them: client, server
        self.goaways_sent: dict[str, int] = {}  # graceful (a stop), no_error (idle), error

    def reset(self, by: str) -> None:
        self.resets[by] = self.resets.get(by, 0) + 1

    def goaway(self, kind: str) -> None:
        self.goaways_sent[kind] = self.goaways_sent.get(kind, 0) + 1


class Metrics:
    __slots__ = (
        "_interfaces",
        "connections_accepted",
        "connections_refused",
        "h2",
        "loop_lag",
        "metered",
        "received_bytes",
        "refusals",
        "sendfile_bytes",
        "sent_bytes",
        "timeouts",
    )

    def __init__(self, metered: bool) -> None:
        self.metered = metered
        # Free: counted always.
        self.connections_refused = 0
        self.timeouts: dict[str, int] = {}
        self.refusals: dict[str, int] = {}
        # Bytes the OS sent from a file (cycle.sendfile): counted always, one step per file, and
        # reported in sent_bytes only when everything else written is counted too.
        self.sendfile_bytes = 0
        self.h2 = H2Figures()
        # Metered: counted only by metered.py's wiring.
        self.connections_accepted = 0
        self._interfaces: dict[str, InterfaceFigures] = {}
        self.received_bytes = 0
        self.sent_bytes = 0
        self.loop_lag = Histogram(LAG_BOUNDS)

    # -- free figures ---------------------------------------------------------------------

    def refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def timed_out(self, kind: str) -> None:
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    # -- metered figures ------------------------------------------------------------------

    def interface(self, name: str) -> InterfaceFigures:
        """The figures of interface `name` (wsgi, asgi, websocket, server), made on first use."""
        figures = self._interfaces.get(name)
        if figures is None:
            figures = self._interfaces[name] = InterfaceFigures()
        return figures

    def response(self, interface: str, status: int, seconds: float) -> None:
        """One request answered: by `interface`, with `status` (0 when no response head went
        out), `seconds` after its head arrived."""
        self.interface(interface).record(status, seconds)

    # -- reading --------------------------------------------------------------------------

    def snapshot(
        self,
        *,
        connections_open: int,
        shutting_down: bool,
        pool: PoolFigures | None,
        h2_streams_open: int = 0,
    ) -> Stats:
        metered = self.metered
        stats = Stats(
            metered=metered,
            shutting_down=shutting_down,
            connections_open=connections_open,
            connections_refused=self.connections_refused,
            timeouts=dict(self.timeouts),
            refusals=dict(self.refusals),
        )
        h2 = self.h2
        stats.h2_streams_open = h2_streams_open
        stats.h2_connections = h2.connections
        stats.h2_streams = h2.streams
        stats.h2_answered = h2.answered
        stats.h2_resets = dict(h2.resets)
        stats.h2_goaways = dict(h2.goaways_sent)
        if pool is not None:
            stats.pool_threads = pool.threads
            stats.pool_busy = pool.busy
            stats.pool_waiting = pool.waiting
            stats.pool_longest_wait = pool.longest_wait
            stats.pool_refused = pool.refused
            if metered:
                waits = pool.waits
                waits.counts[0] += pool.at_once  # a thread at once: a wait of zero
                stats.pool_wait = waits
        if metered:
            stats.connections_accepted = self.connections_accepted
            for interface, figures in list(self._interfaces.items()):
                for index, count in enumerate(list(figures.statuses)):
                    if count:
                        stats.requests[(interface, _CLASSES[index])] = count
                if figures.durations.count:  # an interface that has answered nothing yet
                    stats.request_duration[interface] = figures.durations.copy()
            stats.received_bytes = self.received_bytes
            stats.sent_bytes = self.sent_bytes + self.sendfile_bytes
            stats.loop_lag = self.loop_lag.copy()
        return stats
