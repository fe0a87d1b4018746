"""What the server answers itself, never the application nor the thread pool: the metrics page
(`GET /metrics` on --metrics-address) and the health check (`GET --health-path`).

`answer` decides, from a method and a target alone, for every place that serves these: the
metrics listener of a server (its handler is `MetricsEndpoint`, on the event loop), the
supervisor's own listener (scrape_server.py, without a loop), and `health_first`, which
stands before the application's handler on the server's own listeners while --health-path is
set (and is not there at all otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from dualgate.http.cycle import RequestCycle
from dualgate.http.grammar import Headers
from dualgate.http.state import RequestHandler
from dualgate.metrics.prometheus import CONTENT_TYPE, render
from dualgate.metrics.snapshot import Stats

__all__ = ["METRICS_PATH", "Answer", "MetricsEndpoint", "answer", "health_first"]

METRICS_PATH = b"/metrics"
_TEXT = b"text/plain; charset=utf-8"
# A probe must see the state now, never a cached one.
_NO_STORE = (b"cache-control", b"no-store")
_ALLOW = (b"allow", b"GET, HEAD")


class Answer(NamedTuple):
    status: int
    headers: Headers
    body: bytes


def health(healthy: bool) -> Answer:
    if healthy:
        return Answer(200, [(b"content-type", _TEXT), _NO_STORE], b"ok\n")
    return Answer(503, [(b"content-type", _TEXT), _NO_STORE], b"shutting down\n")


def answer(
    method: bytes,
    target: bytes,
    *,
    health_path: bytes | None,
    healthy: Callable[[], bool],
    stats: Callable[[], Stats],
    supervisor: bool = False,
) -> Answer:
    """The answer of a metrics listener to one request."""
    path = target.partition(b"?")[0]
    if path == METRICS_PATH:
        if method not in (b"GET", b"HEAD"):
            return _not_allowed()
        return Answer(200, [(b"content-type", CONTENT_TYPE), _NO_STORE], _render(stats, supervisor))
    if health_path is not None and path == health_path:
        if method not in (b"GET", b"HEAD"):
            return _not_allowed()
        return health(healthy())
    return Answer(404, [(b"content-type", _TEXT)], b"Not Found: metrics are at /metrics\n")


def _render(stats: Callable[[], Stats], supervisor: bool) -> bytes:
    return render(stats(), supervisor=supervisor)


def _not_allowed() -> Answer:
    return Answer(405, [(b"content-type", _TEXT), _ALLOW], b"Method Not Allowed\n")


class MetricsEndpoint:
    """The handler of a server's metrics listener: answers on the loop, then the next request."""

    def __init__(
        self,
        stats: Callable[[], Stats],
        health_path: str | None,
        healthy: Callable[[], bool],
    ) -> None:
        self._stats = stats
        self._health_path = None if health_path is None else health_path.encode("ascii")
        self._healthy = healthy

    def __call__(self, cycle: RequestCycle) -> None:
        request = cycle.request
        status, headers, body = answer(
            request.method,
            request.target,
            health_path=self._health_path,
            healthy=self._healthy,
            stats=self._stats,
        )
        cycle.respond(status, headers, body)


def health_first(path: str, handler: RequestHandler, healthy: Callable[[], bool]) -> RequestHandler:
    """`handler`, with --health-path answered before it: before any routing, on the loop.

    200 while the server serves, 503 once it is stopping; so it answers while every worker
    thread is busy. Any query string is ignored; methods other than GET and HEAD get 405. A
    closure rather than a class with __call__: one test and one call per request, the least
    a request not for it can pay.
    """
    exact = path.encode("ascii")
    with_query = exact + b"?"

    def check_health(cycle: RequestCycle) -> None:
        target = cycle.request.target
        if target != exact and not target.startswith(with_query):
            handler(cycle)
            return
        if cycle.request.method in (b"GET", b"HEAD"):
            status, headers, body = health(healthy())
        else:
            status, headers, body = _not_allowed()
        cycle.respond(status, headers, body)

    return check_health
