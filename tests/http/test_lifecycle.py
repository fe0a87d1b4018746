"""Connections that end early, and a server that is asked to stop while serving."""

from __future__ import annotations

import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    ServeFactory,
    assert_serves,
    connect,
    read_until_closed,
)

# Every server here runs once with each request head parser (h11, httptools).
pytestmark = pytest.mark.usefixtures("both_parsers")


def test_client_vanishing_mid_body_frees_the_app(serve: ServeFactory) -> None:
    started = threading.Event()
    finished = threading.Event()
    errors: list[BaseException] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        started.set()
        try:
            stream = environ["wsgi.input"]
            while stream.read(4096):
                pass
        except Exception as exc:
            errors.append(exc)
            raise
        finally:
            finished.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read it all?"]

    # A small buffer so the app starts before the body is complete.
    server = serve(app, body_buffer_size=1024)
    sock = connect(server.port)
    with sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        sock.sendall(b"x" * 4096)
        assert started.wait(SOCKET_TIMEOUT), "the app was not started on a partial body"
    # The socket is closed: half the body never comes.
    assert finished.wait(SOCKET_TIMEOUT), "the app's read never returned"
    assert len(errors) == 1, "reading a body cut short must raise, not look like its end"
    assert isinstance(errors[0], OSError), repr(errors[0])
    assert_serves(server.port)


# -- graceful shutdown of a real process --------------------------------------------------

SLOW_APP = """
import time

def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        environ["wsgi.errors"].write("slow request started\\n")
        environ["wsgi.errors"].flush()
        time.sleep(1.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]
"""


class LineReader:
    """The stderr lines of a process, read by a thread so each wait can be bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = SOCKET_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen on stderr; got {seen!r}")

    def join(self) -> None:
        self._thread.join(SOCKET_TIMEOUT)


@contextmanager
def dualgate_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    command = [sys.executable, "-m", "dualgate", "serve", *args]
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        reader = LineReader(process.stderr)
        try:
            yield process, reader
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(SOCKET_TIMEOUT)
            reader.join()


def test_sigterm_finishes_in_flight_request_and_closes_idle(tmp_path: Path) -> None:
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    with dualgate_process(
        "slowapp:application",
        "--port",
        "0",
        "--app-dir",
        str(tmp_path),
        "--timeout-keep-alive",
        "30",
    ) as (process, stderr):
        line = stderr.wait_for("Serving WSGI app")
        assert "on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        with connect(port) as idle, connect(port) as busy:
            idle.sendall(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(idle).read_response()[2] == b"/idle"
            busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            stderr.wait_for("slow request started")
            os.kill(process.pid, signal.SIGTERM)
            # The idle keep-alive connection is closed, without waiting for the slow one.
            assert read_until_closed(idle) == b""
            assert select.select([busy], [], [], 0)[0] == [], "idle close waited for the slow one"
            status, headers, body = Reader(busy).read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert body == b"/slow"
            assert headers.get(b"connection", b"").lower() == b"close"
            assert read_until_closed(busy) == b""
        assert process.wait(SOCKET_TIMEOUT) == 0
