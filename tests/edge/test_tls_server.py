"""dualgate serving HTTPS: httpx and curl against WSGI and ASGI apps on both loops, client
certificates and the ASGI TLS extension, the stalled handshake cut off by the head deadline,
files sent by ordinary writes, unix and inherited sockets, the one-line start-up error, and a
real `dualgate serve` reloading its certificate on a real SIGHUP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
import pytest

from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    Receive,
    Scope,
    Send,
    ServeFactory,
    ServerProcess,
    asgi_app,
    connect,
)
from tests.edge.test_forwarding import WSGI_KEYS
from tests.edge.test_tls import common_name, install
from tests.proxies import Certs, client_hello, make_certs, read_all
from tests.test_cli import run_cli, the_one_line

ROOT = Path(__file__).resolve().parents[2]
LOOPS = ["asyncio", "uvloop"]


def wsgi_view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    body = json.dumps({key: environ.get(key) for key in WSGI_KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


async def _asgi_view(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps(
        {
            "scheme": scope["scheme"],
            "client": scope["client"],
            "tls": scope["extensions"].get("tls"),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


asgi_view = asgi_app(_asgi_view)


def client(certs: Certs, *, with_client_cert: bool = False) -> httpx.Client:
    context = certs.client_context(with_client_cert=with_client_cert)
    return httpx.Client(verify=context, timeout=SOCKET_TIMEOUT)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(SOCKET_TIMEOUT)), *args],
        capture_output=True,
        timeout=SOCKET_TIMEOUT + 5,
    )


# -- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_wsgi_over_https(serve: ServeFactory, tls_certs: Certs, loop: str) -> None:
    server = serve(wsgi_view, loop=loop, **tls_certs.server_options())
    with client(tls_certs) as http:
        response = http.get(f"https://127.0.0.1:{server.port}/")
    assert response.http_version == "HTTP/1.1"
    environ = response.json()
    assert (environ["wsgi.url_scheme"], environ["HTTPS"]) == ("https", "on")
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    done = curl("--cacert", str(tls_certs.ca_file), f"https://127.0.0.1:{server.port}/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["HTTPS"] == "on"


@pytest.mark.parametrize("loop", LOOPS)
def test_asgi_over_https(serve: ServeFactory, tls_certs: Certs, loop: str) -> None:
    server = serve(asgi_view, loop=loop, **tls_certs.server_options())
    with client(tls_certs) as http:
        scope = http.get(f"https://127.0.0.1:{server.port}/").json()
    # No client certificate asked for: no TLS extension (README "TLS").
    assert scope == {"scheme": "https", "client": ["127.0.0.1", scope["client"][1]], "tls": None}
    done = curl(
        "--cacert",
        str(tls_certs.ca_file),
        "-w",
        "%{http_version}",
        f"https://localhost:{server.port}/",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(b"2")  # ALPN offered h2 first (--http2 auto, h2 installed)


def test_keep_alive_and_pipelining_over_tls(serve: ServeFactory, tls_certs: Certs) -> None:
    server = serve(wsgi_view, **tls_certs.server_options())
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server.port) as raw:
        context = tls_certs.client_context()
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(request * 3)
            reader = Reader(sock)
            for _ in range(3):
                status, _, body = reader.read_response()
                assert status == b"HTTP/1.1 200 OK"
                assert json.loads(body)["HTTPS"] == "on"


@pytest.mark.parametrize("loop", LOOPS)
def test_client_certificate_required(serve: ServeFactory, tls_certs: Certs, loop: str) -> None:
    options = tls_certs.server_options(
        ssl_ca_certs=str(tls_certs.ca_file), ssl_cert_reqs="required"
    )
    server = serve(asgi_view, loop=loop, **options)
    url = f"https://127.0.0.1:{server.port}/"
    with client(tls_certs, with_client_cert=True) as http:
        scope = http.get(url).json()
    extension = scope["tls"]
    assert extension["client_cert_name"].startswith("CN=dualgate-test-client,")
    assert extension["client_cert_chain"][0] == tls_certs.client.cert_chain_pems[0].bytes().decode()
    assert extension["server_cert"] == tls_certs.server.cert_chain_pems[0].bytes().decode()
    assert extension["tls_version"] == 0x0304
    assert extension["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert extension["client_cert_error"] is None

    # Under TLS 1.3 the client's handshake ends before the server checks: the refusal shows
    # as a failed read or a close without an answer.
    refused = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
    with client(tls_certs) as http, pytest.raises(refused):
        http.get(url)
    # curl with the certificate is served; without it, the handshake fails.
    ca = ("--cacert", str(tls_certs.ca_file))
    done = curl(
        *ca,
        "--cert",
        str(tls_certs.client_cert_file),
        "--key",
        str(tls_certs.client_key_file),
        url,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tls"]["client_cert_name"].startswith("CN=dualgate-test-client")
    assert curl(*ca, url).returncode != 0


def test_client_from_another_ca_is_refused(
    serve: ServeFactory, tls_certs: Certs, tmp_path: Path
) -> None:
    stranger = make_certs(tmp_path / "stranger")
    options = tls_certs.server_options(
        ssl_ca_certs=str(tls_certs.ca_file), ssl_cert_reqs="optional"
    )
    server = serve(asgi_view, **options)
    url = f"https://127.0.0.1:{server.port}/"
    context = tls_certs.client_context()
    context.load_cert_chain(stranger.client_cert_file, stranger.client_key_file)
    with (
        httpx.Client(verify=context, timeout=SOCKET_TIMEOUT) as http,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        http.get(url)
    # optional: no certificate at all is fine, and the extension says so.
    with client(tls_certs) as http:
        extension = http.get(url).json()["tls"]
    assert (extension["client_cert_chain"], extension["client_cert_name"]) == ([], None)


# -- the head deadline ------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_stalled_handshake_is_cut_off(serve: ServeFactory, tls_certs: Certs, loop: str) -> None:
    server = serve(wsgi_view, loop=loop, timeout_request_head=0.3, **tls_certs.server_options())
    hello = client_hello(tls_certs)
    # Nothing at all; half a ClientHello; a whole one and then silence.
    for sent in (b"", hello[:20], hello):
        with connect(server.port) as sock:
            started = time.monotonic()
            sock.sendall(sent)
            read_all(sock)
            assert 0.25 < time.monotonic() - started < 3, sent[:5]
    with client(tls_certs) as http:  # and the server still serves
        assert http.get(f"https://127.0.0.1:{server.port}/").status_code == 200


# -- files go out by ordinary writes ----------------------------------------------------------


class SendfileProbe:
    """Counts calls of the loop's sendfile (asyncio's; uvloop's has none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = asyncio.base_events.BaseEventLoop.sendfile

        async def counting(loop: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await real(loop, *args, **kwargs)

        monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "sendfile", counting)


