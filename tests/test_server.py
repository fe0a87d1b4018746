"""ServerHooks and given sockets: what a process manager asks of a Server, in one process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dualgate import Config, Server
from dualgate.http.cycle import RequestCycle
from dualgate.server import ServerHooks
from tests.conftest import SOCKET_TIMEOUT, Reader, connect, ok_app, read_until_closed


@contextmanager
def hooked(app: Any, hooks: ServerHooks, **options: Any) -> Iterator[Server]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    config = Config(app=app, access_log=False, loop="asyncio", **options)
    server = Server(config, sockets=[listener], hooks=hooks)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert server.started.wait(SOCKET_TIMEOUT)
        assert server.startup_error is None
        yield server
    finally:
        server.shutdown()
        thread.join(SOCKET_TIMEOUT)
        assert not thread.is_alive()


def get(port: int, path: bytes = b"/") -> tuple[bytes, dict[bytes, bytes], bytes]:
    with connect(port) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        return Reader(sock).read_response()


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_ready_heartbeat_and_request_hooks() -> None:
    events: list[str] = []
    beats = threading.Semaphore(0)

    def on_request(cycle: RequestCycle) -> bool:
        events.append(cycle.request.target.decode())
        if cycle.request.target == b"/refused":
            cycle.respond_error(429, "no\n")
            return False
        return True

    hooks = ServerHooks(
        on_ready=lambda: events.append("ready"),
        on_stop=lambda: events.append("stop"),
        heartbeat=beats.release,
        heartbeat_interval=0.02,
        on_request=on_request,
        multiprocess=True,
    )

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(environ["wsgi.multiprocess"]).encode()]

    with hooked(app, hooks) as server:
        for _ in range(3):
            assert beats.acquire(timeout=SOCKET_TIMEOUT), "the loop sends heartbeats"
        assert get(server.port)[2] == b"True"
        assert get(server.port, b"/refused")[0] == b"HTTP/1.1 429 Too Many Requests"
    assert events == ["ready", "/", "/refused", "stop"]


def test_a_full_pool_stops_accepting_until_a_thread_frees() -> None:
    release = threading.Event()
    entered = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/hold":
            entered.set()
            release.wait(SOCKET_TIMEOUT)
        return ok_app(environ, start_response)

    with hooked(app, ServerHooks(pause_when_busy=True), threads=1) as server:
        state = server.state
        assert state is not None
        with connect(server.port) as held:
            held.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            assert entered.wait(SOCKET_TIMEOUT)
            with connect(server.port) as waiting:
                # The kernel completes the handshake, but the server does not accept it.
                time.sleep(0.2)
                assert len(state.connections) == 1
                release.set()
                assert Reader(held).read_response()[0] == b"HTTP/1.1 200 OK"
                wait_until(lambda: len(state.connections) == 2, "accepted once freed")
                waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert Reader(waiting).read_response()[0] == b"HTTP/1.1 200 OK"


def test_a_connection_accepted_just_before_a_stop_gets_its_request_served() -> None:
    with hooked(ok_app, ServerHooks()) as server:
        assert server.state is not None
        state = server.state
        with connect(server.port) as fresh, connect(server.port) as used:
            used.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(used).read_response()[0] == b"HTTP/1.1 200 OK"
            wait_until(lambda: len(state.connections) == 2, "both accepted")
            server.shutdown()
            # The idle keep-alive connection is closed at once; the fresh one is not...
            assert read_until_closed(used) == b""
            time.sleep(0.1)
            # ...and its request, sent after the stop began, is answered, then it closes.
            fresh.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = Reader(fresh).read_response()
            assert (status, body) == (b"HTTP/1.1 200 OK", b"ok")
            assert read_until_closed(fresh) == b""
