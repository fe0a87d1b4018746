"""gunicorn's arbiter running dualgate workers: `gunicorn -k dualgate.procs.gunicorn.Worker`."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import KNOWN_SETTINGS, Config

from dualgate.procs.gunicorn_settings import in_gunicorns_words, options, refusal
from tests.conftest import SOCKET_TIMEOUT, Reader
from tests.processes import START_TIMEOUT, Process, get, parse, wait_until, write_app
from tests.proxies import Certs

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


# What the application saw of the client, the scheme and the host.
VIEW_APP = """
import json

def application(environ, start_response):
    keys = ("REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "HTTP_X_FORWARDED_FOR")
    body = json.dumps({key: environ.get(key) for key in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""


def gunicorn_argv(app: str, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "-k", "dualgate.procs.gunicorn.Worker"]
    argv += ["-b", "127.0.0.1:0", "--graceful-timeout", "10", *options, app]
    if any(setting == "control_socket_disable" for setting in _setting_names()):
        argv.insert(-1, "--no-control-socket")  # gunicorn 25+: one per machine otherwise
    return argv


@contextmanager
def gunicorn(
    directory: Path, app: str, *options: str, stdout: Path | None = None
) -> Iterator[tuple[Process, int]]:
    process = Process(gunicorn_argv(app, *options), directory, stdout=stdout)
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
        assert pids[0:3] == [pids[0]] * 3, process.stderr
        assert pids[3:6] == [pids[3]] * 3, process.stderr
        assert len({pids[0], pids[3], pids[6]}) == 3, process.stderr


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


# -- what gunicorn's settings mean to the worker --------------------------------------------


def test_gunicorn_serves_https_with_its_certificate_and_no_plain_http(
    tmp_path: Path, tls_certs: Certs
) -> None:
    write_app(tmp_path)
    tls = _tls_options(tls_certs)
    with gunicorn(tmp_path, "pidapp:application", "-w", "1", *tls) as (process, port):
        assert f"Listening at: https://127.0.0.1:{port}" in process.stderr
        workers = wait_for_workers(process, 1)
        context = tls_certs.client_context()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body = Reader(sock).read_response()
        assert status == b"HTTP/1.1 200 OK"
        assert parse(body).pid in workers
        # The same port, spoken to in plain HTTP: no answer but a closed connection.
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received = _read_all(sock)
        assert not received.startswith(b"HTTP/"), received[:100]


def test_gunicorn_asks_for_client_certificates(tmp_path: Path, tls_certs: Certs) -> None:
    write_app(tmp_path)
    tls = (*_tls_options(tls_certs), "--ca-certs", str(tls_certs.ca_file), "--cert-reqs", "2")
    with gunicorn(tmp_path, "pidapp:application", "-w", "1", *tls) as (process, port):
        wait_for_workers(process, 1)
        assert _https_status(port, tls_certs.client_context(with_client_cert=True)) == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            # TLS 1.3: the server's refusal of a missing certificate arrives with the first read.
            _https_status(port, tls_certs.client_context())


def test_gunicorn_forwarded_allow_ips_decides_whose_headers_count(tmp_path: Path) -> None:
    (tmp_path / "viewapp.py").write_text(VIEW_APP)
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    with gunicorn(tmp_path, "viewapp:application", "--forwarded-allow-ips", "127.0.0.1") as (
        process,
        port,
    ):
        wait_for_workers(process, 1)
        seen = _view(port, forwarded)
        assert seen["REMOTE_ADDR"] == "203.0.113.9"
        assert seen["wsgi.url_scheme"] == "https"
    # A list without this machine: the same headers are the client's own, and not believed.
    with gunicorn(tmp_path, "viewapp:application", "--forwarded-allow-ips", "10.0.0.1") as (
        process,
        port,
    ):
        wait_for_workers(process, 1)
        seen = _view(port, forwarded)
        assert seen["REMOTE_ADDR"] == "127.0.0.1"
        assert seen["wsgi.url_scheme"] == "http"
        assert seen["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"


def test_gunicorn_access_log_in_gunicorns_format(tmp_path: Path) -> None:
    write_app(tmp_path)
    log = tmp_path / "stdout.log"
    fmt = "%(h)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%({x-test}i)s|%(p)s|%(u)s|%(D)s"
    options = ("--access-logfile", "-", "--access-logformat", fmt)
    with gunicorn(tmp_path, "pidapp:application", *options, stdout=log) as (process, port):
        workers = wait_for_workers(process, 1)
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
            sock.sendall(
                b"GET /a%20b?x=1 HTTP/1.1\r\nHost: x\r\nX-Test: hi\r\n"
                b"Authorization: Basic dXNlcjpwdw==\r\nConnection: close\r\n\r\n"
            )
            status, _, body = Reader(sock).read_response()
        assert status == b"HTTP/1.1 200 OK"
        wait_until(lambda: log.read_text().count("\n") >= 1, SOCKET_TIMEOUT, "an access line")
        (worker,) = workers
        line = log.read_text().splitlines()[0]
        fields = line.split("|")
        assert fields[:9] == [
            "127.0.0.1",
            "GET",
            "/a b",
            "x=1",
            "HTTP/1.1",
            "200",
            str(len(body)),
            "hi",
            f"<{worker}>",
        ], line
        assert fields[9] == "user"  # %(u)s: gunicorn reads it from Basic authorization
        assert int(fields[10]) > 0  # %(D)s: microseconds
        # dualgate's own access line is off: one format, gunicorn's.
        assert '"GET /a%20b?x=1 HTTP/1.1" 200' not in process.stderr


def test_gunicorn_statsd_counts_requests(tmp_path: Path) -> None:
    write_app(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(0.5)
        address = f"127.0.0.1:{statsd.getsockname()[1]}"
        with gunicorn(tmp_path, "pidapp:application", "--statsd-host", address) as (process, port):
            wait_for_workers(process, 1)
            for _ in range(3):
                assert get(port)[0] == b"HTTP/1.1 200 OK"
            seen: list[str] = []
            deadline = time.monotonic() + SOCKET_TIMEOUT
            # Per response gunicorn's Statsd sends the duration, the count, then the status.
            status = "gunicorn.request.status.200:1|c|@1.0"
            while seen.count(status) < 3 and time.monotonic() < deadline:
                try:
                    seen.append(statsd.recv(4096).decode())
                except TimeoutError:
                    continue
    assert seen.count("gunicorn.requests:1|c|@1.0") == 3, seen
    assert seen.count("gunicorn.request.status.200:1|c|@1.0") == 3, seen
    durations = [m for m in seen if re.fullmatch(r"gunicorn\.request\.duration:[0-9.]+\|ms", m)]
    assert len(durations) == 3, seen


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        (("--protocol", "uwsgi"), "protocol"),
        (("--access-logformat", "%(h)s %({content-type}o)s"), "access_log_format"),
    ],
)
def test_gunicorn_refuses_a_setting_it_cannot_honour(
    tmp_path: Path, options: tuple[str, ...], setting: str
) -> None:
    write_app(tmp_path)
    argv = gunicorn_argv("pidapp:application", "-w", "2", *options)
    done = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=START_TIMEOUT, check=False
    )
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if "dualgate's worker cannot" in line]
    assert len(refusals) == 1, done.stderr
    assert f"gunicorn setting {setting}:" in refusals[0]
    assert "Booting worker" not in done.stderr


def test_gunicorn_refuses_a_setting_a_reload_brings(tmp_path: Path) -> None:
    # HUP reads the configuration file again and starts new workers, which check themselves:
    # check_config ran once, at start.
    write_app(tmp_path)
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 1\n")
    with gunicorn(tmp_path, "pidapp:application", "-c", str(conf)) as (process, port):
        wait_for_workers(process, 1)
        assert get(port)[0] == b"HTTP/1.1 200 OK"
        conf.write_text("workers = 1\nsecure_scheme_headers = {'X-FORWARDED-SSL': 'on'}\n")
        process.signal(signal.SIGHUP)
        assert process.wait() != 0
        line = process.wait_for("dualgate's worker cannot honour")
        assert "gunicorn setting secure_scheme_headers:" in line


def _gunicorn_config(*argv: str) -> Any:
    config = Config()
    parsed = config.parser().parse_args([*argv, "app:application"])
    for name, value in vars(parsed).items():
        if value is not None and name in config.settings:
            config.set(name, value)
    return config


def test_settings_map_tls_edge_and_loop() -> None:
    config = _gunicorn_config(
        "--certfile", "c.pem", "--keyfile", "k.pem", "--ca-certs", "ca.pem", "--cert-reqs", "1",
        "--ciphers", "ECDHE+AESGCM", "--forwarded-allow-ips", "10.0.0.0/8,192.0.2.1",
        "--backlog", "64", "--asgi-loop", "asyncio", "--asgi-lifespan", "off",
        "--root-path", "/api", "--websocket-max-message-size", "1024",
    )  # fmt: skip
    found = options(config)
    assert {key: found[key] for key in found if key.startswith("ssl_")} == {
        "ssl_certfile": "c.pem",
        "ssl_keyfile": "k.pem",
        "ssl_ca_certs": "ca.pem",
        "ssl_cert_reqs": "1",
        "ssl_ciphers": "ECDHE+AESGCM",
    }
    assert found["forwarded_allow_ips"] == "10.0.0.0/8,192.0.2.1,unix:"
    assert found["proxy_headers"] is True and "proxy_protocol" not in found
    assert (found["backlog"], found["loop"], found["lifespan"]) == (64, "asyncio", "off")
    assert (found["root_path"], found["ws_max_size"]) == ("/api", 1024)
    assert found["access_log"] is False


def test_http_protocols_decide_http2() -> None:
    assert options(_gunicorn_config())["http2"] == "off"
    assert options(_gunicorn_config("--http-protocols", "h2,h1"))["http2"] == "on"


def test_settings_map_proxy_protocol_on_one_trust_list() -> None:
    found = options(_gunicorn_config("--proxy-protocol=auto"))
    assert found["proxy_protocol"] is True
    line = refusal(_gunicorn_config("--proxy-protocol=auto", "--proxy-allow-from", "10.0.0.1"))
    assert line is not None and line.startswith("gunicorn setting proxy_allow_ips:")
    line = refusal(_gunicorn_config("--proxy-protocol=auto", "--certfile", "c.pem"))
    assert line is not None and line.startswith("gunicorn setting proxy_protocol:")


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (("--keyfile", "k.pem"), "keyfile"),
        (("--certfile", "c.pem", "--cert-reqs", "2"), "cert_reqs"),
        (("--ssl-version", "TLSv1"), "ssl_version"),
        (("--no-sendfile",), "sendfile"),
        (("--header-map", "refuse"), "header_map"),
        (("--forwarder-headers", "SCRIPT_NAME,REMOTE_USER"), "forwarder_headers"),
        (("--http-parser", "python"), "http_parser"),
        (("--asgi-disconnect-grace-period", "0"), "asgi_disconnect_grace_period"),
        (("--permit-obsolete-folding",), "permit_obsolete_folding"),
        (("--websocket-max-message-size", "0"), "websocket_max_message_size"),
        (("--root-path", "api/"), "root_path"),
        (("--access-logformat", "%({remote_user}e)s"), "access_log_format"),
    ],
)
def test_settings_refused(argv: tuple[str, ...], setting: str) -> None:
    line = refusal(_gunicorn_config(*argv))
    assert line is not None
    assert line.startswith(f"gunicorn setting {setting}:")
    assert "\n" not in line


