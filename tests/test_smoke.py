"""The seed's hello app, served for real: over a raw socket and through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dualgate import Config, Server
from tests.conftest import Reader, ServeFactory, connect

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def hello(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/html")])  # type: ignore[operator]
    return [b"<h1>Hello, web!</h1>"]


def test_hello_over_keep_alive(serve: ServeFactory) -> None:
    server = serve(hello)
    with connect(server.port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = reader.read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert body == b"<h1>Hello, web!</h1>"
            assert headers[b"content-length"] == b"20"
            assert b"date" in headers


def test_cli_serves_seed_hello_and_stops_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "dualgate", "serve", "hello:application", "--port", "0"],
        cwd=EXAMPLES,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        _check_hello_then_sigterm(process)


def _check_hello_then_sigterm(process: subprocess.Popen[str]) -> None:
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "Serving WSGI app hello:application" in line, line
        port = int(line.rsplit(":", 1)[1])
        with connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(sock).read_response()[2] == b"<h1>Hello, web!</h1>"
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_shutdown_before_the_loop_starts_still_stops_the_server() -> None:
    server = Server(Config(app=hello, port=0, access_log=False, loop="asyncio"))
    server.shutdown()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "a shutdown() asked before run() was lost"
    assert server.started.is_set()
