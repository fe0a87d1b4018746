"""gunicorn's arbiter running dualgate workers: `gunicorn -k dualgate.procs.gunicorn.Worker`."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gunicorn.config import KNOWN_SETTINGS

from tests.conftest import SOCKET_TIMEOUT, Reader
from tests.processes import Process, get, parse, wait_until, write_app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FLASK_APP = """
import os
from flask import Flask, request

app = Flask(__name__)

@app.get("/hello/<name>")
def hello(name):
    return {"pid": os.getpid(), "name": name, "multiprocess": request.environ["wsgi.multiprocess"]}
"""

STARLETTE_APP = """
import contextlib, os
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"started_in": os.getpid()}

async def hello(request):
    return JSONResponse({"pid": os.getpid(), "started_in": request.state.started_in})

app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
"""


@contextmanager
def gunicorn(directory: Path, app: str, *options: str) -> Iterator[tuple[Process, int]]:
    argv = [sys.executable, "-m", "gunicorn", "-k", "dualgate.procs.gunicorn.Worker"]
    argv += ["-b", "127.0.0.1:0", "--graceful-timeout", "10", *options, app]
    if any(setting == "control_socket_disable" for setting in _setting_names()):
        argv.insert(-1, "--no-control-socket")  # gunicorn 25+: one per machine otherwise
    process = Process(argv, directory)
    try:
        yield process, process.port()
    finally:
        workers = process.children()
        process.stop()
        wait_until(lambda: not workers & process.children(), SOCKET_TIMEOUT, "workers gone")


def _setting_names() -> list[str]:
    return [setting.name for setting in KNOWN_SETTINGS]


def wait_for_workers(process: Process, count: int) -> set[int]:
    wait_until(lambda: process.stderr.count("Serving ") >= count, 20, f"{count} workers")
    return process.children()


def test_gunicorn_serves_the_seed_hello_app() -> None:
    with gunicorn(EXAMPLES, "hello:application", "-w", "2") as (process, port):
        workers = wait_for_workers(process, 2)
        status, headers, body = get(port)
        assert status == b"HTTP/1.1 200 OK"
        assert body == b"<h1>Hello, web!</h1>"
        assert headers[b"server"] == b"dualgate"
        assert len(workers) == 2


def test_gunicorn_serves_flask_with_max_requests(tmp_path: Path) -> None:
    (tmp_path / "flaskapp.py").write_text(FLASK_APP)
    options = ("-w", "1", "--max-requests", "3", "--threads", "2")
    with gunicorn(tmp_path, "flaskapp:app", *options) as (process, port):
        wait_for_workers(process, 1)
        pids = []
        for index in range(7):
            status, _, body = get(port, f"/hello/n{index}")
            assert status == b"HTTP/1.1 200 OK", body
            assert b'"name":"n%d"' % index in body.replace(b" ", b"")
            assert b'"multiprocess":false' in body.replace(b" ", b"")
            pids.append(int(body.split(b'"pid":')[1].split(b",")[0].split(b"}")[0]))
        # gunicorn's --max-requests, counted by dualgate: a new worker every 3 requests.
        assert pids[0:3] == [pids[0]] * 3
        assert pids[3:6] == [pids[3]] * 3
        assert len({pids[0], pids[3], pids[6]}) == 3


def test_gunicorn_serves_starlette_with_lifespan(tmp_path: Path) -> None:
    (tmp_path / "starletteapp.py").write_text(STARLETTE_APP)
    with gunicorn(tmp_path, "starletteapp:app", "-w", "2") as (process, port):
        workers = wait_for_workers(process, 2)
        status, _, body = get(port)
        assert status == b"HTTP/1.1 200 OK"
        pid = int(body.split(b'"pid":')[1].split(b",")[0])
        # Lifespan start-up ran in the worker that serves, not in the arbiter.
        assert pid in workers
        assert b'"started_in":%d' % pid in body


def test_gunicorn_limits_keepalive_and_graceful_stop(tmp_path: Path) -> None:
    write_app(tmp_path)
    options = ["-w", "2", "--limit-request-line", "100", "--limit-request-fields", "5"]
    options += ["--keep-alive", "0"]
    with gunicorn(tmp_path, "pidapp:application", *options) as (process, port):
        workers = wait_for_workers(process, 2)
        status, _, _ = get(port, "/" + "x" * 120)
        assert status == b"HTTP/1.1 414 URI Too Long"
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
            extra = "".join(f"X-{n}: y\r\n" for n in range(6))
            sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            status = Reader(sock).read_response()[0]
            assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = Reader(sock).read_response()
            # --keep-alive 0: gunicorn's "no keep-alive".
            assert headers[b"connection"] == b"close"
            assert parse(body).multiprocess is True and parse(body).pid in workers

        results: list[bytes] = []

        def slow() -> None:
            results.append(get(port, "/sleep/1.0")[0])

        client = threading.Thread(target=slow)
        client.start()
        process.wait_for("sleeping in")
        process.signal(signal.SIGTERM)
        client.join(SOCKET_TIMEOUT)
        assert results == [b"HTTP/1.1 200 OK"], "the in-flight request finished first"
        assert process.wait() == 0
