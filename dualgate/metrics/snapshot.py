"""The figures a server keeps about itself, as one snapshot: `Stats` (and its `Histogram`s).

Plain data, stdlib only: the pool (pool.py) records into a `Histogram`, `Server.stats()` returns a
`Stats`, a worker process sends its `Stats` to the supervisor as JSON, and the supervisor adds
every worker's up with `Stats.add`. The exposition format lives in exposition.py; what is counted
where, and which figures are counted only while metrics are on, in metrics.py.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DURATION_BOUNDS",
    "LAG_BOUNDS",
    "REFUSAL_REASONS",
    "RESTART_REASONS",
    "TIMEOUT_KINDS",
    "WAIT_BOUNDS",
    "Histogram",
    "Stats",
    "status_class",
]

# Every value a labelled counter can take, so each is exposed from zero (a series that appears
# only with its first event hides that event from rate()). tests/metrics/test_units.py checks
# them against flow.Deadline and the Refusal kinds the core uses.
TIMEOUT_KINDS = ("head", "body", "keep-alive", "write")
REFUSAL_REASONS = ("malformed", "too_large", "smuggling", "unsupported", "timeout", "busy")
RESTART_REASONS = ("crashed", "unresponsive", "failed_start", "max_requests", "reload")

# Upper bounds of the histogram buckets, in seconds (a last +Inf bucket is implicit). A hello
# world answers in well under a millisecond, so the first buckets are finer than Prometheus's
# default ones; the last ones reach the timeouts' defaults.
DURATION_BOUNDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
WAIT_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """ "2xx" for 200..299; "none" when no response head went out (status 0)."""
    return _CLASSES[status // 100] if 100 <= status <= 599 else "none"


class Histogram:
    """Counts per bucket (not cumulative: `cumulative()` gives Prometheus's form) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le, "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        total = 0
        out = []
        for count in self.counts:
            total += count
            out.append(total)
        return out

    def copy(self) -> Histogram:
        other = Histogram(self.bounds)
        other.counts = list(self.counts)
        other.sum = self.sum
        return other

    def add(self, other: Histogram) -> Histogram:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be added")
        total = self.copy()
        total.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        total.sum += other.sum
        return total

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.bounds, self.counts, self.sum) == (other.bounds, other.counts, other.sum)

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum:g})"

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "sum": self.sum}

    @classmethod
    def from_json(cls, bounds: tuple[float, ...], data: dict[str, Any]) -> Histogram:
        histogram = cls(bounds)
        counts = [int(count) for count in data["counts"]]
        if len(counts) != len(histogram.counts):
            raise ValueError("histogram with a different number of buckets")
        histogram.counts = counts
        histogram.sum = float(data["sum"])
        return histogram


