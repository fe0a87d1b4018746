"""The soak's checks, as pure functions of what was measured: each gives a Verdict.

The memory trend test: RSS samples of the second half of the load phase (the first half is
the allocator settling), their Theil-Sen slope (the median of the slopes between every two
samples, which a few spikes or one step cannot move much), in MiB per minute. It passes when
the slope is at most `max_slope` MiB/min, or, over a window shorter than `max_step` /
`max_slope` minutes, when the growth it implies over the window is at most `max_step` MiB: a
one-off step (an allocator arena, a buffer grown once) is not a leak, and a short window
cannot tell one from a slope. A leak keeps growing, so a longer soak only makes the test
sharper: over the 5-minute second half of a 10-minute soak, 1 MiB/min is 5 MiB.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.soak.ledger import Ledger, Range, Scrape, family
from benchmarks.soak.sampler import Sample

__all__ = [
    "Verdict",
    "back_to_baseline",
    "graceful_stop",
    "memory_trend",
    "metrics_agree",
    "no_unexpected_errors",
    "no_wrong_answers",
    "streams_closed",
    "theil_sen",
    "websockets_closed",
]

MAX_PAIRS_POINTS = 600


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def theil_sen(points: Sequence[tuple[float, float]]) -> float:
    """The median of the slopes between every two points with different x."""
    if len(points) > MAX_PAIRS_POINTS:  # evenly thinned: the pairs grow as n squared
        step = len(points) / MAX_PAIRS_POINTS
        points = [points[int(i * step)] for i in range(MAX_PAIRS_POINTS)]
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if x2 != x1
    ]
    if not slopes:
        raise ValueError("a slope needs two points with different x")
    return statistics.median(slopes)


def memory_trend(
    load: Sequence[Sample], max_slope: float = 1.0, max_step: float = 4.0, min_samples: int = 5
) -> Verdict:
    """No upward RSS trend over the second half of the load phase (see the module docstring)."""
    name = "no upward memory trend"
    half = list(load[len(load) // 2 :])
    if len(half) < min_samples:
        return Verdict(name, False, f"only {len(half)} samples in the second half of the load")
    points = [(s.seconds / 60, s.rss_kib / 1024) for s in half]
    slope = theil_sen(points)
    window = points[-1][0] - points[0][0]
    allowed = max(max_slope, max_step / window) if window > 0 else max_step
    first = list(load[: len(load) // 2])
    figures = {
        "slope_mib_per_min": round(slope, 3),
        "allowed_mib_per_min": round(allowed, 3),
        "window_min": round(window, 2),
        "growth_over_window_mib": round(slope * window, 2),
        "first_half_slope_mib_per_min": (
            round(theil_sen([(s.seconds / 60, s.rss_kib / 1024) for s in first]), 3)
            if len(first) >= 2
            else None
        ),
        "rss_mib_load_start": round(load[0].rss_kib / 1024, 1),
        "rss_mib_load_end": round(load[-1].rss_kib / 1024, 1),
        "rss_mib_peak": round(max(s.rss_kib for s in load) / 1024, 1),
    }
    detail = (
        f"Theil-Sen slope {slope:+.3f} MiB/min over the last {window:.1f} min of load "
        f"(allowed {allowed:.2f}); RSS {figures['rss_mib_load_start']} -> "
        f"{figures['rss_mib_load_end']} MiB, peak {figures['rss_mib_peak']}"
    )
    return Verdict(name, slope <= allowed, detail, figures)


def no_wrong_answers(
    done: dict[str, int], wrong: dict[str, int], samples: list[str], kinds: Sequence[str]
) -> Verdict:
    """Every answer right, and every kind of client actually ran."""
    idle_kinds = [kind for kind in kinds if not done.get(kind)]
    total_wrong = sum(wrong.values())
    passed = total_wrong == 0 and not idle_kinds
    parts = [f"{sum(done.values())} operations, {total_wrong} wrong"]
    if idle_kinds:
        parts.append(f"never completed: {', '.join(idle_kinds)}")
    if samples:
        parts.append("first: " + "; ".join(samples[:3]))
    figures = {"done": dict(done), "wrong": dict(wrong), "samples": samples}
    return Verdict("no wrong answer", passed, "; ".join(parts), figures)


def streams_closed(counters: dict[str, int]) -> Verdict:
    """Every streamed body closed (WSGI close(), the ASGI app's finally), some of them early."""
    opened, closed = counters.get("streams_opened", 0), counters.get("streams_closed", 0)
    a_opened, a_closed = (
        counters.get("asgi_streams_opened", 0),
        counters.get("asgi_streams_closed", 0),
    )
    dropped = counters.get("streams_dropped", 0)
    a_dropped = counters.get("asgi_streams_dropped", 0)
    passed = opened == closed and a_opened == a_closed and dropped > 0 and a_dropped > 0
    detail = (
        f"WSGI: {opened} streams opened, {closed} closed ({dropped} before their end); "
        f"ASGI: {a_opened} opened, {a_closed} finished ({a_dropped} before their end)"
    )
    if not (dropped and a_dropped):
        detail += "; no stream was dropped on one side, so nothing was tested there"
    return Verdict("every dropped stream closed", passed, detail, dict(counters))


def at_baseline(baseline: Sample, now: Sample) -> bool:
    """Every process of the baseline still there, none with more descriptors or threads."""
    before, after = baseline.by_pid(), now.by_pid()
    return set(before) == set(after) and all(
        after[pid][0] <= fds and after[pid][1] <= threads for pid, (fds, threads) in before.items()
    )


def back_to_baseline(baseline: Sample, after: Sample | None, settle_seconds: float) -> Verdict:
    """Descriptors and threads back to what they were before the load, once it has stopped,
    process by process (under --workers: the supervisor and each worker; a worker replaced
    meanwhile fails it)."""
    name = "descriptors and threads back to baseline"
    if after is None:
        return Verdict(name, False, "the server was gone before the check")
    passed = at_baseline(baseline, after)
    detail = (
        f"descriptors {baseline.fds} before the load, {after.fds} {settle_seconds:.1f} s after "
        f"it; threads {baseline.threads} before, {after.threads} after"
    )
    if len(baseline.by_pid()) > 1 or len(after.by_pid()) > 1:
        now = after.by_pid()

        def then(pid: int) -> str:
            return f"{now[pid][0]} fds {now[pid][1]} threads" if pid in now else "gone"

        per = "; ".join(
            f"{pid}: {fds} fds {threads} threads -> {then(pid)}"
            for pid, (fds, threads) in baseline.by_pid().items()
        )
        new = sorted(set(after.by_pid()) - set(baseline.by_pid()))
        detail += f" (per process {per}{f'; new processes {new}' if new else ''})"
    figures = {
        "fds_baseline": baseline.fds,
        "fds_after": after.fds,
        "threads_baseline": baseline.threads,
        "threads_after": after.threads,
        "settle_seconds": round(settle_seconds, 1),
    }
    return Verdict(name, passed, detail, figures)


def graceful_stop(
    in_flight: dict[str, str], exit_code: int | None, refused_after: bool, seconds: float
) -> Verdict:
    """SIGTERM with requests in flight: each finished right, new ones refused, exit 0."""
    failed = {name: result for name, result in in_flight.items() if result != "ok"}
    passed = bool(in_flight) and not failed and exit_code == 0 and refused_after
    detail = (
        f"{len(in_flight) - len(failed)} of {len(in_flight)} requests in flight finished right; "
        f"new connections {'refused' if refused_after else 'still accepted'}; "
        f"exit code {exit_code} after {seconds:.1f} s"
    )
    if failed:
        detail += "; " + "; ".join(f"{name}: {result}" for name, result in failed.items())
    figures = {"in_flight": in_flight, "exit_code": exit_code, "seconds": round(seconds, 2)}
    return Verdict("graceful SIGTERM finishes requests in flight", passed, detail, figures)


# The errors the soak provokes on purpose: its raising routes (/raise, /raise-late, /asgi/raise).
EXPECTED_ERROR = re.compile(r"Exception in (WSGI|ASGI) application (/asgi)?/raise")


def no_unexpected_errors(log: str) -> Verdict:
    """The server logged no ERROR but those the raising routes cause (and their tracebacks)."""
    errors = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    unexpected = [line for line in errors if not EXPECTED_ERROR.search(line)]
    detail = f"{len(errors)} error lines, {len(unexpected)} not caused by the raising routes"
    if unexpected:
        detail += ": " + " | ".join(line[-160:] for line in unexpected[:3])
    figures = {"errors": len(errors), "unexpected": unexpected[:20]}
    return Verdict("no unexpected server errors", not unexpected, detail, figures)


def websockets_closed(counters: dict[str, int]) -> Verdict:
    """Every WebSocket session the app accepted ended in its `finally`, some without a close."""
    opened, closed = counters.get("ws_opened", 0), counters.get("ws_closed", 0)
    lost = counters.get("ws_lost", 0)
    passed = opened == closed and opened > 0 and lost > 0
    detail = f"{opened} sessions accepted, {closed} ended in the app ({lost} without a close)"
    if not lost:
        detail += "; no session was dropped, so nothing was tested there"
    return Verdict("every WebSocket session ended", passed, detail, dict(counters))


def _requests(scrape: Scrape) -> dict[tuple[str, str], int]:
    return {
        (dict(labels).get("interface", ""), dict(labels).get("status", "")): int(value)
        for (metric, labels), value in scrape.items()
        if metric == "dualgate_requests_total"
    }


def metrics_agree(
    ledger: Ledger, scrape: Scrape, workers: int = 0, app: dict[str, int] | None = None
) -> Verdict:
    """The server's /metrics against the clients' ledger (ledger.py): requests by HTTP version
    and by interface and status class (WebSocket sessions are the 101s of "websocket"),
    HTTP/2 connections, resets by who sent them and GOAWAYs, refusals by reason; under
    --workers, every worker ready and none restarted. Each figure must lie in the range the
    clients know; any that does not is a mismatch, named."""
    checked: list[str] = []
    mismatches: list[str] = []

    def check(what: str, want: Range, got: int) -> None:
        checked.append(f"{what} {got}")
        if not want.holds(got):
            mismatches.append(f"{what}: server {got}, clients {want}")

    versions = family(scrape, "dualgate_http_requests_total", "http_version")
    by_version = ledger.by_version()
    for version in sorted(set(versions) | set(by_version) | {"1.1"}):
        check(
            f"HTTP/{version} requests", by_version.get(version, Range()), versions.get(version, 0)
        )
    requests = _requests(scrape)
    want = ledger.by_interface_and_class()
    for key in sorted(set(requests) | {k for k, r in want.items() if r.sure}):
        interface, klass = key
        what = "WebSocket sessions" if key == ("websocket", "1xx") else f"{interface} {klass}"
        check(what, want.get(key, Range()), requests.get(key, 0))
    if app is not None and "ws_opened" in app:
        check(
            "WebSocket sessions the app saw",
            Range(app["ws_opened"]),
            requests.get(("websocket", "1xx"), 0),
        )
    resets, goaways = "dualgate_http2_resets_total", "dualgate_http2_goaways_sent_total"
    h2_counts = {
        "HTTP/2 connections": ("dualgate_http2_connections_total", None, "h2_connections"),
        "HTTP/2 streams reset by the client": (resets, "client", "h2_resets_client"),
        "HTTP/2 streams reset by the server": (resets, "server", "h2_resets_server"),
        "HTTP/2 GOAWAY no_error": (goaways, "no_error", "h2_goaways_no_error"),
        "HTTP/2 GOAWAY error": (goaways, "error", "h2_goaways_error"),
    }
    for what, (metric, value, figure) in h2_counts.items():
        if value is None:
            got = int(scrape.get((metric, ()), 0))
        else:
            got = family(scrape, metric, "by" if "resets" in metric else "kind").get(value, 0)
        check(what, ledger.figure(figure), got)
    for reason, got in sorted(family(scrape, "dualgate_refusals_total", "reason").items()):
        check(f"refusals {reason}", ledger.figure(f"refusals_{reason}"), got)
    if workers:
        ready = family(scrape, "dualgate_workers", "state").get("ready", 0)
        check("workers ready", Range(workers), ready)
        restarts = sum(family(scrape, "dualgate_worker_restarts_total", "reason").values())
        check("worker restarts", Range(0), restarts)
    if not versions:
        mismatches.append("no dualgate_http_requests_total in /metrics")
    name = "the server's /metrics agree with the clients' counts"
    head = ", ".join(
        checked[:2] + [c for c in checked if c.startswith(("WebSocket", "HTTP/2 streams"))]
    )
    detail = f"{len(checked)} figures checked ({head})"
    if mismatches:
        detail = f"{len(mismatches)} of {len(checked)} figures off: " + "; ".join(mismatches)
    figures = {"ledger": ledger.to_json(), "checked": checked, "mismatches": mismatches}
    return Verdict(name, not mismatches, detail, figures)
