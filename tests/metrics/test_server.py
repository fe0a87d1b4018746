"""Metrics and health over real sockets: the page is answered by the loop while every worker
thread is held, reads back as valid Prometheus text, and every figure moves as it should.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
import pytest
from prometheus_client.samples import Sample

from dualgate import Server
from dualgate.http.connection import HTTPProtocol
from dualgate.wsgi.pool import ThreadPool
from dualgate.wsgi.threads import WSGIHandler
from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    Receive,
    Scope,
    Send,
    ServeFactory,
    asgi_app,
    connect,
    read_until_closed,
)
from tests.metrics.test_units import Captured, parse, value
from tests.ws_support import echo_app, open_websocket
from tests.wsgi_feeders import RawConnection

WAIT = 5.0
METRICS = "127.0.0.1:0"


class BlockingApp:
    """/block holds its thread until `release`; /missing is a 404; /boom raises; else 200."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/block":
            self.entered.release()
            if not self.release.wait(WAIT * 2):
                raise RuntimeError("never released")
        elif path == "/boom":
            raise RuntimeError("boom")
        elif path == "/missing":
            start_response("404 Not Found", [("Content-Length", "0")])
            return []
        elif path == "/healthz":
            start_response("418 I'm a teapot", [("Content-Length", "6")])
            return [b"teapot"]
        elif path == "/large":
            start_response("200 OK", [("Content-Length", str(64 << 20))])
            return (b"x" * (1 << 20) for _ in range(64))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]

    def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=WAIT), "a request never reached the app"


@pytest.fixture
def app() -> Iterator[BlockingApp]:
    blocking = BlockingApp()
    yield blocking
    blocking.release.set()


def metrics_url(server: Server) -> str:
    host, port = server.metrics_addresses[0][:2]
    return f"http://{host}:{port}"


def scrape(server: Server) -> dict[str, list[Sample]]:
    response = httpx.get(metrics_url(server) + "/metrics", timeout=SOCKET_TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.content)


def figure(server: Server, family: str, name: str | None = None, **labels: str) -> float:
    return value(scrape(server)[family], name or family, **labels)


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def get(port: int, path: str, method: str = "GET") -> tuple[bytes, dict[bytes, bytes], bytes]:
    with connect(port) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return Reader(sock).read_response(head=method == "HEAD")


# -- answered by the loop ---------------------------------------------------------------------


def test_metrics_and_health_answer_while_every_thread_is_held(
    serve: ServeFactory, app: BlockingApp
) -> None:
    server = serve(
        app, threads=2, timeout_worker=WAIT, metrics_address=METRICS, health_path="/healthz"
    )
    url = f"http://127.0.0.1:{server.port}"
    with RawConnection(url) as first, RawConnection(url) as second, RawConnection(url) as third:
        first.request("GET", "/block")
        second.request("GET", "/block")
        app.wait_entered(2)
        third.request("GET", "/")  # waits for a thread
        eventually(lambda: server.stats().pool_waiting == 1, "a request waiting for a thread")
        time.sleep(0.05)
        families = scrape(server)
        assert value(families["dualgate_pool_threads"], "dualgate_pool_threads") == 2
        assert value(families["dualgate_pool_threads_busy"], "dualgate_pool_threads_busy") == 2
        waiting = families["dualgate_pool_requests_waiting"]
        assert value(waiting, "dualgate_pool_requests_waiting") == 1
        longest = families["dualgate_pool_longest_wait_seconds"]
        assert value(longest, "dualgate_pool_longest_wait_seconds") >= 0.05
        assert value(families["dualgate_connections_open"], "dualgate_connections_open") == 3
        # The health answer on the application's own port needs no thread either.
        status, headers, body = get(server.port, "/healthz")
        assert (status, body) == (b"HTTP/1.1 200 OK", b"ok\n")
        assert headers[b"cache-control"] == b"no-store"
        app.release.set()
        for connection in (first, second, third):
            assert connection.read_response().status == 200
    waits = scrape(server)["dualgate_pool_wait_seconds"]
    assert value(waits, "dualgate_pool_wait_seconds_count") == 3
    # Two got a thread at once (the first bucket), one waited until the release.
    assert value(waits, "dualgate_pool_wait_seconds_bucket", le="0.001") == 2
    assert value(waits, "dualgate_pool_wait_seconds_sum") >= 0.05


