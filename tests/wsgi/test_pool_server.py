"""The worker pool: a bounded wait for a free thread, then 503 with Retry-After; no lasting harm."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from tests.conftest import ServeFactory, connect
from tests.wsgi_feeders import RawConnection

WAIT = 5.0


class BlockingApp:
    """/block holds its worker thread until `release` is set; anything else answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/block":
            self.entered.release()
            if not self.release.wait(WAIT * 2):
                raise RuntimeError("never released")
            body = b"released"
        else:
            body = b"quick"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=WAIT), "a request never reached the app"


def test_pool_exhaustion_gives_503_then_recovers(serve: ServeFactory) -> None:
    app = BlockingApp()
    server = serve(app, threads=2, timeout_worker=0.3)
    url = f"http://127.0.0.1:{server.port}"
    try:
        with RawConnection(url) as first, RawConnection(url) as second:
            first.request("GET", "/block")
            second.request("GET", "/block")
            app.wait_entered(2)  # both threads are now held by the application
            with RawConnection(url) as third:
                started = time.monotonic()
                third.request("GET", "/quick")
                refused = third.read_response()
                waited = time.monotonic() - started
            assert refused.status == 503
            assert refused.headers.get("retry-after", "").isdigit()
            assert 0.25 <= waited < 0.3 + WAIT, waited
            app.release.set()
            assert first.read_response().body == b"released"
            assert second.read_response().body == b"released"
        with connect(server.port) as sock:  # both threads are free again
            for _ in range(3):
                sock.sendall(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b"quick" in sock.recv(65536)
    finally:
        app.release.set()


def test_request_waiting_for_a_thread_gets_one_when_freed(serve: ServeFactory) -> None:
    app = BlockingApp()
    server = serve(app, threads=1, timeout_worker=WAIT)
    url = f"http://127.0.0.1:{server.port}"
    try:
        with RawConnection(url) as first, RawConnection(url) as waiting:
            first.request("GET", "/block")
            app.wait_entered(1)
            waiting.request("GET", "/quick")
            # It waits for the thread (nothing comes back meanwhile) ...
            waiting.sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                waiting.sock.recv(1)
            waiting.sock.settimeout(WAIT)
            # ... and is served once the thread is free.
            app.release.set()
            assert first.read_response().body == b"released"
            response = waiting.read_response()
            assert response.status == 200
            assert response.body == b"quick"
    finally:
        app.release.set()
