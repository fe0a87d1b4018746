"""The figures in memory: histograms, snapshots and their sums, the exposition text (read back
with prometheus-client's own parser), the pool's counting, and the worker-to-supervisor framing.
The same figures over real sockets are in test_metrics_server.py and test_metrics_supervisor.py.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import math
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import dualgate
from dualgate.config import Config, ConfigError, parse_host_port
from dualgate.http.flow import Deadline
from dualgate.metrics.counters import Metrics
from dualgate.metrics.prometheus import FAMILIES, SUPERVISOR_FAMILIES, render
from dualgate.metrics.snapshot import (
    DURATION_BOUNDS,
    REFUSAL_REASONS,
    TIMEOUT_KINDS,
    WAIT_BOUNDS,
    Histogram,
    Stats,
    status_class,
)
from dualgate.procs.messages import BEAT, READY, read_snapshot, snapshot_message
from dualgate.procs.supervisor import Supervisor, Worker
from dualgate.server import Server
from dualgate.wsgi.pool import CountingThreadPool, PoolWarning, ThreadPool

PACKAGE = Path(dualgate.__file__).parent
README = PACKAGE.parent / "README.md"


def parse(text: bytes) -> dict[str, list[Sample]]:
    """Every sample of an exposition by family name, as Prometheus's own parser reads it."""
    families = text_string_to_metric_families(text.decode("utf-8"))
    return {family.name: list(family.samples) for family in families}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return float(found[0])


# -- histograms and snapshots ---------------------------------------------------------------


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for sample in (0.05, 0.1, 0.5, 1.0, 2.0, math.inf):
        histogram.observe(sample)
    assert histogram.counts == [2, 2, 2]  # le=0.1 holds 0.1 itself; +Inf the rest
    assert histogram.cumulative() == [2, 4, 6]
    assert histogram.count == 6


def test_histograms_with_different_buckets_do_not_add() -> None:
    with pytest.raises(ValueError):
        Histogram((1.0,)).add(Histogram((2.0,)))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, "none"),
        (101, "1xx"),
        (200, "2xx"),
        (304, "3xx"),
        (431, "4xx"),
        (599, "5xx"),
        (999, "none"),
    ],
)
def test_status_classes(status: int, expected: str) -> None:
    assert status_class(status) == expected


def _busy_stats() -> Stats:
    metrics = Metrics(metered=True)
    metrics.response("wsgi", 200, 0.0004)
    metrics.response("wsgi", 503, 0.2)
    metrics.response("asgi", 0, 1.5)
    metrics.refused("too_large")
    metrics.timed_out("head")
    metrics.received_bytes = 100
    metrics.sent_bytes = 50
    metrics.sendfile_bytes = 7
    metrics.loop_lag.observe(0.002)
    return metrics.snapshot(connections_open=3, shutting_down=False, pool=None)


def test_a_metered_snapshot_has_every_figure() -> None:
    stats = _busy_stats()
    assert stats.metered
    assert stats.requests == {("wsgi", "2xx"): 1, ("wsgi", "5xx"): 1, ("asgi", "none"): 1}
    assert stats.requests_total == 3
    assert stats.request_duration["wsgi"].count == 2
    assert stats.request_duration["asgi"].sum == 1.5
    assert stats.sent_bytes == 57  # what was written, and what the OS sent from files
    assert stats.refusals == {"too_large": 1}
    assert stats.timeouts == {"head": 1}
    assert stats.loop_lag.count == 1


def test_an_unmetered_snapshot_keeps_only_the_free_figures() -> None:
    metrics = Metrics(metered=False)
    metrics.refused("smuggling")
    metrics.timed_out("keep-alive")
    metrics.connections_refused = 2
    metrics.sendfile_bytes = 1000  # counted, but reported only with everything else written
    stats = metrics.snapshot(connections_open=1, shutting_down=True, pool=None)
    assert not stats.metered
    assert (stats.refusals, stats.timeouts) == ({"smuggling": 1}, {"keep-alive": 1})
    assert (stats.connections_refused, stats.connections_open, stats.shutting_down) == (2, 1, True)
    assert stats.sent_bytes == 0 and stats.requests == {} and stats.loop_lag.count == 0