@dataclass
class Stats:
    """A snapshot of one server's figures (or, under --workers, of every worker's, added up).

    Counters only ever grow while a server runs; gauges are what is true now. With metrics off
    (`metered` False) only the figures that cost nothing to keep are counted (README "Metrics"
    lists them); the others stay at zero.
    """

    # Whether every figure was counted (metrics on), or only the free ones.
    metered: bool = False
    shutting_down: bool = False
    # Gauges.
    connections_open: int = 0
    pool_threads: int = 0
    pool_busy: int = 0
    pool_waiting: int = 0
    pool_longest_wait: float = 0.0  # seconds the oldest waiting request has waited so far
    # Counters.
    connections_accepted: int = 0
    connections_refused: int = 0
    # (interface, status class) -> requests; interface is wsgi, asgi, websocket or server.
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    request_duration: dict[str, Histogram] = field(default_factory=dict)
    received_bytes: int = 0
    sent_bytes: int = 0
    pool_wait: Histogram = field(default_factory=lambda: Histogram(WAIT_BOUNDS))
    pool_refused: int = 0
    loop_lag: Histogram = field(default_factory=lambda: Histogram(LAG_BOUNDS))
    timeouts: dict[str, int] = field(default_factory=dict)  # head, body, keep-alive, write
    refusals: dict[str, int] = field(default_factory=dict)  # checks.Refusal.kind
    # HTTP/2 (counted always, counters.H2Figures): streams open now (a gauge), connections
    # and streams (requests) served, responses counted by interface (metered), RST_STREAM
    # frames by who sent them, GOAWAY frames sent by kind.
    h2_streams_open: int = 0
    h2_connections: int = 0
    h2_streams: int = 0
    h2_answered: int = 0
    h2_resets: dict[str, int] = field(default_factory=dict)
    h2_goaways: dict[str, int] = field(default_factory=dict)
    # The supervisor's own, under --workers: its workers by state, and restarts by reason.
    workers: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def requests_total(self) -> int:
        return sum(self.requests.values())

    def requests_by_version(self) -> dict[str, int]:
        """Requests by HTTP version: "2" counted always, "1.1" (HTTP/1.0 too) the metered
        responses that were not HTTP/2's, so 0 while metrics are off."""
        return {"1.1": max(0, self.requests_total - self.h2_answered), "2": self.h2_streams}

    def add(self, other: Stats) -> Stats:
        """Both added up: counters and gauges summed, the longest wait the longer one."""
        durations = dict(self.request_duration)
        for interface, histogram in other.request_duration.items():
            mine = durations.get(interface)
            durations[interface] = histogram.copy() if mine is None else mine.add(histogram)
        return Stats(
            metered=self.metered and other.metered,
            shutting_down=self.shutting_down or other.shutting_down,
            connections_open=self.connections_open + other.connections_open,
            pool_threads=self.pool_threads + other.pool_threads,
            pool_busy=self.pool_busy + other.pool_busy,
            pool_waiting=self.pool_waiting + other.pool_waiting,
            pool_longest_wait=max(self.pool_longest_wait, other.pool_longest_wait),
            connections_accepted=self.connections_accepted + other.connections_accepted,
            connections_refused=self.connections_refused + other.connections_refused,
            requests=_add_counts(self.requests, other.requests),
            request_duration=durations,
            received_bytes=self.received_bytes + other.received_bytes,
            sent_bytes=self.sent_bytes + other.sent_bytes,
            pool_wait=self.pool_wait.add(other.pool_wait),
            pool_refused=self.pool_refused + other.pool_refused,
            loop_lag=self.loop_lag.add(other.loop_lag),
            timeouts=_add_counts(self.timeouts, other.timeouts),
            refusals=_add_counts(self.refusals, other.refusals),
            h2_streams_open=self.h2_streams_open + other.h2_streams_open,
            h2_connections=self.h2_connections + other.h2_connections,
            h2_streams=self.h2_streams + other.h2_streams,
            h2_answered=self.h2_answered + other.h2_answered,
            h2_resets=_add_counts(self.h2_resets, other.h2_resets),
            h2_goaways=_add_counts(self.h2_goaways, other.h2_goaways),
            workers=_add_counts(self.workers, other.workers),
            restarts=_add_counts(self.restarts, other.restarts),
        )

    def counters(self) -> Stats:
        """Only what accumulates: what a worker that has exited still contributes to a sum."""
        return dataclasses.replace(
            self,
            shutting_down=False,
            connections_open=0,
            pool_threads=0,
            pool_busy=0,
            pool_waiting=0,
            pool_longest_wait=0.0,
            h2_streams_open=0,
            workers={},
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "requests":
                value = [[interface, status, count] for (interface, status), count in value.items()]
            elif item.name == "request_duration":
                value = {interface: histogram.to_json() for interface, histogram in value.items()}
            elif isinstance(value, Histogram):
                value = value.to_json()
            data[item.name] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        return cls(
            metered=bool(data["metered"]),
            shutting_down=bool(data["shutting_down"]),
            connections_open=int(data["connections_open"]),
            pool_threads=int(data["pool_threads"]),
            pool_busy=int(data["pool_busy"]),
            pool_waiting=int(data["pool_waiting"]),
            pool_longest_wait=float(data["pool_longest_wait"]),
            connections_accepted=int(data["connections_accepted"]),
            connections_refused=int(data["connections_refused"]),
            requests={(str(i), str(s)): int(n) for i, s, n in data["requests"]},
            request_duration={
                str(interface): Histogram.from_json(DURATION_BOUNDS, histogram)
                for interface, histogram in data["request_duration"].items()
            },
            received_bytes=int(data["received_bytes"]),
            sent_bytes=int(data["sent_bytes"]),
            pool_wait=Histogram.from_json(WAIT_BOUNDS, data["pool_wait"]),
            pool_refused=int(data["pool_refused"]),
            loop_lag=Histogram.from_json(LAG_BOUNDS, data["loop_lag"]),
            timeouts=_counts(data["timeouts"]),
            refusals=_counts(data["refusals"]),
            h2_streams_open=int(data["h2_streams_open"]),
            h2_connections=int(data["h2_connections"]),
            h2_streams=int(data["h2_streams"]),
            h2_answered=int(data["h2_answered"]),
            h2_resets=_counts(data["h2_resets"]),
            h2_goaways=_counts(data["h2_goaways"]),
            workers=_counts(data["workers"]),
            restarts=_counts(data["restarts"]),
        )


def _counts(data: dict[str, Any]) -> dict[str, int]:
    return {str(key): int(value) for key, value in data.items()}


def _add_counts(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
    total = dict(a)
    for key, value in b.items():
        total[key] = total.get(key, 0) + value
    return total
