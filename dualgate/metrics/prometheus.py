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
from collections.abc import Callable, Sequence
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


Labels = tuple[tuple[str, str], ...]
# A family's samples: label sets with a number, or (a histogram family) with a Histogram.
Samples = Sequence[tuple[Labels, float | Histogram]]

WORKER_STATES = ("starting", "ready", "draining")


class Family(NamedTuple):
    """One metric family, said once: its name, kind and help, and how its samples are read
    from a `Stats`."""

    name: str
    kind: str  # counter, gauge or histogram
    help: str
    samples: Callable[[Stats], Samples]


def _requests(stats: Stats) -> Samples:
    return [
        ((("interface", interface), ("status", status)), count)
        for (interface, status), count in sorted(stats.requests.items())
    ]


def _durations(stats: Stats) -> Samples:
    return [
        ((("interface", interface),), histogram)
        for interface, histogram in sorted(stats.request_duration.items())
    ]


def _by_version(stats: Stats) -> Samples:
    versions = stats.requests_by_version()
    return [((("http_version", v),), versions[v]) for v in sorted(versions)]


# In the order the exposition lists them.
FAMILIES = (
    Family(
        "dualgate_connections_open",
        "gauge",
        "Client connections open now, HTTP and upgraded (WebSocket) alike.",
        lambda s: [((), s.connections_open)],
    ),
    Family(
        "dualgate_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        lambda s: [((), s.connections_accepted)],
    ),
    Family(
        "dualgate_connections_refused_total",
        "counter",
        "Connections over --limit-concurrency, answered 503 and closed.",
        lambda s: [((), s.connections_refused)],
    ),
    Family(
        "dualgate_requests_total",
        "counter",
        "Requests answered, by interface (wsgi, asgi, websocket, or server for the server's own "
        "answers) and status class (none: no response head went out).",
        _requests,
    ),
    Family(
        "dualgate_request_duration_seconds",
        "histogram",
        "Time from a request head's arrival to the end of its response (WebSocket: to the "
        "handshake answer), by interface.",
        _durations,
    ),
    Family(
        "dualgate_received_bytes_total",
        "counter",
        "HTTP bytes received: request heads and bodies, after TLS decryption.",
        lambda s: [((), s.received_bytes)],
    ),
    Family(
        "dualgate_sent_bytes_total",
        "counter",
        "HTTP bytes sent: response heads and bodies, before TLS encryption.",
        lambda s: [((), s.sent_bytes)],
    ),
    Family(
        "dualgate_pool_threads",
        "gauge",
        "WSGI pool threads (--threads); 0 without a WSGI app.",
        lambda s: [((), s.pool_threads)],
    ),
    Family(
        "dualgate_pool_threads_busy",
        "gauge",
        "WSGI pool threads running a request.",
        lambda s: [((), s.pool_busy)],
    ),
    Family(
        "dualgate_pool_requests_waiting",
        "gauge",
        "WSGI requests waiting for a free thread now.",
        lambda s: [((), s.pool_waiting)],
    ),
    Family(
        "dualgate_pool_longest_wait_seconds",
        "gauge",
        "How long the WSGI request waiting longest for a thread has waited so far.",
        lambda s: [((), s.pool_longest_wait)],
    ),
    Family(
        "dualgate_pool_wait_seconds",
        "histogram",
        "Time a WSGI request waited for a free thread before it started (0 when one was free).",
        lambda s: [((), s.pool_wait)],
    ),
    Family(
        "dualgate_pool_refused_total",
        "counter",
        "WSGI requests answered 503 because no thread freed within --timeout-worker.",
        lambda s: [((), s.pool_refused)],
    ),
    Family(
        "dualgate_event_loop_lag_seconds",
        "histogram",
        "How late the event loop ran a timer, sampled four times a second.",
        lambda s: [((), s.loop_lag)],
    ),
    Family(
        "dualgate_timeouts_total",
        "counter",
        "Connections cut off by a timeout, by kind: head, body, keep-alive, write.",
        lambda s: _every(s.timeouts, "kind", TIMEOUT_KINDS),
    ),
    Family(
        "dualgate_refusals_total",
        "counter",
        "Requests refused before the application, by reason: malformed, too_large, smuggling, "
        "unsupported, timeout, busy.",
        lambda s: _every(s.refusals, "reason", REFUSAL_REASONS),
    ),
    Family(
        "dualgate_http_requests_total",
        "counter",
        "Requests by HTTP version: 2 counted always; 1.1 (HTTP/1.0 included) while metrics are on.",
        _by_version,
    ),
    Family(
        "dualgate_http2_connections_total",
        "counter",
        "Connections served as HTTP/2 (prior knowledge on a plain port, or ALPN h2 under TLS).",
        lambda s: [((), s.h2_connections)],
    ),
    Family(
        "dualgate_http2_streams_open",
        "gauge",
        "HTTP/2 streams open now.",
        lambda s: [((), s.h2_streams_open)],
    ),
    Family(
        "dualgate_http2_resets_total",
        "counter",
        "HTTP/2 streams reset (RST_STREAM), by who sent it: client, server.",
        lambda s: _every(s.h2_resets, "by", ("client", "server")),
    ),
    Family(
        "dualgate_http2_goaways_sent_total",
        "counter",
        "HTTP/2 GOAWAY frames sent, by kind: graceful (a stop's two), no_error (idle), error.",
        lambda s: _every(s.h2_goaways, "kind", ("graceful", "no_error", "error")),
    ),
    Family(
        "dualgate_shutting_down",
        "gauge",
        "1 while the server stops gracefully, else 0.",
        lambda s: [((), 1 if s.shutting_down else 0)],
    ),
)
SUPERVISOR_FAMILIES = (
    Family(
        "dualgate_workers",
        "gauge",
        "Worker processes by state: starting, ready, draining.",
        lambda s: _every(s.workers, "state", WORKER_STATES),
    ),
    Family(
        "dualgate_worker_restarts_total",
        "counter",
        "Worker processes replaced, by reason: crashed, unresponsive, failed_start, "
        "max_requests, reload.",
        lambda s: _every(s.restarts, "reason", RESTART_REASONS),
    ),
)


def render(stats: Stats, *, supervisor: bool = False) -> bytes:
    """The exposition of `stats`; `supervisor` adds the supervisor's own families."""
    out: list[str] = []
    for meta in (*FAMILIES, *SUPERVISOR_FAMILIES) if supervisor else FAMILIES:
        out.append(f"# HELP {meta.name} {_escape_help(meta.help)}")
        out.append(f"# TYPE {meta.name} {meta.kind}")
        for labels, value in meta.samples(stats):
            if isinstance(value, Histogram):
                _histogram(out, meta.name, labels, value)
            else:
                out.append(f"{meta.name}{_labels(labels)} {_number(value)}")
    out.append("")
    return "\n".join(out).encode("utf-8")


def _histogram(out: list[str], name: str, labels: Labels, histogram: Histogram) -> None:
    cumulative = histogram.cumulative()
    for bound, count in zip((*histogram.bounds, math.inf), cumulative, strict=True):
        le = (*labels, ("le", _number(bound)))
        out.append(f"{name}_bucket{_labels(le)} {count}")
    out.append(f"{name}_sum{_labels(labels)} {_number(histogram.sum)}")
    out.append(f"{name}_count{_labels(labels)} {cumulative[-1]}")


def _every(counts: dict[str, int], label: str, known: tuple[str, ...]) -> Samples:
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