def test_snapshots_add_up_and_survive_json() -> None:
    one = _busy_stats()
    two = Stats.from_json(one.to_json())
    assert two == one
    total = one.add(two)
    assert total.requests == {("wsgi", "2xx"): 2, ("wsgi", "5xx"): 2, ("asgi", "none"): 2}
    assert total.request_duration["wsgi"].count == 4
    assert total.connections_open == 6
    assert total.refusals == {"too_large": 2}
    gone = total.counters()
    assert gone.connections_open == 0 and gone.requests == total.requests


# -- the exposition ---------------------------------------------------------------------------


def test_the_exposition_parses_and_says_what_the_snapshot_says() -> None:
    stats = _busy_stats()
    stats.pool_threads, stats.pool_busy, stats.pool_waiting = 4, 4, 2
    stats.pool_longest_wait = 1.25
    text = render(stats)
    assert text.endswith(b"\n")
    families = parse(text)
    names = {meta.name.removesuffix("_total") for meta in FAMILIES}
    assert set(families) == names
    requests = families["dualgate_requests"]
    assert value(requests, "dualgate_requests_total", interface="wsgi", status="5xx") == 1
    duration = families["dualgate_request_duration_seconds"]
    count = "dualgate_request_duration_seconds_count"
    assert value(duration, count, interface="wsgi") == 2
    bucket = "dualgate_request_duration_seconds_bucket"
    assert value(duration, bucket, interface="wsgi", le="0.001") == 1
    assert value(duration, bucket, interface="wsgi", le="+Inf") == 2
    longest = families["dualgate_pool_longest_wait_seconds"]
    assert value(longest, "dualgate_pool_longest_wait_seconds") == 1.25
    # Every reason and kind is there from zero, so the first event of each shows in rate().
    refusals = families["dualgate_refusals"]
    for reason in REFUSAL_REASONS:
        expected = 1 if reason == "too_large" else 0
        assert value(refusals, "dualgate_refusals_total", reason=reason) == expected
    timeouts = families["dualgate_timeouts"]
    assert {s.labels["kind"] for s in timeouts} == set(TIMEOUT_KINDS)
    assert b"dualgate_workers" not in text


def test_the_supervisor_exposition_adds_workers_and_restarts() -> None:
    stats = Stats(metered=True, workers={"ready": 2}, restarts={"crashed": 1})
    families = parse(render(stats, supervisor=True))
    assert value(families["dualgate_workers"], "dualgate_workers", state="ready") == 2
    assert value(families["dualgate_workers"], "dualgate_workers", state="starting") == 0
    restarts = families["dualgate_worker_restarts"]
    assert value(restarts, "dualgate_worker_restarts_total", reason="crashed") == 1
    assert value(restarts, "dualgate_worker_restarts_total", reason="reload") == 0


def test_every_metric_is_in_the_readme() -> None:
    readme = README.read_text()
    for meta in (*FAMILIES, *SUPERVISOR_FAMILIES):
        assert f"`{meta.name}`" in readme, meta.name


def test_the_label_values_are_the_ones_the_core_uses() -> None:
    assert set(TIMEOUT_KINDS) == {kind.value for kind in Deadline if kind is not Deadline.NONE}
    kinds: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if "from dualgate.http.checks import" not in source and path.name != "checks.py":
            continue  # ws/handshake.py has a Refusal of its own, without kinds
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Refusal"
                and len(node.args) == 3
                and isinstance(node.args[2], ast.Constant)
                and isinstance(node.args[2].value, str)
            ):
                kinds.add(node.args[2].value)
    assert kinds == set(REFUSAL_REASONS)


