"""The request that reaches gunicorn's --max-requests is the last one a worker accepts.

The worker's request hook (`dualgate.procs.gunicorn.Worker._on_request`, and dualgate's own
worker for --limit-max-requests) asks its server to stop from the loop's own thread. A
connection that arrives before the graceful stop has run must stay in the shared socket's queue
for the next worker: accepted by this one, it was served past the limit (a worker answered four
requests with --max-requests 3, which made `test_gunicorn_serves_flask_with_max_requests` fail
now and then on a loaded machine, with uvloop, gunicorn's default loop when installed).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from typing import Literal

import pytest

from dualgate.config import Config
from dualgate.hooks import ServerHooks
from dualgate.http.cycle import RequestCycle
from dualgate.server import Server
from tests.conftest import SOCKET_TIMEOUT, Reader, connect, ok_app

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
        ),
    ),
]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_arriving_after_the_last_request_waits_for_the_next_worker(
    loop: Literal["asyncio", "uvloop"],
) -> None:
    # The arbiter's listening socket, and the worker's own handle on it (gunicorn's workers
    # inherit it by fork; here a duplicate descriptor plays that part).
    arbiter = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    arbiter.bind(("127.0.0.1", 0))
    arbiter.listen()
    port = arbiter.getsockname()[1]
    shared = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=os.dup(arbiter.fileno()))
    late: list[socket.socket] = []
    server: Server

    def last_request(cycle: RequestCycle) -> bool:
        if not late:
            server.shutdown()  # what a worker does on its --max-requests'th request
            # A client connects right then: loopback completes the handshake at once, so the
            # listening socket is readable before the graceful stop has run.
            sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
            sock.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
            late.append(sock)
        return True

    hooks = ServerHooks(on_request=last_request, pause_when_busy=True)
    server = Server(Config(app=ok_app, access_log=False, loop=loop), sockets=[shared], hooks=hooks)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert server.started.wait(SOCKET_TIMEOUT)
        assert server.startup_error is None
        with connect(port) as first:
            first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(first).read_response()[0] == b"HTTP/1.1 200 OK"
        thread.join(SOCKET_TIMEOUT)
        assert not thread.is_alive(), "the worker did not stop"
        assert len(late) == 1
        # The worker is gone; the late connection is still in the queue, its request unread:
        # the next worker takes it.
        arbiter.settimeout(SOCKET_TIMEOUT)
        accepted, _ = arbiter.accept()
        with accepted:
            accepted.settimeout(SOCKET_TIMEOUT)
            assert accepted.recv(100).startswith(b"GET /late HTTP/1.1\r\n")
    finally:
        server.shutdown()
        thread.join(SOCKET_TIMEOUT)
        for sock in late:
            sock.close()
        shared.close()
        arbiter.close()
