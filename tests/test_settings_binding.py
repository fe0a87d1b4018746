"""--bind (one server on several listeners), --pid and --header, over real processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SOCKET_TIMEOUT, Reader
from tests.processes import Process, dualgate_argv, supervised, wait_until, write_app

ADDRESS = re.compile(r"(?:Serving .*|listening) on (http://[^\s,]+|unix:[^\s,]+)")


def request(address: str, path: str = "/") -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One GET on a fresh connection to a logged address (http://HOST:PORT or unix:PATH)."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SOCKET_TIMEOUT)
        sock.connect(address[5:])
    else:
        host, port = address.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=SOCKET_TIMEOUT)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return Reader(sock).read_response()


def logged_addresses(process: Process, count: int) -> list[str]:
    """The first `count` addresses the server (or supervisor) says it listens on."""
    wait_until(
        lambda: len(ADDRESS.findall(process.stderr)) >= count or process.process.poll() is not None,
        20,
        f"{count} listening lines",
    )
    found = ADDRESS.findall(process.stderr)
    assert len(found) >= count, process.stderr
    return found[:count]


@pytest.mark.parametrize("workers", [None, "2"])
def test_one_server_on_ipv4_ipv6_and_a_unix_socket(tmp_path: Path, workers: str | None) -> None:
    write_app(tmp_path)
    path = tmp_path / "app.sock"
    args = ["pidapp:application", "--bind", "127.0.0.1:0", "--bind", "[::1]:0"]
    args += ["--bind", f"unix:{path}"]
    if workers is not None:
        args += ["--workers", workers]
    with supervised(tmp_path, *args) as server:
        found = logged_addresses(server, 3)
        assert found[0].startswith("http://127.0.0.1:")
        assert found[1].startswith("http://[::1]:")
        assert found[2] == f"unix:{path}"
        if workers is not None:
            server.wait_for("2 worker\\(s\\) ready")
        for address in found:
            status, _, body = request(address)
            assert status == b"HTTP/1.1 200 OK", (address, body)
            assert int(body.split()[0]) != server.pid or workers is None
    assert not path.exists(), "the unix socket file is removed at exit"


def test_bind_with_an_inherited_descriptor(tmp_path: Path) -> None:
    write_app(tmp_path)
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen(8)
        port = inherited.getsockname()[1]
        fd = inherited.fileno()
        args = ["pidapp:application", f"--bind=fd://{fd}", "--bind", "127.0.0.1:0"]
        process = Process(dualgate_argv(*args), tmp_path, pass_fds=[fd])
        try:
            found = logged_addresses(process, 2)
            assert f"http://127.0.0.1:{port}" in found, found
            for address in found:
                assert request(address)[0] == b"HTTP/1.1 200 OK"
        finally:
            process.stop()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bind", "127.0.0.1:0", "--port", "9"], "--bind names every address: not with --host"),
        (["--bind", "127.0.0.1:0", "--uds", "x.sock"], "--bind names every address: not with"),
        (["--bind", "::1:80"], "--bind an IPv6 host goes in brackets"),
        (["--bind", "unix:"], "--bind unix: takes the socket's path"),
        (["--bind", "fd://x"], "--bind fd:// takes a descriptor number"),
        (
            ["--bind", "unix:x.sock", "--workers", "2", "--reuse-port"],
            "--reuse-port binds each TCP address itself",
        ),
        (["--header", "X Bad: 1"], "--header takes NAME:VALUE"),
        (["--header", "X-Ok: caf\u00e9"], "--header takes a header value of printable ASCII"),
    ],
)
def test_bad_bindings_and_headers_are_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dualgate", "serve", "x:y", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SOCKET_TIMEOUT * 3,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"dualgate: error: {expected}"), line


@pytest.mark.parametrize("workers", [None, "2"])
def test_the_pid_file_names_the_serving_process_and_goes_at_exit(
    tmp_path: Path, workers: str | None
) -> None:
    write_app(tmp_path)
    pid_file = tmp_path / "run" / "dualgate.pid"
    pid_file.parent.mkdir()
    args = ["pidapp:application", "--port", "0", "--pid", str(pid_file)]
    if workers is not None:
        args += ["--workers", workers]
    process = Process(dualgate_argv(*args), tmp_path)
    try:
        (address,) = logged_addresses(process, 1)
        if workers is not None:
            process.wait_for("2 worker\\(s\\) ready")
        assert pid_file.read_text() == f"{process.pid}\n"
        _, _, body = request(address)
        assert (int(body.split()[0]) == process.pid) is (workers is None)
    finally:
        code = process.stop()
    assert code == 0, process.stderr
    assert not pid_file.exists()
    assert os.listdir(pid_file.parent) == []


def test_a_pid_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [*dualgate_argv("x:y", "--pid", str(tmp_path / "absent" / "x.pid"))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SOCKET_TIMEOUT * 3,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"dualgate: error: --pid {tmp_path / 'absent' / 'x.pid'}: No such file or directory"
    ]


def test_headers_are_added_to_every_response(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "def application(environ, start_response):\n"
        "    extra = [('Server', 'app')] if environ['PATH_INFO'] == '/own' else []\n"
        "    start_response('200 OK', [('Content-Length', '2')] + extra)\n"
        "    return [b'ok']\n"
    )
    args = ["app:application", "--port", "0", "--header", "Strict-Transport-Security: max-age=1"]
    args += ["--header", "X-Frame-Options:DENY", "--header", "Server: edge"]
    with supervised(tmp_path, *args) as server:
        (address,) = logged_addresses(server, 1)
        status, headers, _ = request(address)
        assert status == b"HTTP/1.1 200 OK"
        assert headers[b"strict-transport-security"] == b"max-age=1"
        assert headers[b"x-frame-options"] == b"DENY"
        assert headers[b"server"] == b"edge", "a --header Server takes dualgate's place"
        # The application's own Server header wins over both.
        assert request(address, "/own")[1][b"server"] == b"app"
        # Answers of the server itself carry them too: a 400 for a malformed head.
        host, port = address.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n")
            status, headers = Reader(sock).read_head()
        assert status.startswith(b"HTTP/1.1 400"), status
        assert headers[b"x-frame-options"] == b"DENY"