# -- the pool ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_pool_counts_waits_refusals_and_at_once_starts() -> None:
    loop = asyncio.get_running_loop()
    pool = CountingThreadPool(1, name="test-counting-pool")
    try:
        ran: list[str] = []
        refused: list[str] = []
        release = asyncio.Event()

        def job(name: str) -> None:
            ran.append(name)
            loop.call_soon_threadsafe(release.set)

        pool.submit(lambda: job("first"), lambda: refused.append("first"), 0, loop)
        await asyncio.wait_for(release.wait(), 5)
        # The thread is still taken until release(): the next job waits, the one after that
        # may not wait at all and is refused.
        release.clear()
        pool.submit(lambda: job("second"), lambda: refused.append("second"), 5, loop)
        pool.submit(lambda: job("third"), lambda: refused.append("third"), 0, loop)
        figures = pool.figures()
        assert (figures.busy, figures.waiting, figures.refused) == (1, 1, 1)
        assert refused == ["third"]
        await asyncio.sleep(0.05)
        assert pool.figures().longest_wait >= 0.04
        pool.release()  # the first job is done: the waiting one takes its thread
        await asyncio.wait_for(release.wait(), 5)
        pool.release()
        figures = pool.figures()
        assert ran == ["first", "second"]
        assert figures.at_once == 1
        assert figures.waits.count == 1 and figures.waits.sum >= 0.04
        assert (figures.busy, figures.waiting) == (0, 0)
    finally:
        pool.shutdown(5)


def test_a_plain_pool_counts_no_at_once_starts() -> None:
    pool = ThreadPool(1, name="test-plain-pool")
    try:
        assert pool.figures().at_once == 0
        assert pool.figures().waits.bounds == WAIT_BOUNDS
    finally:
        pool.shutdown(5)


class Captured(logging.Handler):
    """The messages of one logger, attached to it directly: a server started earlier in the
    session may have stopped dualgate.error propagating (logs.configure_logging)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.times: list[float] = []  # each message's record.created
        self._logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.times.append(record.created)

    def __enter__(self) -> Captured:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)


@pytest.mark.asyncio
async def test_the_pool_warning_is_said_at_most_once_per_interval() -> None:
    loop = asyncio.get_running_loop()
    pool = ThreadPool(1, name="test-warning-pool")
    try:
        warning = PoolWarning(pool, interval=10.0)
        warning.check(time.monotonic())  # nothing waited: nothing said
        pool.submit(lambda: None, lambda: None, 0, loop)
        pool.submit(lambda: None, lambda: None, 5, loop)  # waits: the thread is not released
        with Captured("dualgate.error") as captured:
            now = time.monotonic()
            warning.check(now)
            warning.check(now + 1)
            warning.check(now + 9.9)
            assert len(captured.messages) == 1
            assert "1 threads, 1 busy, 1 waiting now" in captured.messages[0]
            assert "1 waited and 0 got a 503" in captured.messages[0]
            warning.check(now + 10)  # the next interval, still waiting
            assert len(captured.messages) == 2
        pool.release()
        pool.release()
    finally:
        pool.shutdown(5)


# -- worker to supervisor ---------------------------------------------------------------------


def test_snapshots_are_framed_on_the_pipe_however_the_reads_split_them() -> None:
    stats = _busy_stats()
    last = Stats(metered=True, connections_open=1)
    stream = BEAT + snapshot_message(stats) + READY + snapshot_message(last)
    assert read_snapshot(snapshot_message(stats)[:3]) == (None, 0)
    supervisor = Supervisor(Config(app="x:y", workers=1), Server)
    try:
        for cut in range(len(stream) + 1):
            worker = Worker(pid=1, channel=-1, generation=0, started=0.0)
            supervisor._on_messages(worker, stream[:cut])
            assert worker.stats in (None, stats, last)  # a whole snapshot or none
            supervisor._on_messages(worker, worker.buffer + stream[cut:])
            assert worker.state.value == "ready"
            assert worker.stats == last
            assert worker.buffer == b""
    finally:
        supervisor._selector.close()
        os.close(supervisor._wakeup_r)
        os.close(supervisor._wakeup_w)


def test_config_checks_the_new_flags() -> None:
    assert parse_host_port("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_host_port("[::1]:0") == ("::1", 0)
    assert parse_host_port("localhost:80") == ("localhost", 80)
    for bad in ("9100", ":9100", "::1:9100", "host:port", "host:70000", "[]:1"):
        with pytest.raises(ConfigError, match="--metrics-address"):
            Config(app="x:y", metrics_address=bad)
    for bad in ("healthz", "/a b", "/h?x=1", "/é"):
        with pytest.raises(ConfigError, match="--health-path"):
            Config(app="x:y", health_path=bad)
    with pytest.raises(ConfigError, match="--pool-warning-interval"):
        Config(app="x:y", pool_warning_interval=-1)
    assert tuple(sorted(DURATION_BOUNDS)) == DURATION_BOUNDS