def test_the_metrics_listener_answers_only_its_paths(serve: ServeFactory, app: BlockingApp) -> None:
    server = serve(app, metrics_address=METRICS)
    base = metrics_url(server)
    head = httpx.head(base + "/metrics", timeout=SOCKET_TIMEOUT)
    assert head.status_code == 200 and head.content == b""
    assert httpx.post(base + "/metrics", timeout=SOCKET_TIMEOUT).status_code == 405
    assert httpx.get(base + "/", timeout=SOCKET_TIMEOUT).status_code == 404
    assert httpx.get(base + "/healthz", timeout=SOCKET_TIMEOUT).status_code == 404  # not set
    assert httpx.get(base + "/metrics?x=1", timeout=SOCKET_TIMEOUT).status_code == 200
    # Scrapes are not the application's requests: nothing counted for them.
    stats = server.stats()
    assert stats.requests == {} and stats.connections_accepted == 0


# -- the figures ------------------------------------------------------------------------------


def test_requests_bytes_and_durations_are_counted_exactly(
    serve: ServeFactory, app: BlockingApp
) -> None:
    server = serve(app, metrics_address=METRICS)
    close = b"Host: x\r\nConnection: close\r\n"
    requests = [
        b"GET / HTTP/1.1\r\n" + close + b"\r\n",
        b"GET /missing HTTP/1.1\r\n" + close + b"\r\n",
        b"POST / HTTP/1.1\r\n" + close + b"Content-Length: 4\r\n\r\nbody",
        b"GET /boom HTTP/1.1\r\n" + close + b"\r\n",
    ]
    answers = []
    for data in requests:
        with connect(server.port) as sock:
            sock.sendall(data)
            # Closed by the server after the response, which is counted before it closes.
            answers.append(read_until_closed(sock))
    statuses = [answer[:12] for answer in answers]
    assert statuses == [b"HTTP/1.1 200", b"HTTP/1.1 404", b"HTTP/1.1 200", b"HTTP/1.1 500"]
    stats = server.stats()
    assert stats.metered
    assert stats.requests == {("wsgi", "2xx"): 2, ("wsgi", "4xx"): 1, ("wsgi", "5xx"): 1}
    assert stats.request_duration["wsgi"].count == 4
    assert stats.connections_accepted == 4
    assert stats.received_bytes == sum(len(data) for data in requests)
    assert stats.sent_bytes == sum(len(answer) for answer in answers)
    families = scrape(server)
    received = value(families["dualgate_received_bytes"], "dualgate_received_bytes_total")
    assert received == stats.received_bytes
    sent = value(families["dualgate_sent_bytes"], "dualgate_sent_bytes_total")
    assert sent == stats.sent_bytes
    count = "dualgate_request_duration_seconds_count"
    assert value(families["dualgate_request_duration_seconds"], count, interface="wsgi") == 4
    counted = families["dualgate_requests"]
    assert value(counted, "dualgate_requests_total", interface="wsgi", status="4xx") == 1