def test_a_failure_of_a_mapped_value_names_gunicorns_setting() -> None:
    # What the worker reports when the server cannot load a file gunicorn named.
    line = in_gunicorns_words("--ssl-keyfile k.pem: the private key does not belong to it")
    assert line == "gunicorn setting keyfile: keyfile k.pem: the private key does not belong to it"


def test_settings_refused_from_a_config_file() -> None:
    # Dicts and hooks have no flag: set as a configuration file would.
    config = Config()
    config.set("secure_scheme_headers", {"X-FORWARDED-SSL": "on"})
    assert (refusal(config) or "").startswith("gunicorn setting secure_scheme_headers:")
    config = Config()
    config.set("secure_scheme_headers", {"X-Forwarded-Proto": "https"})
    assert refusal(config) is None
    config.set("ssl_context", lambda conf, factory: factory())
    assert (refusal(config) or "").startswith("gunicorn setting ssl_context:")
    config = Config()
    config.set("post_request", lambda worker, req, environ, resp: None)
    assert (refusal(config) or "").startswith("gunicorn setting post_request:")


def test_settings_defaults_and_accepted_values_are_not_refused() -> None:
    assert refusal(Config()) is None
    accepted = ("--ssl-version", "TLSv1_2", "--do-handshake-on-connect", "--access-logformat")
    assert refusal(_gunicorn_config(*accepted, "%(h)s %({x-real-ip}i)s %({raw_uri}e)s")) is None


def _tls_options(certs: Certs) -> tuple[str, ...]:
    return ("--certfile", str(certs.server_cert_file), "--keyfile", str(certs.server_key_file))


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionError:
        pass
    return b"".join(chunks)


def _https_status(port: int, context: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = Reader(sock).read_response()[0]
    return int(status.split()[1])


def _view(port: int, headers: dict[str, str]) -> dict[str, Any]:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK", body
    seen: dict[str, Any] = json.loads(body)
    return seen
