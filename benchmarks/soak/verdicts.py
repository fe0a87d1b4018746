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

from benchmarks.soak.sampler import Sample

__all__ = [
    "Verdict",
    "back_to_baseline",
    "graceful_stop",
    "memory_trend",
    "no_unexpected_errors",
    "no_wrong_answers",
    "streams_closed",
    "theil_sen",
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


def back_to_baseline(baseline: Sample, after: Sample | None, settle_seconds: float) -> Verdict:
    """Descriptors and threads back to what they were before the load, once it has stopped."""
    name = "descriptors and threads back to baseline"
    if after is None:
        return Verdict(name, False, "the server was gone before the check")
    passed = after.fds <= baseline.fds and after.threads <= baseline.threads
    detail = (
        f"descriptors {baseline.fds} before the load, {after.fds} {settle_seconds:.1f} s after "
        f"it; threads {baseline.threads} before, {after.threads} after"
    )
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
