"""Metrics under --workers: the supervisor's endpoint adds up every worker's figures, keeps what
a worker that is gone counted, and counts restarts by reason; its health answer says 503 while
the workers drain.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
from pathlib import Path

import httpx
from prometheus_client.samples import Sample

from tests.conftest import SOCKET_TIMEOUT
from tests.metrics.test_units import parse, value
from tests.processes import Process, answer, get, kill, supervised, wait_until, write_app

METRICS_LINE = re.compile(r"Supervisor metrics on http://127\.0\.0\.1:(\d+)/metrics")


def metrics_port(process: Process) -> int:
    found = METRICS_LINE.search(process.wait_for(METRICS_LINE.pattern))
    assert found is not None
    return int(found.group(1))


def scrape(port: int) -> dict[str, list[Sample]]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=SOCKET_TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.content)


def requests_served(port: int) -> float:
    """WSGI 2xx answers in the sum (0 until a worker's first snapshot has one)."""
    samples = scrape(port)["dualgate_requests"]
    labels = {"interface": "wsgi", "status": "2xx"}
    return sum(float(sample.value) for sample in samples if sample.labels == labels)


def test_the_supervisor_adds_up_every_workers_figures(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2", "--threads", "3")
    with supervised(tmp_path, *args, "--metrics-address", "127.0.0.1:0") as server:
        port, metrics = server.port(), metrics_port(server)
        server.wait_for("2 worker\\(s\\) ready")
        pids = {answer(port).pid for _ in range(20)}
        # Each worker sends its figures with its heartbeat (once a second here).
        wait_until(lambda: requests_served(metrics) == 20, 10, "20 requests in the sum")
        families = scrape(metrics)
        # Both workers' pools: the sum of two snapshots, whichever served the requests.
        assert value(families["dualgate_pool_threads"], "dualgate_pool_threads") == 6
        assert value(families["dualgate_workers"], "dualgate_workers", state="ready") == 2
        accepted = value(
            families["dualgate_connections_accepted"], "dualgate_connections_accepted_total"
        )
        assert accepted == 20
        count = "dualgate_request_duration_seconds_count"
        duration = families["dualgate_request_duration_seconds"]
        assert value(duration, count, interface="wsgi") == 20
        print(f"20 requests served by {len(pids)} worker(s), all counted")


def test_restarts_by_reason_and_nothing_lost_with_a_killed_worker(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2")
    with supervised(tmp_path, *args, "--metrics-address", "127.0.0.1:0") as server:
        port, metrics = server.port(), metrics_port(server)
        server.wait_for("2 worker\\(s\\) ready")
        served: dict[int, int] = {}
        for _ in range(20):
            pid = answer(port).pid
            served[pid] = served.get(pid, 0) + 1
        wait_until(lambda: requests_served(metrics) == 20, 10, "20 requests in the sum")
        victim = max(served, key=lambda pid: served[pid])
        before = server.children()
        mark = server.mark()
        kill(victim, signal.SIGKILL)
        server.wait_for(f"Worker {victim} died \\(killed by SIGKILL\\)", after=mark)
        wait_until(lambda: len(server.children() - before) == 1, 10, "a new worker")

        def restarted() -> bool:
            families = scrape(metrics)
            restarts = families["dualgate_worker_restarts"]
            ready = value(families["dualgate_workers"], "dualgate_workers", state="ready")
            crashed = value(restarts, "dualgate_worker_restarts_total", reason="crashed")
            return crashed == 1 and ready == 2

        wait_until(restarted, 10, "one restart for a crash, two workers ready again")
        # What the killed worker had counted (it had sent it before it died) stays in the sum.
        assert requests_served(metrics) == 20
        restarts = scrape(metrics)["dualgate_worker_restarts"]
        for reason in ("unresponsive", "failed_start", "max_requests", "reload"):
            assert value(restarts, "dualgate_worker_restarts_total", reason=reason) == 0
        answer(port)
        wait_until(lambda: requests_served(metrics) == 21, 10, "the sum going on from there")


def test_max_requests_restarts_and_health_through_a_graceful_stop(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "1", "--limit-max-requests", "3")
    options = ("--metrics-address", "127.0.0.1:0", "--health-path", "/healthz")
    with supervised(tmp_path, *args, *options) as server:
        port, metrics = server.port(), metrics_port(server)
        server.wait_for("1 worker\\(s\\) ready")
        health = f"http://127.0.0.1:{metrics}/healthz"
        assert httpx.get(health, timeout=SOCKET_TIMEOUT).text == "ok\n"
        for _ in range(7):
            answer(port)

        def retired_twice() -> bool:
            restarts = scrape(metrics)["dualgate_worker_restarts"]
            return value(restarts, "dualgate_worker_restarts_total", reason="max_requests") == 2

        wait_until(retired_twice, 15, "two workers retired after 3 requests each")
        wait_until(lambda: requests_served(metrics) == 7, 10, "7 requests in the sum")
        server.wait_for("1 worker\\(s\\) ready|Replacement done|Worker \\d+ ready", timeout=10)
        # A request in flight holds the drain open; meanwhile the supervisor says 503.
        in_flight: list[bytes] = []
        thread = threading.Thread(target=lambda: in_flight.append(get(port, "/sleep/2")[0]))
        thread.start()
        server.wait_for("sleeping in")
        server.signal(signal.SIGTERM)
        wait_until(
            lambda: httpx.get(health, timeout=SOCKET_TIMEOUT).status_code == 503,
            5,
            "health to say 503 during the drain",
        )
        assert httpx.get(health, timeout=SOCKET_TIMEOUT).text == "shutting down\n"
        stopping = scrape(metrics)["dualgate_shutting_down"]
        assert value(stopping, "dualgate_shutting_down") == 1
        thread.join(SOCKET_TIMEOUT)
        assert in_flight == [b"HTTP/1.1 200 OK"]
        assert server.wait() == 0


def test_restarts_for_a_reload_and_for_an_unresponsive_worker(tmp_path: Path) -> None:
    (tmp_path / "blocking.py").write_text(
        "import time\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    if scope['path'] == '/block':\n"
        "        time.sleep(30)  # blocks the event loop itself\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    args = ("blocking:app", "--port", "0", "--workers", "1", "--lifespan", "off")
    options = ("--timeout-worker-healthcheck", "1", "--metrics-address", "127.0.0.1:0")
    with supervised(tmp_path, *args, *options) as server:
        port, metrics = server.port(), metrics_port(server)
        server.wait_for("1 worker\\(s\\) ready")
        (first,) = server.children()
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for("Replacement done", after=mark)
        wait_until(lambda: first not in server.children(), 10, "the old worker gone")
        (stuck,) = server.children()
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as blocked:
            blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            server.wait_for(f"Worker {stuck} died \\(killed by SIGKILL\\)", after=mark)

        def counted() -> dict[str, float]:
            samples = scrape(metrics)["dualgate_worker_restarts"]
            return {s.labels["reason"]: float(s.value) for s in samples if float(s.value) != 0.0}

        wait_until(
            lambda: counted() == {"reload": 1, "unresponsive": 1},
            10,
            f"a reload and an unresponsive worker counted: {counted()}",
        )