def file_apps(path: Path) -> tuple[Any, Any]:
    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", str(path.stat().st_size))])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](path.open("rb"))
        return wrapper

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        size = str(path.stat().st_size).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", size)]}
        )
        await send({"type": "http.response.pathsend", "path": str(path)})

    return wsgi, asgi_app(asgi)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_files_under_tls_go_by_ordinary_writes(
    serve: ServeFactory,
    tls_certs: Certs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop: str,
    interface: str,
) -> None:
    data = os.urandom(3_000_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    app = file_apps(path)[0 if interface == "wsgi" else 1]
    probe = SendfileProbe(monkeypatch)
    if loop == "asyncio":
        # The probe sees sendfile where it is used: plain HTTP on asyncio.
        plain = serve(app, loop=loop)
        assert httpx.get(f"http://127.0.0.1:{plain.port}/", timeout=SOCKET_TIMEOUT).content == data
        assert probe.calls == 1
        probe.calls = 0
    server = serve(app, loop=loop, **tls_certs.server_options())
    with client(tls_certs) as http:
        response = http.get(f"https://127.0.0.1:{server.port}/")
    assert response.content == data
    assert probe.calls == 0


# -- a client's EOF mid-response --------------------------------------------------------------

CHUNK = b"x" * 16384
CHUNKS = 20_000  # 320 MB: far more than ever gets sent before the client's EOF is seen


class Streamer:
    """A WSGI and an ASGI app that stream CHUNKS chunks, counting them, and say when they
    stopped: told the client is gone, or done."""

    def __init__(self) -> None:
        self.sent = 0
        self.stopped: queue.Queue[str] = queue.Queue()

    def wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", str(len(CHUNK) * CHUNKS))])
        return self._chunks()

    def _chunks(self) -> Iterable[bytes]:
        try:
            for _ in range(CHUNKS):
                self.sent += 1
                yield CHUNK
            self.stopped.put("done")
        except GeneratorExit:
            self.stopped.put("told")  # close() before the end: the server stopped iterating
            raise

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            for _ in range(CHUNKS):
                self.sent += 1
                await send({"type": "websocket.send", "bytes": CHUNK})
        except OSError:
            self.stopped.put("told")
            return
        self.stopped.put("done")

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        headers = [(b"content-length", str(len(CHUNK) * CHUNKS).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            for _ in range(CHUNKS):
                self.sent += 1
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        except OSError:
            self.stopped.put("told")
            return
        self.stopped.put("done")


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def streaming_server(
    serve: ServeFactory, streamer: Streamer, interface: str, **options: Any
) -> Any:
    app = streamer.wsgi if interface == "wsgi" else asgi_app(streamer.asgi)
    return serve(app, **options)


def asyncio_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "asyncio"]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("interface", ["wsgi", "asgi", "websocket"])
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
def test_a_client_that_vanishes_mid_response_stops_the_application(
    serve: ServeFactory,
    tls_certs: Certs,
    caplog: pytest.LogCaptureFixture,
    loop: str,
    interface: str,
    secure: bool,
) -> None:
    """A client that reads part of a long response (or of a WebSocket's messages) and closes its
    socket: the application is told (its send raises, its iterable is closed) and stops, and
    nothing is written to the dead transport meanwhile for asyncio to log ("socket.send()
    raised exception.", "SSL connection is closed"). An ASGI app that only sends used to keep
    the loop to itself and send all 320 MB, logging a line per send."""
    streamer = Streamer()
    options = tls_certs.server_options() if secure else {}
    server = streaming_server(serve, streamer, interface, loop=loop, **options)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(3):
            streamer.sent = 0
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
            context = tls_certs.client_context()
            sock = context.wrap_socket(raw, server_hostname="localhost") if secure else raw
            with raw, sock:
                sock.sendall(UPGRADE if interface == "websocket" else GET)
                received = 0
                while received < 200_000:
                    received += len(sock.recv(65536))
            assert streamer.stopped.get(timeout=10) == "told", f"{streamer.sent} chunks sent"
            assert streamer.sent < CHUNKS
    assert asyncio_said(caplog) == []


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_tls_client_eof_mid_response_stops_the_application(
    serve: ServeFactory,
    tls_certs: Certs,
    caplog: pytest.LogCaptureFixture,
    loop: str,
    interface: str,
) -> None:
    """A TLS client that sends EOF and stays: asyncio's TLS layer closes after an EOF and drops
    whatever is written, without backpressure, so the application is told at once rather than
    left writing into the void until the TLS shutdown times out (30 s: the client never
    answers it). uvloop's does not pass the EOF on: there the writes wait, paused, and the
    write timeout (1 s here) ends it, as for a client that stops reading."""
    streamer = Streamer()
    options = tls_certs.server_options(timeout_write=1)
    server = streaming_server(serve, streamer, interface, loop=loop, **options)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
    with raw, tls_certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            sock.shutdown(socket.SHUT_WR)  # a TCP EOF, no close_notify; the socket stays open
            how = streamer.stopped.get(timeout=10)
    assert how == "told", f"{streamer.sent} chunks sent"
    assert streamer.sent < CHUNKS
    if loop == "asyncio":
        # (uvloop, closing its TCP transport, lets paused writes resume into the closed TLS
        # layer, which logs a few "SSL connection is closed" before the write timeout.)
        assert asyncio_said(caplog) == []


# -- other listeners --------------------------------------------------------------------------


def _get_over(sock: socket.socket, certs: Certs) -> Any:
    context = certs.client_context()
    with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock:
        tls_sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, _, body = Reader(tls_sock).read_response()
    return json.loads(body)


def test_tls_on_a_unix_socket(serve: ServeFactory, tls_certs: Certs, tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    serve(wsgi_view, uds=path, **tls_certs.server_options())
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(SOCKET_TIMEOUT)
    sock.connect(path)
    assert _get_over(sock, tls_certs)["HTTPS"] == "on"


def test_tls_on_an_inherited_socket(serve: ServeFactory, tls_certs: Certs) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    serve(wsgi_view, fd=listener.detach(), **tls_certs.server_options())
    assert _get_over(connect(port), tls_certs)["wsgi.url_scheme"] == "https"


# -- the command line -------------------------------------------------------------------------


def test_unusable_certificate_stops_the_start_with_one_line(
    tls_certs: Certs, tmp_path: Path
) -> None:
    (tmp_path / "good.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'']\n"
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    code, stderr = run_cli("good:application", "--ssl-certfile", str(garbage), cwd=tmp_path)
    assert code == 2
    line = the_one_line(code, stderr)
    assert f"--ssl-certfile {garbage}: no certificate read" in line, line
    other_key = make_certs(tmp_path / "other").server_key_file
    args = ["--ssl-certfile", str(tls_certs.server_cert_file), "--ssl-keyfile", str(other_key)]
    code, stderr = run_cli("good:application", *args, cwd=tmp_path)
    assert code == 2
    assert "does not belong to the certificate" in the_one_line(code, stderr)


def _wait_for_line(process: ServerProcess, text: str, timeout: float = SOCKET_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {text!r} logged: {process.stderr}"
        try:
            line = process.lines.get(timeout=remaining)
        except queue.Empty:
            continue
        assert line is not None, f"server exited: {process.stderr}"
        if text in line:
            return line


def _served_name(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        peer = sock.getpeercert()
        assert peer is not None
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200 OK")
    return common_name(dict(peer))


@pytest.mark.parametrize("proxy_protocol", [False, True], ids=["tls", "proxy protocol + tls"])
def test_sighup_reloads_the_certificate(
    tls_certs: Certs, tmp_path: Path, proxy_protocol: bool
) -> None:
    renewed = make_certs(tmp_path / "renewed", common_name="renewed-server")
    trusting_both = tls_certs.client_context()
    trusting_both.load_verify_locations(renewed.ca_file)
    argv = [sys.executable, "-m", "dualgate", "serve", "hello:application", "--port", "0"]
    argv += ["--app-dir", str(ROOT / "examples"), "--no-access-log"]
    argv += ["--ssl-certfile", str(tls_certs.server_cert_file)]
    argv += ["--ssl-keyfile", str(tls_certs.server_key_file)]
    if proxy_protocol:
        # Each connection then starts with a PROXY header (_fetch_name sends one), and the
        # handshake after it runs over memory BIOs with the holder's current context.
        argv.append("--proxy-protocol")
    with ServerProcess(argv) as process:
        port = process.wait_for_port()
        name = _fetch_name(port, trusting_both, proxy_protocol)
        assert name == "dualgate-test-server"

        install(renewed, tls_certs)
        os.kill(process.process.pid, signal.SIGHUP)
        _wait_for_line(process, "TLS certificate reloaded")
        assert _fetch_name(port, trusting_both, proxy_protocol) == "renewed-server"

        tls_certs.server_cert_file.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        errors_before = sum("ERROR" in line for line in process.stderr)
        os.kill(process.process.pid, signal.SIGHUP)
        line = _wait_for_line(process, "TLS reload failed")
        assert "still serving the previous certificate" in line
        assert str(tls_certs.server_cert_file) in line
        assert _fetch_name(port, trusting_both, proxy_protocol) == "renewed-server"
        assert sum("ERROR" in line for line in process.stderr) == errors_before + 1
        assert process.process.poll() is None
        assert process.stop() == 0


def _fetch_name(port: int, context: ssl.SSLContext, proxy_protocol: bool) -> str:
    if not proxy_protocol:
        return _served_name(port, context)
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as raw:
        raw.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 443\r\n")
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            peer = sock.getpeercert()
            assert peer is not None
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_all(sock).startswith(b"HTTP/1.1 200 OK")
    return common_name(dict(peer))


def test_sighup_without_tls_is_left_alone(tmp_path: Path) -> None:
    """Nothing to reload: SIGHUP keeps its default meaning (the process ends)."""
    argv = [sys.executable, "-m", "dualgate", "serve", "hello:application", "--port", "0"]
    argv += ["--app-dir", str(ROOT / "examples")]
    # A test run under nohup ignores SIGHUP, and a child inherits that: the server is started
    # with the default disposition, which is what this test is about.
    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        server = ServerProcess(argv)
    finally:
        signal.signal(signal.SIGHUP, inherited)
    with server as process:
        process.wait_for_port()
        os.kill(process.process.pid, signal.SIGHUP)
        assert process.process.wait(SOCKET_TIMEOUT) == -signal.SIGHUP
