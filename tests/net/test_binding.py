"""Where a server listens: a unix socket, an inherited descriptor, a factory-built app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    ServeFactory,
    read_until_closed,
    running_server,
)


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello over " + environ["wsgi.url_scheme"].encode()]


def test_unix_socket_is_served_and_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "dualgate.sock"
    with running_server(hello, uds=str(path)) as server:
        assert server.addresses == [str(path)]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(SOCKET_TIMEOUT)
            sock.connect(str(path))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = Reader(sock).read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert body == b"hello over http"
    assert not path.exists(), "the socket file outlived the server"


def test_inherited_listening_descriptor_is_served(serve: ServeFactory) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # The server takes the descriptor over (and closes it when it stops), as under systemd.
    fd = os.dup(listener.fileno())
    listener.close()
    server = serve(hello, fd=fd)
    assert server.port == port
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(b"hello over http")


def test_factory_flag_calls_the_factory(tmp_path: Path) -> None:
    (tmp_path / "made.py").write_text(
        textwrap.dedent(
            """
            def create_app():
                def app(environ, start_response):
                    start_response("200 OK", [("Content-Type", "text/plain")])
                    return [b"made by the factory"]
                return app
            """
        )
    )
    command = [sys.executable, "-m", "dualgate", "serve", "made:create_app", "--factory"]
    command += ["--port", "0", "--app-dir", str(tmp_path), "--no-access-log"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert "Serving WSGI app made:create_app" in line, line
            port = int(line.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_until_closed(sock).endswith(b"made by the factory")
        finally:
            process.terminate()
            assert process.wait(timeout=SOCKET_TIMEOUT) == 0
