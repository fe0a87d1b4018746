"""A `Stats` in the Prometheus text exposition format, version 0.0.4, written here.

Not with prometheus-client, for what it costs per request (README "Metrics" has the figures):
counting one request's figures through its labelled Counter and Histogram and two byte
Counters took 3.9-4.5 µs (2.0 µs with the labelled children cached), against 0.3 µs for the
plain ints and lists metrics.py keeps, when a whole hello-world request costs the server about
80 µs of CPU: the library alone would have taken the 3% allowed. Its multiprocess mode also
shares figures through files in a directory, where dualgate's workers already talk to their
supervisor over a pipe. The format is
small: a HELP and a TYPE line per family, then one line per sample.

Names follow Prometheus's conventions: a `dualgate_` prefix, base units in the name
(`_seconds`, `_bytes`), `_total` on counters. Every label value a counter can take is exposed
from zero, so the first event of a kind shows in `rate()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from dualgate.metrics.snapshot import (
    REFUSAL_REASONS,
    RESTART_REASONS,
    TIMEOUT_KINDS,
    Histogram,
    Stats,
)

__all__ = ["CONTENT_TYPE", "FAMILIES", "SUPERVISOR_FAMILIES", "Family", "render"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Family(NamedTuple):
    name: str
    kind: str  # counter, gauge or histogram
    help: str


_OPEN = Family(
    "dualgate_connections_open",
    "gauge",
    "Client connections open now, HTTP and upgraded (WebSocket) alike.",
)
_ACCEPTED = Family("dualgate_connections_accepted_total", "counter", "Client connections accepted.")
_REFUSED = Family(
    "dualgate_connections_refused_total",
    "counter",
    "Connections over --limit-concurrency, answered 503 and closed.",
)
_REQUESTS = Family(
    "dualgate_requests_total",
    "counter",
    "Requests answered, by interface (wsgi, asgi, websocket, or server for the server's own "
    "answers) and status class (none: no response head went out).",
)
_DURATION = Family(
    "dualgate_request_duration_seconds",
    "histogram",
    "Time from a request head's arrival to the end of its response (WebSocket: to the "
    "handshake answer), by interface.",
)
_RECEIVED = Family(
    "dualgate_received_bytes_total",
    "counter",
    "HTTP bytes received: request heads and bodies, after TLS decryption.",
)
_SENT = Family(
    "dualgate_sent_bytes_total",
    "counter",
    "HTTP bytes sent: response heads and bodies, before TLS encryption.",
)
_THREADS = Family(
    "dualgate_pool_threads", "gauge", "WSGI pool threads (--threads); 0 without a WSGI app."
)
_BUSY = Family("dualgate_pool_threads_busy", "gauge", "WSGI pool threads running a request.")
_WAITING = Family(
    "dualgate_pool_requests_waiting", "gauge", "WSGI requests waiting for a free thread now."
)
_LONGEST = Family(
    "dualgate_pool_longest_wait_seconds",
    "gauge",
    "How long the WSGI request waiting longest for a thread has waited so far.",
)
_WAIT = Family(
    "dualgate_pool_wait_seconds",
    "histogram",
    "Time a WSGI request waited for a free thread before it started (0 when one was free).",
)
_POOL_REFUSED = Family(
    "dualgate_pool_refused_total",
    "counter",
    "WSGI requests answered 503 because no thread freed within --timeout-worker.",
)
_LAG = Family(
    "dualgate_event_loop_lag_seconds",
    "histogram",
    "How late the event loop ran a timer, sampled four times a second.",
)
_TIMEOUTS = Family(
    "dualgate_timeouts_total",
    "counter",
    "Connections cut off by a timeout, by kind: head, body, keep-alive, write.",
)
_REFUSALS = Family(
    "dualgate_refusals_total",
    "counter",
    "Requests refused before the application, by reason: malformed, too_large, smuggling, "
    "unsupported, timeout, busy.",
)
_BY_VERSION = Family(
    "dualgate_http_requests_total",
    "counter",
    "Requests by HTTP version: 2 counted always; 1.1 (HTTP/1.0 included) while metrics are on.",
)
_H2_CONNECTIONS = Family(
    "dualgate_http2_connections_total",
    "counter",
    "Connections served as HTTP/2 (prior knowledge on a plain port, or ALPN h2 under TLS).",
)
_H2_OPEN = Family("dualgate_http2_streams_open", "gauge", "HTTP/2 streams open now.")
_H2_RESETS = Family(
    "dualgate_http2_resets_total",
    "counter",
    "HTTP/2 streams reset (RST_STREAM), by who sent it: client, server.",
)
_H2_GOAWAYS = Family(
    "dualgate_http2_goaways_sent_total",
    "counter",
    "HTTP/2 GOAWAY frames sent, by kind: graceful (a stop's two), no_error (idle), error.",
)
_STOPPING = Family(
    "dualgate_shutting_down", "gauge", "1 while the server stops gracefully, else 0."
)
_WORKERS = Family(
    "dualgate_workers", "gauge", "Worker processes by state: starting, ready, draining."
)
_RESTARTS = Family(
    "dualgate_worker_restarts_total",
    "counter",
    "Worker processes replaced, by reason: crashed, unresponsive, failed_start, "
    "max_requests, reload.",
)

FAMILIES = (
    _OPEN,
    _ACCEPTED,
    _REFUSED,
    _REQUESTS,
    _DURATION,
    _RECEIVED,
    _SENT,
    _THREADS,
    _BUSY,
    _WAITING,
    _LONGEST,
    _WAIT,
    _POOL_REFUSED,
    _LAG,
    _TIMEOUTS,
    _REFUSALS,
    _BY_VERSION,
    _H2_CONNECTIONS,
    _H2_OPEN,
    _H2_RESETS,
    _H2_GOAWAYS,
    _STOPPING,
)
SUPERVISOR_FAMILIES = (_WORKERS, _RESTARTS)
WORKER_STATES = ("starting", "ready", "draining")

Labels = tuple[tuple[str, str], ...]


def render(stats: Stats, *, supervisor: bool = False) -> bytes:
    """The exposition of `stats`; `supervisor` adds the supervisor's own families."""
    out: list[str] = []

    def family(meta: Family, samples: Iterable[tuple[Labels, float]]) -> None:
        out.append(f"# HELP {meta.name} {_escape_help(meta.help)}")
        out.append(f"# TYPE {meta.name} {meta.kind}")
        for labels, value in samples:
            out.append(f"{meta.name}{_labels(labels)} {_number(value)}")

    def histograms(meta: Family, series: Iterable[tuple[Labels, Histogram]]) -> None:
        out.append(f"# HELP {meta.name} {_escape_help(meta.help)}")
        out.append(f"# TYPE {meta.name} histogram")
        for labels, histogram in series:
            cumulative = histogram.cumulative()
            for bound, count in zip((*histogram.bounds, math.inf), cumulative, strict=True):
                le = (*labels, ("le", _number(bound)))
                out.append(f"{meta.name}_bucket{_labels(le)} {count}")
            out.append(f"{meta.name}_sum{_labels(labels)} {_number(histogram.sum)}")
            out.append(f"{meta.name}_count{_labels(labels)} {cumulative[-1]}")

    family(_OPEN, [((), stats.connections_open)])
    family(_ACCEPTED, [((), stats.connections_accepted)])
    family(_REFUSED, [((), stats.connections_refused)])
    family(
        _REQUESTS,
        [
            ((("interface", interface), ("status", status)), count)
            for (interface, status), count in sorted(stats.requests.items())
        ],
    )
    histograms(
        _DURATION,
        [
            ((("interface", interface),), histogram)
            for interface, histogram in sorted(stats.request_duration.items())
        ],
    )
    family(_RECEIVED, [((), stats.received_bytes)])
    family(_SENT, [((), stats.sent_bytes)])
    family(_THREADS, [((), stats.pool_threads)])
    family(_BUSY, [((), stats.pool_busy)])
    family(_WAITING, [((), stats.pool_waiting)])
    family(_LONGEST, [((), stats.pool_longest_wait)])
    histograms(_WAIT, [((), stats.pool_wait)])
    family(_POOL_REFUSED, [((), stats.pool_refused)])
    histograms(_LAG, [((), stats.loop_lag)])
    family(_TIMEOUTS, _every(stats.timeouts, "kind", TIMEOUT_KINDS))
    family(_REFUSALS, _every(stats.refusals, "reason", REFUSAL_REASONS))
    versions = stats.requests_by_version()
    family(_BY_VERSION, [((("http_version", v),), versions[v]) for v in sorted(versions)])
    family(_H2_CONNECTIONS, [((), stats.h2_connections)])
    family(_H2_OPEN, [((), stats.h2_streams_open)])
    family(_H2_RESETS, _every(stats.h2_resets, "by", ("client", "server")))
    family(_H2_GOAWAYS, _every(stats.h2_goaways, "kind", ("graceful", "no_error", "error")))
    family(_STOPPING, [((), 1 if stats.shutting_down else 0)])
    if supervisor:
        family(_WORKERS, _every(stats.workers, "state", WORKER_STATES))
        family(_RESTARTS, _every(stats.restarts, "reason", RESTART_REASONS))
    out.append("")
    return "\n".join(out).encode("utf-8")


def _every(
    counts: dict[str, int], label: str, known: tuple[str, ...]
) -> list[tuple[Labels, float]]:
    """Every known value (zero when it never happened), then any other that was counted."""
    values = [*known, *sorted(set(counts) - set(known))]
    return [(((label, value),), counts.get(value, 0)) for value in values]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape_value(value)}"' for name, value in labels)
    return "{" + inner + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
