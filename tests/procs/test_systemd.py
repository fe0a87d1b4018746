"""systemd: socket activation (LISTEN_FDS/LISTEN_PID) and sd_notify, as systemd does them."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualgate.net import systemd
from tests.conftest import SOCKET_TIMEOUT, Reader
from tests.processes import Process, answer, parse, wait_until, write_app


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as NOTIFY_SOCKET names it ("@...")."""
    name = f"dualgate-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(SOCKET_TIMEOUT)
        yield sock, "@" + name


# Puts descriptor argv[1] at 3 and execs the rest, LISTEN_PID being its pid: what systemd does.
_ACTIVATE = (
    "import os, sys; fd = int(sys.argv[1]); fd != 3 and (os.dup2(fd, 3), os.close(fd)); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def activated(listener: socket.socket, *args: str) -> list[str]:
    """argv that starts dualgate with `listener` passed as systemd passes a socket."""
    serve = [sys.executable, "-m", "dualgate", "serve", *args, "--no-access-log"]
    return [sys.executable, "-c", _ACTIVATE, str(listener.fileno()), *serve, "--loop", "asyncio"]


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_tcp_socket_activation_with_workers_and_notifications(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    write_app(tmp_path)
    notify, address = notify_socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    argv = activated(listener, "pidapp:application", "--workers", "2", "--port", "1")
    server = Process(argv, tmp_path, {"NOTIFY_SOCKET": address}, pass_fds=[listener.fileno()])
    listener.close()
    try:
        # READY=1 only once every worker has loaded the app: both answer by then.
        assert receive(notify) == "READY=1"
        workers = server.children()
        assert len(workers) == 2
        assert answer(port).pid in workers  # the passed socket, not --port 1
        server.signal(signal.SIGHUP)
        reloading = receive(notify).splitlines()
        assert reloading[0] == "RELOADING=1"
        assert reloading[1].startswith("MONOTONIC_USEC=")
        assert receive(notify) == "READY=1"
        # The last worker replaced may still be finishing what it had in flight.
        wait_until(lambda: len(server.children()) == 2, 10, "the old workers gone")
        assert not server.children() & workers
        server.signal(signal.SIGTERM)
        assert receive(notify) == "STOPPING=1"
        assert server.wait() == 0, server.stderr
    finally:
        server.stop()
    assert "LISTEN" not in server.stderr


def test_unix_socket_activation_in_one_process(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    write_app(tmp_path)
    notify, address = notify_socket
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    argv = activated(listener, "pidapp:application")
    server = Process(argv, tmp_path, {"NOTIFY_SOCKET": address}, pass_fds=[listener.fileno()])
    listener.close()
    try:
        assert receive(notify) == "READY=1"
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(SOCKET_TIMEOUT)
            client.connect(str(path))
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = Reader(client).read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert parse(body).pid == server.pid
        server.signal(signal.SIGTERM)
        assert receive(notify) == "STOPPING=1"
        assert server.wait() == 0, server.stderr
    finally:
        server.stop()
    # The socket file belongs to systemd's .socket unit: dualgate leaves it where it is.
    assert path.exists()


def test_listen_fds_for_another_process_are_ignored_and_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    assert systemd.listen_sockets() == []
    assert not {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & set(os.environ)


def test_a_passed_descriptor_that_is_no_listening_socket_is_one_line(tmp_path: Path) -> None:
    write_app(tmp_path)
    (tmp_path / "file").write_text("")
    serve = [sys.executable, "-m", "dualgate", "serve", "pidapp:application"]
    script = 'LISTEN_FDS=1 LISTEN_PID=$$ exec "$@" 3<file'  # a single digit: any sh can
    done = subprocess.run(
        ["sh", "-c", script, "sh", *serve],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SOCKET_TIMEOUT,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dualgate: error: LISTEN_FDS: descriptor 3 is not a socket ([Errno 88] Socket operation "
        "on non-socket)"
    ]


def test_notify_without_a_manager_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_worker_count_waits_for_every_worker(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    # A slow-starting app: READY=1 must not come before the last worker is ready.
    write_app(tmp_path)
    # Each worker leaves a file once its app is loaded: unlike its log line, which the test
    # reads from a pipe through a thread that may lag, the file is there when READY=1 is sent.
    (tmp_path / "slowstart.py").write_text(
        "import os, time\ntime.sleep(0.5)\nfrom pidapp import application\n"
        "open(os.path.join(os.path.dirname(__file__), f'loaded-{os.getpid()}'), 'w').close()\n"
    )
    notify, address = notify_socket
    argv = [sys.executable, "-m", "dualgate", "serve", "slowstart:application"]
    argv += ["--port", "0", "--workers", "3", "--no-access-log", "--loop", "asyncio"]
    server = Process(argv, tmp_path, {"NOTIFY_SOCKET": address})
    try:
        assert receive(notify) == "READY=1"
        assert len(list(tmp_path.glob("loaded-*"))) == 3, server.stderr
        wait_until(lambda: server.stderr.count("Serving WSGI app") == 3, 5, "three ready lines")
        wait_until(lambda: len(server.children()) == 3, 5, "three workers")
    finally:
        server.stop()
