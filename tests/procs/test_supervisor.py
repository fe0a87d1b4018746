"""`dualgate serve --workers N`: real subprocesses, real signals, bounded load loops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dualgate.procs.policy import MAX_FAILED_STARTS, backoff
from tests.conftest import SOCKET_TIMEOUT, Reader
from tests.processes import (
    Answer,
    Load,
    Process,
    answer,
    dualgate_argv,
    get,
    kill,
    parse,
    supervised,
    wait_until,
    write_app,
)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_serve_from_distinct_pids(tmp_path: Path, start_method: str) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2", "--threads", "1")
    with supervised(tmp_path, *args, "--start-method", start_method) as server:
        port = server.port()
        server.wait_for("2 worker\\(s\\) ready")
        workers = server.children()
        assert len(workers) == 2
        # A worker whose only thread is busy stops accepting, so the next connection is
        # taken by the other one: two distinct pids, deterministically.
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as slow:
            slow.sendall(b"GET /sleep/1.5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            line = server.wait_for("sleeping in")
            busy = int(line.split()[-1])
            seen = {answer(port).pid for _ in range(3)}
            status, _, body = Reader(slow).read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert parse(body).pid == busy
        assert seen and busy not in seen, (busy, seen)
        assert seen | {busy} == workers
        assert parse(body).multiprocess is True
        assert server.pid not in seen | {busy}, "the supervisor must not serve"


def test_a_killed_worker_is_replaced_under_load(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2")
    with supervised(tmp_path, *args) as server:
        port = server.port()
        server.wait_for("2 worker\\(s\\) ready")
        first = server.children()
        victim = min(first)
        with Load(port, clients=2) as load:
            load.wait_for_more(50)
            mark = server.mark()
            kill(victim, signal.SIGKILL)
            server.wait_for(f"Worker {victim} died \\(killed by SIGKILL\\)", after=mark)
            wait_until(lambda: len(server.children() - first) == 1, 10, "a new worker")
            replacement = (server.children() - first).pop()
            deadline = time.monotonic() + 10
            while replacement not in {a.pid for _, a in load.answers[-200:]}:
                assert time.monotonic() < deadline, "the replacement never answered"
                load.wait_for_more(20)
        print(f"SIGKILL under load: {load.sent} requests, {len(load.failures)} failed")
        # Only requests on the killed worker's open connections may fail: each client has
        # one connection open at a time.
        assert len(load.failures) <= load.clients, load.failures
        assert victim not in server.children()


def test_sighup_replaces_workers_under_load_with_no_failed_request(tmp_path: Path) -> None:
    write_app(tmp_path, version="1")
    args = ("pidapp:application", "--port", "0", "--workers", "2")
    with supervised(tmp_path, *args) as server:
        port = server.port()
        server.wait_for("2 worker\\(s\\) ready")
        old = server.children()
        with Load(port, clients=3) as load:
            load.wait_for_more(100)
            write_app(tmp_path, version="2")
            mark = server.mark()
            server.signal(signal.SIGHUP)
            server.wait_for("Replacement done", after=mark)
            done = time.monotonic()
            time.sleep(0.5)  # what the old workers had in flight has finished by now
            load.wait_for_more(100)
        print(f"SIGHUP under load: {load.sent} requests, {len(load.failures)} failed")
        assert load.failures == [], load.failures[:5]
        new = server.children()
        assert not new & old, (old, new)
        after = [a for at, a in load.answers if at > done + 0.5]
        assert after and all(a.version == "2" for a in after)
        assert {a.version for _, a in load.answers} == {"1", "2"}


def test_sighup_with_code_that_cannot_start_keeps_the_old_workers(tmp_path: Path) -> None:
    write_app(tmp_path, version="1")
    args = ("pidapp:application", "--port", "0", "--workers", "2")
    with supervised(tmp_path, *args) as server:
        port = server.port()
        server.wait_for("2 worker\\(s\\) ready")
        old = server.children()
        (tmp_path / "pidapp.py").write_text("raise RuntimeError('bad deploy')\n")
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for("Replacement abandoned", after=mark, timeout=30)
        assert server.process.poll() is None
        assert server.children() == old
        assert {answer(port).version for _ in range(4)} == {"1"}
        # The next good deploy goes through.
        write_app(tmp_path, version="2")
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for("Replacement done", after=mark)
        wait_until(lambda: not server.children() & old, 10, "the old workers gone")
        assert answer(port).version == "2"


# Imported fine, but its start-up fails every time: a database that is not there yet may be
# there at the next try, so the supervisor retries (an import that fails is final, below).
CRASH_APP = """
async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("no database")
"""


def test_crash_looping_app_gives_up_with_its_own_exit_code(tmp_path: Path) -> None:
    (tmp_path / "crash.py").write_text(CRASH_APP)
    bound = sum(backoff(n) for n in range(1, MAX_FAILED_STARTS)) + MAX_FAILED_STARTS * 2.0
    started = time.monotonic()
    args = ("crash:application", "--port", "0", "--workers", "2", "--lifespan", "on")
    process = Process(dualgate_argv(*args), tmp_path)
    try:
        code = process.wait(timeout=bound + 10)
    finally:
        process.stop()
    elapsed = time.monotonic() - started
    assert code == 4, process.stderr
    assert elapsed < bound, (elapsed, bound)
    errors = [line for line in process.lines if line.startswith("dualgate: error: workers")]
    assert errors == [
        f"dualgate: error: workers failed to start {MAX_FAILED_STARTS} times in a row "
        "(last: exit code 3); giving up\n"
    ], process.stderr
    assert "no database" in process.stderr
    assert not process.children()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_lets_every_in_flight_request_finish(tmp_path: Path, signum: int) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2")
    server = Process(dualgate_argv(*args), tmp_path)
    try:
        port = server.port()
        server.wait_for("2 worker\\(s\\) ready")
        results: list[bytes] = []
        errors: list[BaseException] = []

        def slow() -> None:
            try:
                results.append(get(port, "/sleep/1.0")[0])
            except OSError as exc:
                errors.append(exc)

        clients = [threading.Thread(target=slow) for _ in range(4)]
        for client in clients:
            client.start()
        wait_until(lambda: server.stderr.count("sleeping in") >= 4, 10, "4 requests in flight")
        server.signal(signum)
        for client in clients:
            client.join(SOCKET_TIMEOUT)
        assert server.wait() == 0, server.stderr
    finally:
        server.stop()
    assert errors == []
    assert results == [b"HTTP/1.1 200 OK"] * 4
    name = signal.Signals(signum).name
    assert f"{name} received: stopping 2 worker(s) gracefully" in server.stderr


def test_a_second_stop_signal_closes_everything_at_once(tmp_path: Path) -> None:
    write_app(tmp_path)
    server = Process(dualgate_argv("pidapp:application", "--port", "0", "--workers", "1"), tmp_path)
    try:
        port = server.port()
        server.wait_for("1 worker\\(s\\) ready")
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as slow:
            slow.sendall(b"GET /sleep/20 HTTP/1.1\r\nHost: x\r\n\r\n")
            server.wait_for("sleeping in")
            server.signal(signal.SIGTERM)
            server.wait_for("stopping 1 worker")
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            assert server.wait() == 0, server.stderr
            assert time.monotonic() - started < 10
            assert Reader(slow).read_until_closed() == b""
    finally:
        server.stop()


def test_sigttin_and_sigttou_add_and_remove_a_worker(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2")
    with supervised(tmp_path, *args) as server:
        server.port()
        server.wait_for("2 worker\\(s\\) ready")
        server.signal(signal.SIGTTIN)
        wait_until(lambda: len(server.children()) == 3, 10, "three workers")
        # One at a time: the kernel merges a signal sent again before the first is handled.
        server.signal(signal.SIGTTOU)
        wait_until(lambda: len(server.children()) == 2, 10, "two workers")
        server.signal(signal.SIGTTOU)
        wait_until(lambda: len(server.children()) == 1, 10, "one worker")
        server.signal(signal.SIGTTOU)  # never below one
        time.sleep(0.5)
        assert len(server.children()) == 1
        assert answer(server.port()).multiprocess is True


def test_limit_max_requests_recycles_workers_with_jitter(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "1")
    limits = ("--limit-max-requests", "3", "--limit-max-requests-jitter", "2")
    with supervised(tmp_path, *args, *limits) as server:
        port = server.port()
        answers = [answer(port) for _ in range(24)]
    pids = [a.pid for a in answers]
    # One worker: no other process serves at the same time.
    assert not any(a.multiprocess for a in answers)
    runs: list[int] = []
    for index, pid in enumerate(pids):
        if index and pid == pids[index - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    # Every worker but the last served between 3 and 3 + 2 requests, and none came back.
    assert len(runs) >= 5, runs
    assert all(3 <= run <= 5 for run in runs[:-1]), runs
    assert len(set(pids)) == len(runs)


def test_a_worker_whose_loop_is_blocked_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "blocking.py").write_text(
        "import os, time\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    if scope['path'] == '/block':\n"
        "        time.sleep(30)  # blocks the event loop itself\n"
        "    body = str(os.getpid()).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )
    args = ("blocking:app", "--port", "0", "--workers", "1", "--lifespan", "off")
    with supervised(tmp_path, *args, "--timeout-worker-healthcheck", "1") as server:
        port = server.port()
        server.wait_for("1 worker\\(s\\) ready")
        (stuck,) = server.children()
        blocked = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        with blocked:
            blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            server.wait_for(f"Worker {stuck}: its event loop has not answered for 1s")
            server.wait_for(f"Worker {stuck} died \\(killed by SIGKILL\\)")
            status, _, body = get(port, "/")
        assert status == b"HTTP/1.1 200 OK"
        assert int(body) != stuck
        # The stuck worker's tracebacks, as asked for before it was killed: where it blocked.
        assert 'blocking.py", line 6 in app' in server.stderr, server.stderr


def test_reuse_port_gives_each_worker_its_own_socket(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2", "--reuse-port")
    with supervised(tmp_path, *args) as server:
        port = server.port()
        server.wait_for("2 worker\\(s\\) ready")
        seen: set[int] = set()
        for _ in range(200):
            seen.add(answer(port).pid)
            if len(seen) == 2:
                break
        # The kernel spreads connections over the workers' sockets by a hash of the address.
        assert seen == server.children()


def test_unix_socket_and_inherited_fd_with_workers(tmp_path: Path) -> None:
    write_app(tmp_path)
    path = tmp_path / "dg.sock"
    args = ("pidapp:application", "--uds", str(path), "--workers", "2")
    with supervised(tmp_path, *args) as server:
        server.wait_for("2 worker\\(s\\) ready")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(SOCKET_TIMEOUT)
            sock.connect(str(path))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = Reader(sock).read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert parse(body).pid in server.children()
        # A worker stopping must not remove the socket file its siblings serve on.
        server.signal(signal.SIGTTOU)
        wait_until(lambda: len(server.children()) == 1, 10, "one worker")
        assert path.exists()
    assert not path.exists(), "the supervisor removes its socket file when it stops"

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    argv = dualgate_argv("pidapp:application", "--fd", str(fd), "--workers", "2")
    process = Process(argv, tmp_path, pass_fds=[fd])
    listener.close()
    try:
        process.wait_for("2 worker\\(s\\) ready")
        assert answer(port).pid in process.children()
    finally:
        process.stop()


def test_workers_serve_asgi_and_mounts(tmp_path: Path) -> None:
    write_app(tmp_path)
    (tmp_path / "asgipid.py").write_text(
        "import os\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        await receive()\n"
        "        await send({'type': 'lifespan.startup.complete'})\n"
        "        await receive()\n"
        "        await send({'type': 'lifespan.shutdown.complete'})\n"
        "        return\n"
        "    body = f\"{os.getpid()} asgi {scope['root_path']}\".encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )
    args = ("--port", "0", "--workers", "2")
    mounts = ("--mount", "/w=pidapp:application", "--mount", "/a=asgipid:app")
    with supervised(tmp_path, *args, *mounts) as server:
        port = server.port()
        server.wait_for("2 worker\\(s\\) ready")
        workers = server.children()
        status, _, body = get(port, "/a/x")
        assert status == b"HTTP/1.1 200 OK"
        pid, kind, root = body.decode().split()
        assert int(pid) in workers and (kind, root) == ("asgi", "/a")
        wsgi: Answer = answer(port, "/w/x")
        assert wsgi.pid in workers and wsgi.multiprocess is True


def test_the_supervisor_going_away_stops_its_workers(tmp_path: Path) -> None:
    write_app(tmp_path)
    args = ("pidapp:application", "--port", "0", "--workers", "2")
    process = Process(dualgate_argv(*args, "--timeout-worker-healthcheck", "2"), tmp_path)
    try:
        process.wait_for("2 worker\\(s\\) ready")
        workers = process.children()
        process.process.kill()
        process.wait(SOCKET_TIMEOUT)
    finally:
        process.stop()
    # Each worker's next heartbeat finds the pipe broken, and it stops gracefully.
    wait_until(lambda: not any(_exists(pid) for pid in workers), 10, "orphaned workers stop")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [*dualgate_argv("x:y", "--workers", "2", "--reuse-port"), "--uds", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=SOCKET_TIMEOUT,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dualgate: error: --reuse-port binds host and port itself; not with --uds or --fd"
    ]