def test_refusals_and_timeouts_by_kind(serve: ServeFactory, app: BlockingApp) -> None:
    server = serve(
        app,
        metrics_address=METRICS,
        max_head_size=1024,
        timeout_request_head=0.3,
        timeout_keep_alive=0.3,
        timeout_read=0.3,
    )
    port = server.port
    # 431: a head over --max-head-size.
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    with connect(port) as sock:
        sock.sendall(big)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")
    # Content-Length with Transfer-Encoding: a smuggling shape.
    with connect(port) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    # 408: half a head, then nothing.
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost:")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    # A body that stalls.
    with connect(port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        assert read_until_closed(sock) == b""
    # An idle keep-alive connection.
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    families = scrape(server)
    refusals = families["dualgate_refusals"]
    expected = {"too_large": 1, "smuggling": 1, "timeout": 1, "malformed": 0, "busy": 0}
    for reason, count in expected.items():
        assert value(refusals, "dualgate_refusals_total", reason=reason) == count, reason
    timeouts = families["dualgate_timeouts"]
    for kind, count in {"head": 1, "body": 1, "keep-alive": 1, "write": 0}.items():
        assert value(timeouts, "dualgate_timeouts_total", kind=kind) == count, kind


def test_a_client_that_takes_no_bytes_is_a_write_timeout(
    serve: ServeFactory, app: BlockingApp
) -> None:
    server = serve(app, metrics_address=METRICS, timeout_write=0.3)
    with connect(server.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n")
        eventually(lambda: server.stats().timeouts.get("write") == 1, "a write timeout")
    assert figure(server, "dualgate_timeouts", "dualgate_timeouts_total", kind="write") == 1


def test_a_full_pool_503_and_a_connection_over_the_limit(
    serve: ServeFactory, app: BlockingApp
) -> None:
    server = serve(app, threads=1, timeout_worker=0.2, limit_concurrency=2, metrics_address=METRICS)
    url = f"http://127.0.0.1:{server.port}"
    with RawConnection(url) as holder, RawConnection(url) as refused:
        holder.request("GET", "/block")
        app.wait_entered(1)
        refused.request("GET", "/")
        assert refused.read_response().status == 503
        # Two connections are open: a third is over --limit-concurrency.
        with connect(server.port) as third:
            third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_until_closed(third).startswith(b"HTTP/1.1 503 ")
        app.release.set()
        assert holder.read_response().status == 200
    stats = server.stats()
    assert stats.pool_refused == 1
    assert stats.connections_refused == 1
    assert stats.refusals.get("busy") == 1
    assert stats.requests[("wsgi", "5xx")] == 1  # the pool's 503 is the WSGI handler's answer
    families = scrape(server)
    assert value(families["dualgate_pool_refused"], "dualgate_pool_refused_total") == 1
    refused_total = "dualgate_connections_refused_total"
    assert value(families["dualgate_connections_refused"], refused_total) == 1


def test_asgi_requests_and_websockets_count_by_interface(serve: ServeFactory) -> None:
    server = serve(echo_app(), metrics_address=METRICS)
    status, _, _ = get(server.port, "/")
    assert status == b"HTTP/1.1 200 OK"
    with open_websocket(server.port, "/chat") as peer:
        peer.sock.sendall(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")  # Close 1000
        peer.expect_close()
    eventually(lambda: server.stats().connections_open == 0, "the WebSocket closed")
    families = scrape(server)
    requests = families["dualgate_requests"]
    assert value(requests, "dualgate_requests_total", interface="asgi", status="2xx") == 1
    assert value(requests, "dualgate_requests_total", interface="websocket", status="1xx") == 1
    count = "dualgate_request_duration_seconds_count"
    duration = families["dualgate_request_duration_seconds"]
    assert value(duration, count, interface="websocket") == 1


def test_mounts_count_each_application_by_its_interface(
    serve: ServeFactory, tmp_path: Path
) -> None:
    (tmp_path / "metrics_mounts.py").write_text(
        "def wsgi(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '1')])\n"
        "    return [b'w']\n"
        "async def asgi(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 201, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'a'})\n"
    )
    server = serve(
        None,
        mount=("/w=metrics_mounts:wsgi", "/a=metrics_mounts:asgi"),
        app_dir=str(tmp_path),
        lifespan="off",
        metrics_address=METRICS,
    )
    assert get(server.port, "/w/")[0] == b"HTTP/1.1 200 OK"
    assert get(server.port, "/a/")[0] == b"HTTP/1.1 201 Created"
    assert get(server.port, "/nowhere")[0] == b"HTTP/1.1 404 Not Found"
    # A response is counted once its last byte is written, which the client may read first.
    expected = {("wsgi", "2xx"): 1, ("asgi", "2xx"): 1, ("server", "4xx"): 1}
    eventually(lambda: server.stats().requests == expected, f"{expected}")


def test_a_blocked_loop_shows_as_lag(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        time.sleep(0.6)  # holds the loop: what an application must never do
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    server = serve(asgi_app(handler), metrics_address=METRICS)
    time.sleep(0.6)  # a few quiet samples first
    get(server.port, "/")
    lag = scrape(server)["dualgate_event_loop_lag_seconds"]
    total = value(lag, "dualgate_event_loop_lag_seconds_count")
    assert total >= 3
    # A timer due while the loop was held ran over a quarter of a second late.
    assert value(lag, "dualgate_event_loop_lag_seconds_bucket", le="0.25") < total


# -- health -----------------------------------------------------------------------------------


def test_health_is_answered_before_the_application(serve: ServeFactory, app: BlockingApp) -> None:
    server = serve(app, health_path="/healthz")  # the app's own /healthz is a 418
    status, headers, body = get(server.port, "/healthz")
    assert (status, body) == (b"HTTP/1.1 200 OK", b"ok\n")
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"server"] == b"dualgate"
    assert get(server.port, "/healthz?probe=1")[2] == b"ok\n"
    assert get(server.port, "/healthz", "HEAD")[0] == b"HTTP/1.1 200 OK"
    assert get(server.port, "/healthz", "POST")[0] == b"HTTP/1.1 405 Method Not Allowed"
    assert get(server.port, "/healthz/deeper")[0] == b"HTTP/1.1 200 OK"  # the app's: "hello"
    # Counted while metrics are off? No: the per-request figures need metrics on.
    assert server.stats().requests == {}


def test_health_says_503_throughout_a_graceful_stop(serve: ServeFactory, app: BlockingApp) -> None:
    server = serve(app, health_path="/healthz", metrics_address=METRICS)
    health = metrics_url(server) + "/healthz"
    assert httpx.get(health, timeout=SOCKET_TIMEOUT).status_code == 200
    url = f"http://127.0.0.1:{server.port}"
    with RawConnection(url) as busy, connect(server.port) as probe:
        busy.request("GET", "/block")
        app.wait_entered(1)
        eventually(lambda: server.stats().connections_open == 2, "the probe's connection")
        server.shutdown()  # the request in flight holds the stop open
        eventually(lambda: server.stats().shutting_down, "the stop to begin")
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = Reader(probe).read_response()
        assert (status, body) == (b"HTTP/1.1 503 Service Unavailable", b"shutting down\n")
        answer = httpx.get(health, timeout=SOCKET_TIMEOUT)
        assert (answer.status_code, answer.text) == (503, "shutting down\n")
        stopping = scrape(server)["dualgate_shutting_down"]
        assert value(stopping, "dualgate_shutting_down") == 1
        app.release.set()
        assert busy.read_response().status == 200


# -- the pool warning -------------------------------------------------------------------------


def test_the_pool_warning_comes_at_most_once_per_interval(
    serve: ServeFactory, app: BlockingApp
) -> None:
    def warnings() -> list[tuple[float, str]]:
        said = zip(captured.times, captured.messages, strict=True)
        return [(at, m) for at, m in said if m.startswith("WSGI requests are waiting")]

    with Captured("dualgate.error") as captured:
        server = serve(app, threads=1, timeout_worker=WAIT, pool_warning_interval=2.0)
        url = f"http://127.0.0.1:{server.port}"
        with RawConnection(url) as holder, RawConnection(url) as waiting:
            holder.request("GET", "/block")
            app.wait_entered(1)
            waiting.request("GET", "/")
            time.sleep(4.2)  # four checks of the pool, a second apart: two warnings
            app.release.set()
            assert holder.read_response().status == 200
            assert waiting.read_response().status == 200
        time.sleep(2.2)  # two more checks: nothing waits, nothing is said
    said = [m for _, m in warnings()]
    assert all(" 1 waiting now" in m or "; 0 waited and 0 got" not in m for m in said), said
    times = [at for at, _ in warnings()]
    assert len(times) >= 2, warnings()
    # Never two within the interval (record times come from another clock: a little slack).
    assert all(later - earlier > 1.95 for earlier, later in itertools.pairwise(times)), times
    first = warnings()[0][1]
    assert "1 threads, 1 busy, 1 waiting now, longest wait" in first
    assert "(--threads may be too low)" in first


# -- metrics off ------------------------------------------------------------------------------


def test_with_metrics_off_nothing_metered_is_built(serve: ServeFactory, app: BlockingApp) -> None:
    server = serve(app, max_head_size=1024)
    assert server.metrics_addresses == []
    assert type(server._wiring.pool) is ThreadPool
    state = server.state
    assert state is not None
    assert type(state.handler) is WSGIHandler  # no tag, no health check in front of it
    seen: list[type[Any]] = []
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        Reader(sock).read_response()
        seen = [type(connection) for connection in state.connections]
    # The plain protocol, with buffered reads added on the asyncio loop (reading_class).
    assert [cls.__mro__[1] for cls in seen] == [HTTPProtocol]
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")
    stats = server.stats()
    # The free figures are there; the per-request ones are not counted.
    assert not stats.metered
    assert stats.refusals == {"too_large": 1}
    assert (stats.pool_threads, stats.pool_busy) == (16, 0)
    assert stats.requests == {} and stats.connections_accepted == 0 and stats.received_bytes == 0


def test_stats_before_and_after_serving(app: BlockingApp) -> None:
    from dualgate import Config

    server = Server(Config(app=app, port=0, metrics_address=METRICS, loop="asyncio"))
    before = server.stats()
    assert before.metered and before.connections_open == 0 and before.pool_threads == 0
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.started.wait(SOCKET_TIMEOUT)
    assert get(server.port, "/")[0] == b"HTTP/1.1 200 OK"
    server.shutdown()
    thread.join(SOCKET_TIMEOUT)
    after = server.stats()
    assert after.requests == {("wsgi", "2xx"): 1}
    assert after.pool_threads == 16
    with pytest.raises(httpx.TransportError):
        httpx.get(metrics_url(server) + "/metrics", timeout=1.0)
